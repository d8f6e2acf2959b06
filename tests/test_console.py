"""The run's console: the libraries' known harmless messages are dropped by their text, and nothing else is."""

import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest

from rppnets import console
from rppnets.console import silence_known_noise
from rppnets.training.callbacks import ProgressBar
from rppnets.training.pipeline import resume_line


def test_known_warnings_are_dropped_and_others_kept():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        silence_known_noise()
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning)
        warnings.warn("The number of training batches (40) is smaller than the logging interval ...", UserWarning)
        warnings.warn("something else is deprecated", FutureWarning)
    assert [str(w.message) for w in caught] == ["something else is deprecated"]


def test_known_log_lines_are_dropped_and_others_kept(caplog):
    silence_known_noise()
    silence_known_noise()  # idempotent: one filter per logger
    logger = logging.getLogger("torch.utils.cpp_extension")
    assert len(logger.filters) == 1
    with caplog.at_level(logging.INFO):
        logger.warning("No CUDA runtime is found, using CUDA_HOME='%s'", "/usr/local")
        logger.warning("Error building extension")
        logging.getLogger("pytorch_lightning.utilities.rank_zero").info("💡 Tip: For seamless cloud logging, ...")
        logging.getLogger("pytorch_lightning.utilities.rank_zero").info("`Trainer.fit` stopped: No training batches.")
    assert [r.getMessage() for r in caplog.records] == ["Error building extension",
                                                       "`Trainer.fit` stopped: No training batches."]


def test_lightnings_routine_lines_are_dropped_and_the_others_kept(caplog):
    silence_known_noise()
    routine = ["GPU available: False, used: False", "TPU available: False, using: 0 TPU cores",
               "`Trainer.fit` stopped: `max_epochs=2` reached.", "`Trainer.fit` stopped: `max_steps=40` reached.",
               "Restoring states from the checkpoint path at /runs/a/checkpoints/last.ckpt",
               "Restored all states from the checkpoint at /runs/a/checkpoints/last.ckpt"]
    kept = ["`Trainer.fit` stopped: No training batches.", "Loaded model weights from the checkpoint at /a.ckpt"]
    logger = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    with caplog.at_level(logging.INFO):
        for message in routine + kept:
            logger.info(message)
        logging.getLogger("pytorch_lightning.accelerators.cuda").info("LOCAL_RANK: 0 - CUDA_VISIBLE_DEVICES: [0]")
    assert [r.getMessage() for r in caplog.records] == kept


def test_submitits_bypassed_signals_are_dropped_and_its_other_warnings_kept():
    import signal

    from submitit.core.job_environment import SignalHandler
    from submitit.core.logger import get_logger

    class Kept(logging.Handler):
        def __init__(self):
            super().__init__()
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    kept, logger = Kept(), get_logger()  # submitit's own logger, with its own handlers (a SLURM job's log)
    logger.addHandler(kept)
    try:
        silence_known_noise()
        handler = SignalHandler.__new__(SignalHandler)  # its signal handlers, as submitit installs them in a job
        handler._logger = logger
        for signum in (signal.SIGCONT, signal.SIGTERM, signal.SIGUSR2):
            handler.bypass(signum)
        logger.warning("Caught signal SIGUSR2 on vm: this job is preempted.")
    finally:
        logger.removeHandler(kept)
    assert kept.messages == ["Bypassing signal SIGUSR2", "Caught signal SIGUSR2 on vm: this job is preempted."]


def test_lightnings_srun_hint_is_dropped_by_its_text(monkeypatch):
    from lightning_fabric.plugins.environments import SLURMEnvironment

    monkeypatch.setattr("shutil.which", lambda name: f"/usr/bin/{name}")  # srun installed, as on a login node
    monkeypatch.delenv("SLURM_NTASKS", raising=False)
    for silenced in (False, True):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if silenced:
                silence_known_noise()
            SLURMEnvironment._validate_srun_used()
        assert [("srun" in str(w.message)) for w in caught] == ([] if silenced else [True])


ALLOCATOR_PROBE = """
import sys, torch
from torch.profiler import ProfilerActivity, profile
if sys.argv[1] == "silenced":
    from rppnets.console import silence_known_noise
    silence_known_noise()
    silence_known_noise()  # once per process is enough; again is harmless
print("before", flush=True)
print("warning", file=sys.stderr, flush=True)  # stderr works again after the notice is spent
blocks = [torch.ones(1000) for _ in range(int(sys.argv[2]))]  # allocated before the profiler starts
with profile(activities=[ProfilerActivity.CPU], profile_memory=True):
    blocks.clear()  # freed while it runs: blocks of unknown size
print("profiled")
"""


def allocator_notices(mode: str, blocks: int) -> int:
    env = {k: v for k, v in os.environ.items() if k != "TORCH_CPP_LOG_LEVEL"} | {"KINETO_LOG_LEVEL": "6"}
    result = subprocess.run([sys.executable, "-c", ALLOCATOR_PROBE, mode, str(blocks)], capture_output=True,
                            text=True, env=env, timeout=600)
    assert result.returncode == 0 and result.stdout == "before\nprofiled\n", result.stderr
    assert result.stderr.startswith("warning\n")
    return result.stderr.count("Memory block of unknown size was allocated before the profiling started")


def test_the_allocators_notice_about_unknown_blocks_is_spent_unseen():
    # what torch writes from C++, past any Python filter: for the 1st block and every 1000th
    assert allocator_notices("default", 5) == 1 and allocator_notices("default", 1001) == 2
    # silenced: the 1st is spent on a block of our own; a run frees far fewer than 999 more
    assert allocator_notices("silenced", 998) == 0 and allocator_notices("silenced", 1000) == 1


