"""Faults at random moments of a real job's life (tests/chaos.py): every round's faults land in the job while it runs,
and its records then equal an uninterrupted run's."""

import json
import os
import random
import signal
import subprocess

import pytest

from chaos import ROOT, WATCHED, Chaos, Job, can_fill_disk, command, compare, environment, read_record
from helpers import PHASE_MARK
from rppnets.training.checkpointing import checkpoint_progress, read_checkpoint

# `make test` (CI) runs 1 round to stay within its time, `make test-all` 4; `make chaos ROUNDS=500` many more. A
# failing round is reproduced by its seed: `python tests/chaos.py --seed <seed> --rounds 1`.
ROUNDS = int(os.environ.get("CHAOS_ROUNDS", "1"))
SEED = int(os.environ.get("CHAOS_SEED", "0"))


@pytest.fixture(scope="module")
def chaos(tmp_path_factory, fake_root):
    work = tmp_path_factory.mktemp("chaos")
    runner = Chaos(fake_root, work, disk=can_fill_disk(work / "mount-probe"))
    runner.run_reference()
    return runner


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(SEED, SEED + ROUNDS))
def test_random_faults_leave_the_records_of_an_uninterrupted_run(chaos, seed):
    result = chaos.round(seed)
    assert result.passed, result.describe()
    assert result.faults and all(fault.phase is not None for fault in result.faults), result.describe()


@pytest.mark.slow
def test_a_full_disk_is_said_last_in_one_piece_and_the_rerun_finishes(chaos, tmp_path):
    if not chaos.disk:
        pytest.skip("filling a disk mounts a tmpfs: run as root (CI does)")
    folder, log = tmp_path / "run", []
    try:
        done = chaos.fill_disk(folder, random.Random(0), log, size_kb=400)  # fills while W&B and the run write
        output = (done.stdout + done.stderr).strip().splitlines()
        assert done.returncode != 0 and "No space left" in output[-1], "\n".join(output[-40:])
        assert "Logging error" not in "\n".join(output) and len(output) < 60, "\n".join(output)
        assert not chaos.finish(folder, log)
    finally:
        chaos.unmount(folder)


@pytest.mark.slow
@pytest.mark.long  # 2 minutes; make test's chaos round and test_faults' stopped runs rebuild W&B's history too
def test_killed_just_after_the_first_checkpoint_the_wandb_history_is_whole(chaos, tmp_path):
    """Killed as its second epoch starts (held there until killed), the run resumes from the first epoch's checkpoint;
    its offline W&B run, set aside and started again, holds the whole history: the rows before the checkpoint
    replayed from it, once."""
    folder = tmp_path / "run"
    args = [*command(chaos.fake_root, folder, *WATCHED), "+callbacks.phase.hold='training epoch 2'",
            f"+callbacks.phase.once={tmp_path / 'held'}"]
    job = Job(args)
    assert job.wait_for_line(lambda line: line == PHASE_MARK + "training epoch 2"), "\n".join(job.output)
    job.process.send_signal(signal.SIGKILL)
    assert job.end() == -signal.SIGKILL, "\n".join(job.output)  # killed while it ran
    assert (folder / "checkpoints" / "last.ckpt").is_file() and not (folder / "results.json").exists()
    rerun = subprocess.run(args, cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "resuming" in rerun.stdout and "epoch 1 of 3 (step 14)" in rerun.stdout, rerun.stdout  # the checkpoint
    assert len(list((folder / "wandb").glob("offline-run-*"))) == 1  # the killed attempt's W&B run set aside
    record = read_record(folder)
    assert record.wandb_history and not compare(record, chaos.reference)


@pytest.mark.slow
def test_the_previous_checkpoint_is_the_epoch_before_the_last(chaos):
    """A damaged last.ckpt falls back to previous.ckpt: that must be the epoch before, not the run's first (a resume
    from further back still gives the same records, so no comparison of records notices)."""
    checkpoints = chaos.work / "reference" / "checkpoints"
    last, previous = (checkpoint_progress(read_checkpoint(checkpoints / name))
                      for name in ("last.ckpt", "previous.ckpt"))
    assert (previous["epochs_done"], previous["global_step"]) == (2, 28)
    assert (last["epochs_done"], last["global_step"]) == (3, 42)


@pytest.mark.slow
def test_a_run_that_finished_without_its_wandb_service_is_repaired_by_the_same_command(chaos, tmp_path):
    """W&B's service killed as testing ends (seen as a chaos round: SIGINT to every process of the job after
    testing): the run finishes, but its offline W&B history lacks the test's records. results.json says so; the
    same command resumes from the last checkpoint, tests again and replays the history: it is whole."""
    folder = tmp_path / "run"
    args = [*command(chaos.fake_root, folder, *WATCHED), "+callbacks.kill._target_=helpers.KillWandbService",
            f"+callbacks.kill.once={tmp_path / 'killed'}"]
    first = subprocess.run(args, cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=600)
    assert (tmp_path / "killed").read_text().strip(), "no wandb-core was running when testing ended"
    assert first.returncode == 0, first.stdout + first.stderr
    results = json.loads((folder / "results.json").read_text())
    assert results["status"] == "finished" and results["wandb_cut_short"], results
    assert compare(read_record(folder), chaos.reference)  # the W&B history is not whole yet

    again = subprocess.run(args, cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "resuming after epoch 3 of 3" in again.stdout and "already finished" not in again.stdout, again.stdout
    assert "wandb_cut_short" not in json.loads((folder / "results.json").read_text())
    problems = compare(read_record(folder), chaos.reference)
    assert not problems, "\n".join(problems)
    third = subprocess.run(args, cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=600)
    assert "already finished" in third.stdout, third.stdout  # repaired once: finished from then on
