"""A run stopped and resumed is recorded attempt by attempt: each attempt's thread count and training time, their sum
as the run's wall time, and one line when a resume runs at another thread count than the attempts before it."""

import json
import re
import signal
import subprocess
import sys
import time

import pytest

from chaos import ROOT, WATCHED, environment
from helpers import compose_train
from rppnets.training.checkpointing import Attempts

RUN = ["model.width=16", "trainer.max_epochs=3", "data.batch_size=16", "logger=csv"]


def tiny_job(fake_root, folder):
    return [sys.executable, "src/train.py", f"hydra.run.dir={folder}", f"data.root={fake_root}", "data.system_dir=null",
            "data.download=false", "data.verify_md5=false", "data.val_size=32", "data.eval_batch_size=64",
            "trainer.accelerator=cpu", "~callbacks.progress_bar", *RUN]


def test_attempts_say_a_thread_change_only_when_there_is_one():
    same = Attempts([{"torch_threads": 2, "wall_s": 1.0}], threads=2, resumed_at_step=14)
    assert same.thread_change() is None
    other = Attempts([{"torch_threads": 1, "wall_s": 1.0}, {"torch_threads": 4, "wall_s": 2.0}], 2, 28)
    assert other.thread_change().startswith("resuming at 2 threads where earlier attempts ran at 1, 4:")
    assert Attempts([], 2, None).thread_change() is None  # a fresh run has nothing to differ from
    everything = other.up_to_now()
    assert [a["torch_threads"] for a in everything] == [1, 4, 2] and everything[-1]["resumed_at_step"] == 28
    assert everything[-1]["wall_s"] >= 0 and [a["wall_s"] for a in everything[:2]] == [1.0, 2.0]


@pytest.mark.slow
def test_a_run_resumed_at_another_thread_count_says_so_and_records_both_attempts(fake_root, tmp_path):
    folder = tmp_path / "run"
    # held at the start of epoch 2 (helpers.PhaseLine) until the signal lands: the first epoch's checkpoint behind it
    held = [*WATCHED, "+callbacks.phase.hold='training epoch 2'", f"+callbacks.phase.once={tmp_path / 'held'}"]
    first = subprocess.Popen(tiny_job(fake_root, folder) + held, cwd=ROOT,
                             env=environment() | {"OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while not (tmp_path / "held").exists():
        assert first.poll() is None, first.communicate()[0]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert first.poll() is None and (folder / "checkpoints" / "last.ckpt").is_file()
    first.send_signal(signal.SIGTERM)
    output = first.communicate(timeout=300)[0]
    assert first.returncode == 128 + signal.SIGTERM, output
    stopped = json.loads((folder / "results.json").read_text())
    assert stopped["status"] == "stopped" and [a["torch_threads"] for a in stopped["attempts"]] == [1]

    rerun = subprocess.run(tiny_job(fake_root, folder) + held, cwd=ROOT, env=environment() | {"OMP_NUM_THREADS": "2"},
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert re.search(r": resuming (in|after|before) epoch \d", rerun.stdout)
    assert "resuming at 2 threads where earlier attempts ran at 1: the results will differ" in rerun.stdout
    results = json.loads((folder / "results.json").read_text())
    attempts = results["attempts"]
    assert [a["torch_threads"] for a in attempts] == [1, 2] and results["torch_threads"] == 2
    assert attempts[0]["resumed_at_step"] is None and attempts[1]["resumed_at_step"] >= 14
    assert all(a["wall_s"] > 0 for a in attempts)
    # the run's wall time is every attempt's (the first up to its checkpoint), not the last attempt's alone
    assert results["metrics"]["time/wall_s"] == pytest.approx(sum(a["wall_s"] for a in attempts), rel=1e-3)
    assert results["metrics"]["time/wall_s"] > attempts[1]["wall_s"]


def test_a_run_in_one_attempt_records_that_attempt(fake_root, tmp_path):
    from rppnets.training.pipeline import train

    cfg = compose_train(["logger=csv"], output_dir=tmp_path / "run", fake_root=fake_root)
    train(cfg)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert len(results["attempts"]) == 1 and results["attempts"][0]["resumed_at_step"] is None