def test_the_cpp_extension_line_is_filtered_wherever_the_kernels_are_imported():
    from rppnets.layers import cpu_kernels  # noqa: F401  (a library user's import: no train.py, no silencing call)

    logger = logging.getLogger("torch.utils.cpp_extension")
    assert any(isinstance(f, type(console._FILTERS["torch.utils.cpp_extension"])) for f in logger.filters)
    assert not logger.filters[0].filter(logging.makeLogRecord({"msg": "No CUDA runtime is found, using CUDA_HOME='%s'",
                                                               "args": ("/usr/local/cuda",)}))


def test_the_bar_counts_epochs_from_1_to_max_epochs():
    bar = ProgressBar()
    for max_epochs, epoch, shown in [(2, 0, "Epoch 1/2"), (2, 1, "Epoch 2/2"), (30, 9, "Epoch 10/30"),
                                     (-1, 4, "Epoch 5"), (None, 0, "Epoch 1")]:
        bar._trainer = SimpleNamespace(max_epochs=max_epochs)
        assert bar._get_train_description(epoch).rstrip() == shown
    assert len(bar._get_train_description(0)) >= len(bar.validation_description)  # no flicker between the bars


def test_the_resume_line_counts_epochs_as_the_bar_does():
    """The bar shows "Epoch 2/4" during the second epoch: a run stopped there resumes "in epoch 2", one stopped as
    the second began (the first done) "after epoch 1"."""
    def line(epochs_done, mid_epoch, step):
        progress = {"epochs_done": epochs_done, "mid_epoch": mid_epoch, "global_step": step}
        return resume_line("net-s0", progress, 4, Path("/runs/a b/checkpoints/last.ckpt"))

    assert line(0, True, 7) == ("net-s0: resuming in epoch 1 of 4 (mid-epoch, step 7) with "
                                "'/runs/a b/checkpoints/last.ckpt' (missing)")  # quoted, said missing (not there)
    assert line(1, True, 10).startswith("net-s0: resuming in epoch 2 of 4 (mid-epoch, step 10) with ")
    assert line(1, False, 7).startswith("net-s0: resuming after epoch 1 of 4 (step 7) with ")
    assert line(4, False, 28).startswith("net-s0: resuming after epoch 4 of 4 (step 28) with ")
    assert line(0, False, 0).startswith("net-s0: resuming before epoch 1 of 4 (step 0) with ")


ROOT = Path(__file__).resolve().parents[1]
# Every line a run may print: its data, the progress bar (with its metrics), its resume line and its summary.
EXPECTED_LINES = [
    # Not silenced yet: libkineto's own C++ lines when the memory meter's profiler starts and stops; seen in a full
    # `make test` (not when this test ran alone). Tolerated here so that the rest of the console stays pinned.
    r"USDT:\S+ \S+ \d+:\d+ SyncActivityProfilerHandler\.cpp:\d+\] profiler_(start|stop)",
    r"Data: Fashion-MNIST from data\.root \(.+\), MD5 check off \(data\.verify_md5=false\); "
    r"224 training, 32 validation, 64 test images",
    r"rpp-w10-k10-s0: resuming after epoch 2 of 2 \(step \d+\) with .+last\.ckpt",
    r"Epoch [12]/2 +━.*", r"Testing +━.*", r" +(\S+: \S+ *)+",  # the bar, its metrics below it
    r"", r"rpp-w10-k10-s0 finished in [\d.]+ s", r"  train/loss .*", r"  run folder: r=.+",
    r'  metrics CSV: "\$r"/csv/metrics\.csv', r'  W&B run: w="\$r"/wandb/offline-run-[\w-]+',
    r'  look: \S*wandb leet "\$w"', r'  upload: \S*wandb sync "\$w"',
]


@pytest.mark.slow
def test_a_run_prints_its_own_lines_and_nothing_else(fake_root, tmp_path):
    bin_dir = tmp_path / "bin"  # `srun` on the PATH, as on a cluster's login node
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "srun").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k != "PYTHONWARNINGS"}
    env |= {"PATH": f"{bin_dir}{os.pathsep}{env['PATH']}", "WANDB_MODE": "offline"}
    command = [sys.executable, str(ROOT / "src" / "train.py"), "model=rpp", "model.k=10", "trainer.max_epochs=2",
               f"data.root={fake_root}", "data.system_dir=null", "data.download=false", "data.verify_md5=false",
               "data.val_size=32", "data.batch_size=32", f"hydra.run.dir={tmp_path / 'run'}"]

    def run() -> list[str]:
        result = subprocess.run(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, timeout=900)
        assert result.returncode == 0, result.stdout
        lines = result.stdout.splitlines()
        unexpected = [line for line in lines if not any(re.fullmatch(p, line) for p in EXPECTED_LINES)]
        assert unexpected == [], result.stdout
        return lines

    first = run()
    assert first[0].startswith("Data: Fashion-MNIST from data.root") and len(first) >= 8
    assert any(line.startswith("Epoch 2/2 ") for line in first) and not any("Epoch 1/1" in line for line in first)
    assert sum(line.startswith("rpp-w10-k10-s0 finished in") for line in first) == 1
    (tmp_path / "run" / "results.json").unlink()  # as if killed after its last checkpoint: the rerun resumes
    second = run()
    assert sum(line.startswith("rpp-w10-k10-s0: resuming after epoch 2 of 2 (step ") for line in second) == 1
    assert sum(line.startswith("rpp-w10-k10-s0 finished in") for line in second) == 1
