"""A stopped run's last words, and the time of the epoch it stopped in.

Under SLURM a stop (``scancel``, a node set down, a time limit) signals every process of the job step, W&B's service
process (wandb-core) too. The run's one stop line was followed by asyncio's ``socket.send() raised exception.`` lines and
the 25-line traceback of W&B's exit hook (ConnectionResetError): harmless, but it read like a crash. Now W&B adds at
most one line, saying its service was gone and that the CSV and checkpoints keep the record.

A run stopped mid-epoch and resumed reported that epoch's time counting only the part after the resume; now the
checkpoint carries the epoch's seconds and samples so far (EpochTimer's state).
"""

from __future__ import annotations

import asyncio
import csv
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch

from chaos import command, environment
from helpers import descendants
from rppnets.training import loggers

ROOT = Path(__file__).resolve().parents[1]
STEPS_PER_EPOCH = 14  # chaos' job: 224 training images in batches of 16
PAUSE_S = 0.5  # the stopped attempt trains this much longer in the step it stops after


class StopAfterStep(pl.Callback):
    """Put into a job (``+callbacks.stop._target_=test_quiet_stop.StopAfterStep``, tests/ on PYTHONPATH): after
    training step `kill_service_at` it kills W&B's service (SIGKILL) and, once it is gone, sends itself SIGTERM; after
    step `step_signal_at` it sends SIGTERM to itself and every process below it at once, as SLURM signals a job step.
    Each step is trained `pause_s` longer first. A resumed attempt starts after the step it stopped at: each fault
    comes once, and the same command (the same config) goes on with the run."""

    def __init__(self, kill_service_at: int, step_signal_at: int, pause_s: float = PAUSE_S):
        self.kill_service_at, self.step_signal_at, self.pause_s = kill_service_at, step_signal_at, pause_s

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step not in (self.kill_service_at, self.step_signal_at):
            return
        time.sleep(self.pause_s)
        me = os.getpid()
        if trainer.global_step == self.step_signal_at:
            for pid in [me, *descendants(me)]:
                os.kill(pid, signal.SIGTERM)
            return
        for pid in _wandb_core(me):
            os.kill(pid, signal.SIGKILL)
            while _state(pid) not in ("Z", "gone"):
                time.sleep(0.01)
        os.kill(me, signal.SIGTERM)


def _wandb_core(pid: int) -> list[int]:
    return [child for child in descendants(pid)
            if "wandb-core" in Path(f"/proc/{child}/cmdline").read_bytes().decode(errors="replace")]


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"


def assert_stopped_quietly(done: subprocess.CompletedProcess) -> None:
    """The job stopped on its SIGTERM with its stop line, W&B said at most one line, and nothing else came after."""
    output = done.stdout + done.stderr
    lines = output.splitlines()
    assert done.returncode == 128 + signal.SIGTERM, output[-3000:]
    assert any(line.startswith("received SIGTERM: stopping") for line in lines), output[-3000:]  # it was running
    assert len([line for line in lines if line.startswith("stopped by SIGTERM; checkpoint ")]) == 1, output[-3000:]
    said = [line for line in lines if "W&B" in line]
    assert len(said) <= 1, output[-3000:]
    assert all("CSV and checkpoints keep the record" in line for line in said), output[-3000:]
    for noise in ("Traceback", "Exception ignored", "socket.send()"):
        assert noise not in output, output[-3000:]


