#!/usr/bin/env bash
# The checks that need a GPU, prepared to run in one go (issue 10's GPU items). From the repo root:
#   bash benchmarks/gpu_checks.sh [data root] [section ...]      (default: every section, about 14 minutes)
# Sections, each under its own time limit, so that a device's budget can be split between calls:
#   tests      the RPP tests with CUDA (opcheck on CUDA, both Triton steps against eager, the fused one's
#              bfloat16, repeatability and peak memory (no whole W_p), CUDA graphs of every mode)   ~2.5 min
#   bench      the layer benchmark on CUDA, eager and through torch.compile with CUDA graphs (reduce-overhead,
#              the Adam step compiled too): RPP step against dense, target at most 1.1x in every mode, with
#              rows "mode/triton" (the default, W_p materialised) and "mode/triton-fused" (never W_p) side
#              by side: the measurement that chooses the CUDA default                                     ~4 min
#   pipeline   one epoch of the pipeline against a bare loop on the GPU, eager and compiled               ~2 min
#   reproduce  the figure's five networks x 30 epochs on one GPU, the jobs side by side (joblib), timed
#              (target: at most 2 minutes), with each network's peak GPU memory                           ~5 min
# Logs and the small results go to $OUT when it is set (the device machine's returned folder), else a temp dir.
# Python: PY (default .venv/bin/python); data: the folder holding FashionMNIST/raw (default data).
set -uo pipefail
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" WANDB_MODE=offline PYTHONUNBUFFERED=1
# the C++ CPU kernels are checked on the CPU machines; here the CPU side of the CUDA tests runs eagerly (same values)
export RPPNETS_CPU_KERNELS=${RPPNETS_CPU_KERNELS:-0}
PY=${PY:-.venv/bin/python}
root=${1:-data}
shift $(($# > 0 ? 1 : 0))
sections=" ${*:-tests bench pipeline reproduce} "
out=${OUT:-$(mktemp -d)}
mkdir -p "$out"
# the pipeline's compile key, once training.py has one (compile: null | default | reduce-overhead)
compile_override=$(grep -q '^compile:' conf/train.yaml && echo "compile=${COMPILE:-reduce-overhead}")

section() { [[ $sections == *" $1 "* ]] && echo "== $1 ($(date +%T)): $2"; }

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
$PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
echo "results in $out"

if section tests "RPP layer, ops and kernel tests, CUDA ones included"; then
  timeout 300 $PY -m pytest -q -p no:cacheprovider tests/test_rpp_linear.py tests/test_permutation.py \
    tests/test_kernels.py tests/test_rpp_ops.py 2>&1 | tee "$out/tests.log" | tail -15
fi

if section bench "RPP layer benchmark on CUDA, triton and triton-fused: eager, and compiled with CUDA graphs"; then
  timeout 540 $PY benchmarks/rpp_layer.py --device cuda --shapes 784,10,100 --repeats 15 \
    --compile-mode reduce-overhead --compile-optimizer 2>&1 | grep -v Warning | tee "$out/rpp_layer_cuda.log"
  # the step against its floor, the three products of its shapes, and nn.Linear (issue 25): about a minute
  timeout 150 $PY benchmarks/matmul_floor.py --device cuda --rounds 10 2>&1 | grep -v Warning \
    | tee "$out/matmul_floor_cuda.log"
fi

if section pipeline "one epoch through the pipeline against a bare loop on the GPU"; then
  if $PY benchmarks/pipeline_overhead.py --help | grep -q -- --device; then
    timeout 300 $PY benchmarks/pipeline_overhead.py --device cuda --repeats 2 2>&1 | tee "$out/pipeline_cuda.log"
  else
    echo "benchmarks/pipeline_overhead.py has no --device option yet: epochs of the RPP network instead"
  fi
  for compile in "" $compile_override; do
    echo "-- two epochs of the RPP network ${compile:-eager}"
    timeout 150 $PY src/train.py model=rpp logger=csv trainer.max_epochs=2 trainer.accelerator=gpu $compile \
      "data.root=$root" "hydra.run.dir=$out/epochs${compile:+-compiled}" ~callbacks.progress_bar 2>&1 | tail -3
  done
fi

if section reproduce "the figure on one GPU: 5 networks x 30 epochs, side by side${compile_override:+, $compile_override}"; then
  launcher=$($PY -c "import hydra_plugins.hydra_joblib_launcher" 2>/dev/null && echo "hydra/launcher=joblib")
  start=$(date +%s)
  timeout 540 $PY src/train.py -m experiment=fashion_mnist_plot trainer.max_epochs=30 trainer.accelerator=gpu \
    $launcher $compile_override "data.root=$root" "hydra.sweep.dir=$out/reproduce" logger=csv ~callbacks.progress_bar \
    2>&1 | tail -8
  echo "the sweep took $(($(date +%s) - start)) s (target: at most 120 s)"
  $PY -m rppnets.analysis.report "$out/reproduce" 2>&1 | tail -5
  $PY - "$out/reproduce" <<'EOF'
import json, sys
from pathlib import Path
print(f"{'network':<14}{'wall s':>8}{'epoch s':>9}{'peak GPU MB':>13}{'test acc':>10}")
for path in sorted(Path(sys.argv[1]).glob("*/results.json")):
    metrics = json.loads(path.read_text())["metrics"]
    print(f"{path.parent.name:<14}{metrics.get('time/wall_s', float('nan')):>8.1f}"
          f"{metrics.get('time/epoch_s', float('nan')):>9.2f}"
          f"{metrics.get('memory/cuda_max_allocated_bytes', float('nan')) / 1e6:>13.1f}"
          f"{metrics.get('test/acc', float('nan')):>10.4f}")
EOF
fi

# ======================================================================================================================
# Section `stop` (its own call: bash benchmarks/gpu_checks.sh data stop; about 3 minutes): pre-emption, resume and DDP
# on CUDA. A run with trainer=gpu stopped by SIGTERM (SLURM's signal at a time limit or pre-emption) must exit with
# 143 and keep last.ckpt; the same command then resumes it and finishes. The same after SIGKILL (nothing saved at
# the kill: it resumes from the last step checkpoint). Then one epoch of trainer=ddp on every GPU there is (NCCL).
# PASS/FAIL per check; the script's exit status is the number of failed checks of this section.
# ======================================================================================================================
stop_failures=0
check() {  # check WHAT COMMAND...: run COMMAND, print PASS or FAIL for WHAT
  local what=$1; shift
  if "$@"; then echo "PASS: $what"; else echo "FAIL: $what"; stop_failures=$((stop_failures + 1)); fi
}
stop_and_resume() {  # stop_and_resume SIGNAL EXPECTED_STATUS
  local sig=$1 expected=$2 run="$out/stopped-$1" status pid
  # 6 epochs (2 took 8 s on an H200): stopped mid-training; last.ckpt every 50 steps as well as every epoch
  local args=(model=rpp logger=csv trainer=gpu trainer.max_epochs=6 callbacks.checkpoint.every_n_train_steps=50
              "data.root=$root" "hydra.run.dir=$run" ~callbacks.progress_bar)
  echo "-- a GPU run stopped by SIG$sig, then the same command again"
  timeout 240 $PY src/train.py "${args[@]}" > "$run.first.log" 2>&1 &
  pid=$!
  for _ in $(seq 600); do  # until the first checkpoint is written (start-up takes a while)
    [ -f "$run/checkpoints/last.ckpt" ] && break
    kill -0 "$pid" 2> /dev/null || break
    sleep 0.2
  done
  sleep 1
  pkill -"$sig" -P "$pid"  # the training process, child of timeout
  wait "$pid"; status=$?
  tail -3 "$run.first.log"
  check "SIG$sig: exit status $status is $expected" [ "$status" -eq "$expected" ]
  check "SIG$sig: last.ckpt kept" [ -f "$run/checkpoints/last.ckpt" ]
  check "SIG$sig: no results.json yet" [ ! -f "$run/results.json" ]
  timeout 240 $PY src/train.py "${args[@]}" > "$run.second.log" 2>&1; status=$?
  grep -m1 "resuming from epoch" "$run.second.log"
  tail -4 "$run.second.log"
  check "SIG$sig: the rerun exits 0" [ "$status" -eq 0 ]
  check "SIG$sig: the rerun resumed from the checkpoint" grep -q "resuming from epoch" "$run.second.log"
  check "SIG$sig: the rerun finished" grep -q '"status": "finished"' "$run/results.json"
}
if section stop "pre-emption (SIGTERM, SIGKILL) and resume on the GPU, then DDP on every GPU"; then
  stop_and_resume TERM 143
  stop_and_resume KILL 137
  gpus=$(nvidia-smi -L | wc -l)
  echo "-- one epoch of trainer=ddp on all $gpus GPUs (NCCL)"
  timeout 240 $PY src/train.py model=rpp logger=csv trainer=ddp trainer.accelerator=gpu "trainer.devices=$gpus" \
    trainer.max_epochs=1 "data.root=$root" "hydra.run.dir=$out/ddp" ~callbacks.progress_bar \
    > "$out/ddp.log" 2>&1; status=$?
  tail -4 "$out/ddp.log"
  check "DDP on $gpus GPUs: exit status $status is 0" [ "$status" -eq 0 ]
  check "DDP on $gpus GPUs: finished" grep -q '"status": "finished"' "$out/ddp/results.json"
  echo "== stop: $stop_failures failed checks"
fi
exit "$stop_failures"
