"""trainer=ddp on 2 CPU processes (gloo): one writer, the same permutations on every rank, a one-process run's
result; and DDP jobs in a sweep."""

import contextlib
import csv
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from pytorch_lightning import Callback
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from helpers import compose_train
from rppnets.layers.rpp_linear import RPPLinear
from rppnets.training.pipeline import train

ROOT = Path(__file__).resolve().parents[1]
RUN_FOLDER = {".hydra", ".lock", "checkpoints", "csv", "wandb", "results.json", "run_state.json"}  # all it may hold


def digest(tensor: torch.Tensor) -> str:
    return hashlib.sha1(tensor.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


class RankProbe(Callback):
    """Test helper: writes <out>/rank<r>.json with what this process saw: its rank before the trainer existed (what
    train() decides the run folder's writer with), the rank variables Lightning's launcher or SLURM set, its rank
    and world size in the trainer, a digest of each RPP layer's permutation, and a digest of the parameters at the
    end of training."""

    def __init__(self, out: str):
        self.out = Path(out)
        self.record = {"rank_before_trainer": rank_zero_only.rank, "LOCAL_RANK": os.environ.get("LOCAL_RANK"),
                       "SLURM_PROCID": os.environ.get("SLURM_PROCID")}

    def on_fit_start(self, trainer, pl_module):
        self.record |= {"global_rank": trainer.global_rank, "world_size": trainer.world_size, "permutations": [
            digest(layer.permutation_tensor()) for layer in pl_module.modules() if isinstance(layer, RPPLinear)]}

    def on_train_end(self, trainer, pl_module):
        self.record["parameters"] = digest(torch.cat([p.flatten() for p in pl_module.parameters()]))
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(self.record))


def probes(out: Path) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(out.glob("rank*.json"))]


def quick(fake_root: Path) -> list[str]:
    """A short RPP run on the fake data: 7 steps of a global batch of 32 rows (16 per rank under DDP)."""
    return [f"data.root={fake_root}", "data.system_dir=null", "data.download=false", "data.verify_md5=false",
            "data.val_size=32", "data.batch_size=32", "data.eval_batch_size=64", "trainer.max_epochs=1",
            "~callbacks.progress_bar", "trainer.log_every_n_steps=1", "model=rpp", "model.k=4"]


