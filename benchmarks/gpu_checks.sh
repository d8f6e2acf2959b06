#!/usr/bin/env bash
# The checks that need a GPU, in one go: the RPP layer's and kernels' tests (CUDA ones included), the RPP benchmark on CUDA,
# and a short training run of the RPP network on the GPU. From the repo root: bash benchmarks/gpu_checks.sh [data root]
set -uo pipefail
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" WANDB_MODE=offline PYTHONUNBUFFERED=1
# the C++ CPU kernels are checked on the CPU machines; here the CPU side of the CUDA tests runs eagerly (same values)
export RPPNETS_CPU_KERNELS=${RPPNETS_CPU_KERNELS:-0}
PY=${PY:-.venv/bin/python}
root=${1:-data}
out=$(mktemp -d)
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
$PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
echo "== RPP layer tests"
$PY -m pytest -q -p no:cacheprovider tests/test_rpp_linear.py tests/test_permutation.py tests/test_kernels.py
echo "== RPP layer benchmark on CUDA"
$PY benchmarks/rpp_layer.py --device cuda
echo "== two epochs of the RPP network on the GPU (CSV logger)"
$PY src/train.py model=rpp logger=csv trainer.max_epochs=2 trainer.accelerator=gpu \
    "data.root=$root" "hydra.run.dir=$out" ~callbacks.progress_bar +trainer.enable_progress_bar=false 2>&1 | tail -4
cat "$out/results.json"
echo "== one epoch with generated permutations on the GPU"
$PY src/train.py model=rpp model.permutation=generated logger=csv trainer.max_epochs=1 trainer.accelerator=gpu \
    "data.root=$root" "hydra.run.dir=$out/generated" ~callbacks.progress_bar +trainer.enable_progress_bar=false 2>&1 | tail -3