def epoch_timer_state(folder: Path) -> dict:
    checkpoint = torch.load(folder / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return checkpoint["callbacks"]["EpochTimer"]


@pytest.mark.slow
def test_a_stopped_job_says_one_line_about_wandb_and_its_resumed_epochs_their_whole_time(tmp_path, fake_root):
    """Stopped mid-epoch twice (W&B's service killed, then SIGTERM; then SIGTERM to every process of the job), then
    rerun to the end: each stop has its stop line and at most one W&B line, and each resumed epoch's time/epoch_s counts
    the seconds before its stop (recorded in the checkpoint), its samples_per_s all of the epoch's samples."""
    folder = tmp_path / "run"
    stops = [7, STEPS_PER_EPOCH + 5]  # mid-epoch 1 (after the memory meter's steps), then mid-epoch 2
    job = command(fake_root, folder, "trainer.max_epochs=2", "+callbacks.stop._target_=test_quiet_stop.StopAfterStep",
                  f"+callbacks.stop.kill_service_at={stops[0]}", f"+callbacks.stop.step_signal_at={stops[1]}")
    before = {}
    for epoch, step in zip((0, 1), stops):
        done = subprocess.run(job, cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=300)
        print(done.stdout + done.stderr)
        assert_stopped_quietly(done)
        state = epoch_timer_state(folder)
        assert state["samples"] == 16 * (step - epoch * STEPS_PER_EPOCH), state
        assert state["epoch_s"] >= PAUSE_S, state
        before[epoch] = state
    rerun = subprocess.run(job, cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-3000:]
    rows = {int(row["epoch"]): row for row in csv.DictReader((folder / "csv" / "metrics.csv").open())
            if row.get("time/epoch_s")}
    for epoch, state in before.items():
        epoch_s, per_s = float(rows[epoch]["time/epoch_s"]), float(rows[epoch]["time/samples_per_s"])
        assert epoch_s >= state["epoch_s"], (epoch, rows[epoch], state)  # was the part after the resume only
        assert epoch_s * per_s == pytest.approx(16 * STEPS_PER_EPOCH), (epoch, rows[epoch])


def test_wandbs_records_at_the_end_become_one_line_and_others_print_as_before(monkeypatch, capsys):
    """asyncio's transport writing to a connection that is gone warns ``socket.send() raised exception.`` for each
    write from the fifth on, through logging's last resort (no handler): these, and W&B's own, become one line."""
    monkeypatch.setattr(logging, "lastResort", logging.lastResort)
    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # as in a run (pytest's own capture left out)
    monkeypatch.setattr(loggers, "_said", loggers.threading.Event())
    monkeypatch.setattr(loggers.atexit, "register", lambda fn: fn)
    loggers._quiet_exit_of_wandb()

    async def write_to_a_lost_connection():
        ours, theirs = socket.socketpair()
        _, writer = await asyncio.open_connection(sock=ours)
        theirs.close()
        await asyncio.sleep(0.1)  # the end of its stream is read: the connection is lost
        for _ in range(8):
            writer.write(b"x")
        writer.close()

    asyncio.run(write_to_a_lost_connection())
    logging.getLogger("wandb.sdk.lib.service.service_client").error("Error reading server response.")
    logging.getLogger("elsewhere").warning("a warning of another library")
    err = capsys.readouterr().err
    assert err == ("W&B's service went away (socket.send() raised exception.); its run may be left unfinished, the "
                   "run's CSV and checkpoints keep the record\na warning of another library\n")


def test_an_error_of_wandbs_exit_hook_is_the_one_line_unless_one_was_said(monkeypatch, capsys):
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)
    monkeypatch.setattr(loggers, "_said", loggers.threading.Event())
    monkeypatch.setattr(loggers, "_service_process", lambda: None)  # not an earlier test's service, ended since
    namespace = {"__name__": "wandb.sdk.lib.service.service_connection"}
    exec("def teardown_atexit():\n    raise ConnectionResetError('Connection lost')", namespace)
    loggers._at_exit()
    for _ in range(2):
        try:
            namespace["teardown_atexit"]()
        except ConnectionResetError as err:
            sys.unraisablehook(SimpleNamespace(exc_type=type(err), exc_value=err, exc_traceback=err.__traceback__,
                                               err_msg="Exception ignored in atexit callback",
                                               object=namespace["teardown_atexit"]))
    assert capsys.readouterr().err == ("W&B's service was gone at exit (ConnectionResetError: Connection lost); the "
                                       "run's CSV and checkpoints keep the record\n")
