"""Every stop signal is caught while a run trains; a closed terminal's SIGHUP stops a real running job at a safe point
(a checkpoint, results.json "stopped", exit 128 + 1); that run rerun with another learning rate starts afresh."""

import json
import os
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest

from chaos import WATCHED, Job, command
from helpers import PHASE_MARK, compose_train
from rppnets.training.checkpointing import StopSignals, checkpoint_progress, read_checkpoint
from rppnets.training.pipeline import train

# Named here, not taken from STOP_SIGNALS: a signal dropped from there must fail these tests. Each one ends a
# process by default: SLURM's SIGTERM, SIGUSR1 and SIGUSR2 ahead of a time limit, Ctrl-C's SIGINT, a closed
# terminal's SIGHUP, Ctrl-\'s SIGQUIT, a CPU limit's SIGXCPU, an alarm's SIGALRM.
STOP = ["SIGHUP", "SIGINT", "SIGQUIT", "SIGTERM", "SIGUSR1", "SIGUSR2", "SIGALRM", "SIGXCPU"]
# The real job of tests/chaos.py with CSV logging only, held as its second epoch starts until its signal comes.
HELD = ["logger=csv", "+callbacks.phase.hold='training epoch 2'"]


def test_every_stop_signal_is_caught_while_a_run_is_protected():
    for name in STOP:
        signum = signal.Signals[name]
        with StopSignals() as signals:
            # not caught, it would end this process as it ends a run: at once, with no checkpoint
            assert getattr(signal.getsignal(signum), "__self__", None) is signals, f"{name} is not a stop signal"
            os.kill(os.getpid(), signum)  # its handler runs here, in this (the main) thread
            assert signals.received == signum


@dataclass
class Stopped:
    folder: Path
    overrides: list[str]  # its command line's, without its folder
    returncode: int
    output: list[str]


@pytest.fixture(scope="module")
def hung_up(tmp_path_factory, fake_root) -> Stopped:
    """A real run, a process of its own, whose terminal closed in its second epoch."""
    folder = tmp_path_factory.mktemp("hung_up")
    args = [*command(fake_root, folder / "run", *WATCHED), *HELD, f"+callbacks.phase.once={folder / 'held'}"]
    job = Job(args)
    assert job.wait_for_line(lambda line: line == PHASE_MARK + "training epoch 2"), "\n".join(job.output)
    job.process.send_signal(signal.SIGHUP)
    return Stopped(folder / "run", [arg for arg in args[2:] if not arg.startswith("hydra.run.dir=")],
                   job.end(timeout=120), job.output)


@pytest.mark.slow
def test_a_closed_terminal_stops_a_running_job_with_a_checkpoint(hung_up):
    folder, returncode, output = hung_up.folder, hung_up.returncode, hung_up.output
    assert returncode == 128 + signal.SIGHUP, "\n".join(output)
    results = json.loads((folder / "results.json").read_text())
    assert (results["status"], results["signal"]) == ("stopped", "SIGHUP")
    progress = checkpoint_progress(read_checkpoint(folder / "checkpoints" / "last.ckpt"))
    assert (progress["epochs_done"], progress["global_step"], progress["mid_epoch"]) == (1, 15, True)
    assert any(line.startswith("stopped by SIGHUP; ") and "resume: " in line for line in output), "\n".join(output)


@pytest.mark.slow
def test_a_stopped_run_rerun_with_another_learning_rate_starts_afresh(hung_up, fake_root, tmp_path, capsys):
    """Same model and seed, so the same run name: only the config hash tells the lr 0.001 checkpoint from this run."""
    assert hung_up.returncode == 128 + signal.SIGHUP, "\n".join(hung_up.output)
    run = shutil.copytree(hung_up.folder, tmp_path / "run")
    # its own command line but the learning rate (not held again: its `once` file exists)
    overrides = [arg for arg in hung_up.overrides if arg != "~callbacks.progress_bar"]  # compose_train removes it
    train(compose_train([*overrides, "optimizer.lr=0.01"], output_dir=run, fake_root=fake_root))
    out = capsys.readouterr().out
    assert f"cannot resume: {run / 'checkpoints' / 'last.ckpt'} holds another run (optimizer.lr: 0.001 there, " \
           "0.01 here)" in out, out
    assert "resuming" not in out and "starting afresh; the previous attempt's files are in" in out, out
    (aside,) = run.glob("replaced-*")
    assert json.loads((aside / "results.json").read_text())["status"] == "stopped"
    assert checkpoint_progress(read_checkpoint(aside / "checkpoints" / "last.ckpt"))["global_step"] == 15
    results = json.loads((run / "results.json").read_text())
    assert results["status"] == "finished"
    assert checkpoint_progress(read_checkpoint(run / "checkpoints" / "last.ckpt"))["global_step"] == 42  # all of it
