#!/usr/bin/env bash
# The checks that need a GPU, in one go: the RPP layer's tests (CUDA ones included), the RPP benchmark on CUDA,
# and a short training run of the RPP network on the GPU. From the repo root: bash benchmarks/gpu_checks.sh [data root]
set -uo pipefail
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" WANDB_MODE=offline
PY=${PY:-.venv/bin/python}
root=${1:-data}
out=$(mktemp -d)
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
echo "== RPP layer tests"
$PY -m pytest -q -p no:cacheprovider tests/test_rpp_linear.py tests/test_permutation.py
echo "== RPP layer benchmark on CUDA"
$PY benchmarks/rpp_layer.py --device cuda
echo "== two epochs of the RPP network on the GPU (CSV logger)"
$PY src/train.py model=rpp logger=csv trainer.max_epochs=2 trainer.accelerator=gpu \
    "data.root=$root" "hydra.run.dir=$out" ~callbacks.progress_bar +trainer.enable_progress_bar=false 2>&1 | tail -4
cat "$out/results.json"
