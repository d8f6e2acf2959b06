"""Sweeps through Hydra's launchers: joblib (parallel jobs sharing the cores), submitit locally, the SLURM launcher's
config, and runs stopped by a signal resuming to the uninterrupted result (through a real SLURM: test_slurm.py)."""

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from pytorch_lightning import Callback

from chaos import Job
from helpers import CONF_DIR, PHASE_MARK, epoch_rows
from rppnets.resources import threads_per_job

ROOT = Path(__file__).resolve().parents[1]


class SignalOnce(Callback):
    """Test helper: the job sends itself `signum` once (the file `once` records it), as SLURM would: after training
    step `step`, or at the first validation batch of epoch `validation_epoch`. A rerun of the same job does not."""

    def __init__(self, once: str, step: int | None = None, validation_epoch: int | None = None,
                 signum: str = "SIGUSR2"):
        self.once, self.step, self.validation_epoch = Path(once), step, validation_epoch
        self.signum = signal.Signals[signum]

    def _send(self) -> None:
        if not self.once.exists():
            self.once.touch()
            os.kill(os.getpid(), self.signum)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            self._send()

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if not trainer.sanity_checking and trainer.current_epoch == self.validation_epoch:
            self._send()


def quick(fake_root: Path) -> list[str]:
    """Overrides for a short CPU job on the fake data, CSV logging only."""
    return [f"data.root={fake_root}", "data.system_dir=null", "data.download=false", "data.verify_md5=false",
            "data.val_size=32", "data.batch_size=32", "data.eval_batch_size=64", "trainer.max_epochs=1",
            "~callbacks.progress_bar", "logger=csv", "model.width=16"]