def train_py(args: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
    """`python src/train.py ...` with this checkout's code and the tests' helpers importable in every rank."""
    path = os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])
    env = os.environ | {"PYTHONPATH": path, "WANDB_MODE": "offline"}
    return subprocess.run([sys.executable, "src/train.py", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_trains_like_one_process_with_one_writer(tmp_path, fake_root):
    run = tmp_path / "ddp"
    result = train_py(["trainer=ddp", *quick(fake_root), "+callbacks.probe._target_=test_ddp.RankProbe",
                       f"+callbacks.probe.out={tmp_path / 'probe_ddp'}", f"hydra.run.dir={run}"])
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    one_cfg = compose_train(["trainer.log_every_n_steps=1", "model=rpp", "model.k=4", "logger=csv",
                             "+callbacks.probe._target_=test_ddp.RankProbe",
                             f"+callbacks.probe.out={tmp_path / 'probe_one'}"], output_dir=tmp_path / "one",
                            fake_root=fake_root)  # the same run (conftest's quick settings) in this process
    one = train(one_cfg)

    # Two processes, each knowing its rank before the trainer existed; the same permutations and, after training,
    # the same parameters on both; the permutations of a one-process run.
    rank0, rank1 = probes(tmp_path / "probe_ddp")
    (alone,) = probes(tmp_path / "probe_one")
    assert [(p["global_rank"], p["world_size"], p["rank_before_trainer"]) for p in (rank0, rank1)] == [
        (0, 2, 0), (1, 2, 1)]
    assert rank1["LOCAL_RANK"] == "1"
    assert len(rank0["permutations"]) == 2 and rank0["permutations"] == rank1["permutations"] == alone["permutations"]
    assert rank0["parameters"] == rank1["parameters"]

    # Rank 0 alone wrote the run folder: one results.json, one W&B run, one checkpoint, each step's row once.
    assert {path.name for path in run.iterdir()} <= RUN_FOLDER
    results = json.loads((run / "results.json").read_text())
    assert results["status"] == "finished"
    assert len(list((run / "wandb").glob("offline-run-*"))) == 1
    assert (run / "checkpoints" / "last.ckpt").is_file()
    rows = list(csv.DictReader((run / "csv" / "metrics.csv").open()))
    assert [row["step"] for row in rows if row["train/loss_step"]] == [str(step) for step in range(7)]
    assert sum(1 for row in rows if row["test/acc"]) == 1

    # Each process took half of every global batch of 32: the epoch's mean loss and the trained weights are those
    # of one process stepping on the whole batches, to float rounding (the gradients are averaged in another order).
    ddp = results["metrics"]
    assert ddp["train/loss_epoch"] == pytest.approx(one["train/loss_epoch"], rel=1e-5)
    assert ddp["val/loss"] == pytest.approx(one["val/loss"], rel=1e-5)
    assert ddp["test/acc"] == one["test/acc"]
    ddp_state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    one_state = torch.load(tmp_path / "one" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert ddp_state.keys() == one_state.keys()
    for key in one_state:
        torch.testing.assert_close(ddp_state[key], one_state[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.slow
def test_ddp_jobs_of_a_sweep_each_start_their_own_ranks_in_their_own_folder(tmp_path, fake_root):
    """Lightning's own command for the other ranks reran the whole sweep in each of them; and a second job in the
    same process joined the first job's finished process group."""
    sweep = tmp_path / "sweep"
    elsewhere = set((ROOT / "outputs").glob("*/*"))
    result = train_py(["-m", "trainer=ddp", *quick(fake_root), "logger=csv", "seed=0,1",
                       "+callbacks.probe._target_=test_ddp.RankProbe", "+callbacks.probe.out=${paths.output_dir}/probe",
                       f"hydra.sweep.dir={sweep}"])
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    jobs = sorted(path.parent for path in sweep.glob("*/.hydra"))
    assert {path.name for path in sweep.iterdir()} == {"multirun.yaml"} | {job.name for job in jobs}
    assert len(jobs) == 2 and result.stdout.count("2 finished") == 1  # one sweep, summarised once
    for job in jobs:
        assert json.loads((job / "results.json").read_text())["status"] == "finished"
        # both ranks wrote their probe into this job's folder (${paths.output_dir}), each in a group of 2
        assert [(p["global_rank"], p["world_size"]) for p in probes(job / "probe")] == [(0, 2), (1, 2)]
    assert set((ROOT / "outputs").glob("*/*")) == elsewhere  # no rank started a run or sweep of its own


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGTERM, pytest.param(signal.SIGUSR1, marks=pytest.mark.long)])
def test_a_stop_signal_to_a_ddp_run_stops_every_rank_with_a_checkpoint_it_resumes_from(stop, tmp_path, fake_root):
    """SLURM signals one process or all of them, not at the same step: the ranks must agree on the step to stop
    after, or the one saving waits forever in a collective the others never join."""
    run = tmp_path / "ddp"
    args = ["trainer=ddp", *quick(fake_root), "logger=csv", "trainer.max_epochs=30", "data.batch_size=16",
            f"hydra.run.dir={run}"]
    path = os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])
    env = os.environ | {"PYTHONPATH": path, "WANDB_MODE": "offline"}
    rank0 = subprocess.Popen([sys.executable, "src/train.py", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not (run / "checkpoints" / "last.ckpt").exists():
        assert rank0.poll() is None and time.monotonic() < deadline, rank0.stdout.read() if rank0.poll() else ""
        time.sleep(0.05)
    (rank1,) = children(rank0.pid)
    try:
        time.sleep(0.3)  # into the next epoch
        rank0.send_signal(stop)
        output = rank0.communicate(timeout=90)[0]
        assert rank0.returncode == 128 + stop, output[-3000:]
        assert waited_for_exit(rank1, timeout=30), "rank 1 still running after rank 0 stopped"
    finally:  # a hung run must not outlive the test
        for pid in (rank0.pid, rank1):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        rank0.wait()
    assert json.loads((run / "results.json").read_text())["status"] == "stopped"  # by rank 0 alone
    assert (run / "checkpoints" / "last.ckpt").is_file()

    rerun = train_py(args, timeout=300)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-3000:]
    assert re.search(r": resuming (in|after|before) epoch \d", rerun.stdout)
    assert json.loads((run / "results.json").read_text())["status"] == "finished"


def children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def waited_for_exit(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split()[2]
        except FileNotFoundError:
            return True
        if state == "Z":  # exited, not yet reaped (its parent is gone)
            return True
        time.sleep(0.1)
    return False
