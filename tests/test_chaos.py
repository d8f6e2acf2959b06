"""Faults at random moments of a real job's life (tests/chaos.py): every round's records equal an uninterrupted run's."""

import os
import random
import signal
import subprocess
import time

import pytest

from chaos import ROOT, Chaos, can_fill_disk, command, environment

# `make test` (CI) runs 4 rounds to stay within its time; `make chaos ROUNDS=500` many more. A failing round is
# reproduced by its seed: `python tests/chaos.py --seed <seed> --rounds 1`.
ROUNDS = int(os.environ.get("CHAOS_ROUNDS", "4"))
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
    problems = chaos.round(seed)
    assert not problems, "\n".join(problems)


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
def test_killed_just_after_the_first_checkpoint_the_wandb_history_is_whole(chaos, tmp_path):
    folder = tmp_path / "run"
    process = subprocess.Popen(command(chaos.fake_root, folder), cwd=ROOT, env=environment(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (folder / "checkpoints" / "last.ckpt").exists() and process.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.5)
    process.send_signal(signal.SIGKILL)
    process.wait()
    problems = chaos.finish(folder, [])
    assert not problems, "\n".join(problems)