def train_py(args: list[str], env: dict | None = None, timeout: int = 240) -> subprocess.CompletedProcess:
    """`python src/train.py ...` with this checkout's code (and the tests' helpers) importable in every job."""
    path = os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])
    full_env = os.environ | {"PYTHONPATH": path, "WANDB_MODE": "offline"} | (env or {})
    return subprocess.run([sys.executable, "src/train.py", *args], cwd=ROOT, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


def sweep(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return train_py(["-m", *args], env)


def job_results(sweep_dir: Path) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(sweep_dir.glob("*/results.json"))]


@pytest.mark.slow
def test_joblib_runs_two_jobs_in_parallel_with_their_share_of_the_cores(tmp_path, fake_root):
    # An OMP_NUM_THREADS in the environment (common on clusters) must not make the parallel jobs oversubscribe.
    result = sweep([*quick(fake_root), "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1",
                    f"hydra.sweep.dir={tmp_path}"], env={"OMP_NUM_THREADS": "7"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    results = job_results(tmp_path)
    assert [r["status"] for r in results] == ["finished", "finished"]
    assert {r["seed"] for r in results} == {0, 1}
    assert [r["torch_threads"] for r in results] == [threads_per_job(2)] * 2
    assert "sweep " in result.stdout and "2 finished" in result.stdout
    assert len({r["metrics"]["train/loss"] for r in results}) == 2  # two seeds, two different runs


@pytest.mark.parametrize("n_jobs, jobs_in_sweep, threads", [
    (-1, None, 1), (-1, 5, 3), (4, 2, 8), (2, 5, 8), (None, 5, 16), (32, 3, 5)])
def test_joblib_jobs_share_the_cores_among_those_running_at_once(monkeypatch, n_jobs, jobs_in_sweep, threads):
    # 16 cores: five jobs with n_jobs=-1 get 3 threads each, not 16 / 16 (eleven cores idle)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    assert threads_per_job(n_jobs, jobs_in_sweep) == threads


@pytest.mark.slow
def test_submitit_local_runs_a_two_job_sweep(tmp_path, fake_root):
    result = sweep([*quick(fake_root), "hydra/launcher=submitit_local", "hydra.launcher.cpus_per_task=1",
                    "seed=0,1", f"hydra.sweep.dir={tmp_path}"])
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    results = job_results(tmp_path)
    assert [r["status"] for r in results] == ["finished", "finished"]
    assert [r["torch_threads"] for r in results] == [1, 1]  # cpus_per_task
    assert len(list((tmp_path / ".submitit").glob("*/*_result.pkl"))) == 2  # each job ran as its own submitit job
    assert "2 finished" in result.stdout


@pytest.mark.slow
def test_ctrl_c_in_a_local_sweep_stops_the_sweep(tmp_path, fake_root):
    """Ctrl-C during job 0 of a sweep on this machine (Hydra's basic launcher) stops the sweep there, exit 130: it is
    no requeue (only a SLURM job's own signal lets the sweep go on), so job 1 never starts."""
    sweep_dir = tmp_path / "sweep"
    job = Job([sys.executable, "src/train.py", "-m", *quick(fake_root), "trainer.max_epochs=2", "seed=0,1",
               f"hydra.sweep.dir={sweep_dir}", "+callbacks.phase._target_=helpers.PhaseLine",
               "+callbacks.phase.hold='training epoch 1'", f"+callbacks.phase.once={tmp_path / 'held'}"])
    assert job.wait_for_line(lambda line: line == PHASE_MARK + "training epoch 1"), "\n".join(job.output)
    job.process.send_signal(signal.SIGINT)  # held in job 0's first epoch until now
    returncode = job.end(timeout=120)
    output = "\n".join(job.output)
    assert returncode == 128 + signal.SIGINT, output
    assert any(line.startswith("stopped by SIGINT; ") and "resume: " in line for line in job.output), output
    (job0,) = sweep_dir.glob("0-*")
    assert json.loads((job0 / "results.json").read_text())["status"] == "stopped"
    assert (job0 / "checkpoints" / "last.ckpt").is_file()
    assert not list(sweep_dir.glob("1-*")) and output.count(PHASE_MARK) == 1, output  # job 1 never started


def test_slurm_launcher_config_runs_the_figure_sweep(tmp_path):
    """`make reproduce LAUNCHER=slurm` composes: one process per job unless trainer=ddp asks for more."""
    overrides = ["experiment=fashion_mnist_plot", "hydra/launcher=slurm", f"paths.output_dir={tmp_path}"]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
        ddp = compose("train", overrides=[*overrides, "trainer=ddp"], return_hydra_config=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert (launcher["tasks_per_node"], launcher["signal_delay_s"], launcher["additional_parameters"]) == (
        1, 120, {"requeue": True})
    assert ddp.hydra.launcher.tasks_per_node == 2


@pytest.mark.slow
@pytest.mark.parametrize("signum, when, resumed_at", [
    ("SIGTERM", "validation_epoch=1", "after epoch 2 of 3 (step 14)"),  # stops at the epoch's end, its metrics logged
    pytest.param("SIGUSR1", "validation_epoch=1", "after epoch 2 of 3 (step 14)", marks=pytest.mark.long),
    # an epoch's last step: its validation and end come first
    pytest.param("SIGUSR1", "step=14", "after epoch 2 of 3 (step 14)", marks=pytest.mark.long),
    pytest.param("SIGTERM", "step=10", "in epoch 2 of 3 (mid-epoch, step 10)", marks=pytest.mark.long),  # logged step
], ids=["SIGTERM-validation", "SIGUSR1-validation", "last-step", "logged-step"])
def test_a_stopped_run_resumes_to_the_uninterrupted_metrics(signum, when, resumed_at, tmp_path, fake_root):
    """Lightning stops on SIGTERM outside a training step with its own SystemExit: that was exit status 0 and a job
    recorded as failed, which a launcher (and SLURM) took for a job that had ended. Stopping inside validation, at
    an epoch's end or after its last step lost that epoch's metrics from the resumed run's CSV, and stopping before
    Lightning logged the step lost that step's loss."""
    run, reference = tmp_path / "run", tmp_path / "reference"
    args = [*quick(fake_root), "data.eval_batch_size=8", "trainer.max_epochs=3", "trainer.log_every_n_steps=5"]
    stop = ["+callbacks.stop._target_=test_launchers.SignalOnce", f"+callbacks.stop.once={tmp_path / 'signalled'}",
            f"+callbacks.stop.{when}", f"+callbacks.stop.signum={signum}", f"hydra.run.dir={run}"]
    stopped = train_py(args + stop)
    assert stopped.returncode == 128 + signal.Signals[signum], stopped.stdout[-2000:] + stopped.stderr[-3000:]
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert json.loads((run / "results.json").read_text())["status"] == "stopped"
    again = train_py(args + stop)  # 7 steps an epoch
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    assert f"resuming {resumed_at}" in again.stdout
    assert train_py(args + [f"hydra.run.dir={reference}"]).returncode == 0
    assert metric_rows(run) == metric_rows(reference)
    metrics = [json.loads((folder / "results.json").read_text())["metrics"] for folder in (run, reference)]
    assert [{k: v for k, v in m.items() if k not in MEASURED} for m in metrics] == [
        {k: v for k, v in metrics[1].items() if k not in MEASURED}] * 2


# Measured, not computed: they differ from run to run, and a resumed run measures its step peak at later steps.
MEASURED = ("time/epoch_s", "time/samples_per_s", "time/wall_s", "memory/peak_rss_bytes", "memory/step_peak_bytes",
            "memory/step_peak_threads")


def metric_rows(run: Path) -> tuple[list[dict], dict]:
    """The CSV's epoch rows (helpers.epoch_rows) and the run-level values (model and memory numbers, logged again
    after a resume), the MEASURED ones left out."""
    rows = list(csv.DictReader((run / "csv" / "metrics.csv").open()))
    run_level = {k: v for row in rows if not row["epoch"] for k, v in row.items() if v and k not in ("step", *MEASURED)}
    return epoch_rows(run / "csv" / "metrics.csv"), run_level


def test_a_launcher_is_known_by_its_classes_names_when_hydra_executed_its_module_again():
    """Hydra's plugin discovery executes hydra_plugins' modules again: the SLURM launcher may then subclass an older
    BaseSubmititLauncher object than the one imported, and issubclass said no (a SLURM job's stop line printed
    submitit's own command to rerun, and its cpus_per_task threads were not set)."""
    from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher

    from rppnets.training.pipeline import launcher_is

    older = type(BaseSubmititLauncher.__name__, (), {"__module__": BaseSubmititLauncher.__module__,
                                                    "__qualname__": BaseSubmititLauncher.__qualname__})
    launcher = type("SlurmLauncher", (older,), {})
    assert not issubclass(launcher, BaseSubmititLauncher) and launcher_is(launcher, BaseSubmititLauncher)
    assert not launcher_is(launcher, JoblibLauncher)
