"""No way out of a run without a bound: the faults that made runs wait without end, provoked for real.

- out of memory (the address-space limit of a running job lowered, and what is left filled) at a random phase: the
  run ends at once, results.json "failed" naming "out of memory in <phase>", its checkpoint kept; the same command
  with the limit lifted finishes;
- a thread whose first steps run out of memory: ``Thread.start()`` waited for it without end;
- a W&B service that accepts and never answers, at the run's start (WANDB_SERVICE) and at its end (wandb-core
  stopped with SIGSTOP): the run does not wait for it, and one SIGTERM stops a run waiting on it within
  bounded.STOPPING_S (a stopping run's W&B finish gets that long, not W&B's 20 s).
"""

from __future__ import annotations

import json
import os
import random
import resource
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from chaos import command, environment
from helpers import descendants
from rppnets.training.bounded import STOPPING_S
from rppnets.training.loggers import WANDB_FINISH_S

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
BOUNDED = ROOT / "src" / "rppnets" / "training" / "bounded.py"
LANDED = "fault-landed.json"  # written by the job when the fault lands: proof it was still running then
SHORT_JOB = ["trainer.max_epochs=2"]  # chaos' job shortened: later overrides win


# --- the fault, inside the job: a Lightning callback added by a sitecustomize, so the command stays the same ---

def _vm_size() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize")


_held: list = []


def exhaust_address_space() -> None:
    """Lower this process's address-space limit to what it uses plus a little, then fill that little."""
    resource.setrlimit(resource.RLIMIT_AS, (_vm_size() + (32 << 20), resource.RLIM_INFINITY))
    for size in (100_000, 4_000):
        try:
            while True:
                _held.append(bytearray(size))
        except MemoryError:
            pass


def install_fault(hook: str, folder: str) -> None:
    """Every Trainer of this process gets a callback that runs out of memory at `hook` (in the second epoch for the
    training hooks: a checkpoint exists by then)."""
    import pytorch_lightning as pl

    class OutOfMemory(pl.Callback):
        def setup(self, trainer, pl_module, stage):  # first among the callbacks: before the progress bar's hooks
            trainer.callbacks.remove(self)
            trainer.callbacks.insert(0, self)

        def fault(self, trainer, *args, **kwargs):
            if _held or (hook != "on_test_start" and (trainer.current_epoch < 1 or trainer.sanity_checking)):
                return
            checkpoint = (Path(folder) / "checkpoints" / "last.ckpt").is_file()
            Path(folder, LANDED).write_text(json.dumps({"hook": hook, "checkpoint": checkpoint}))
            exhaust_address_space()

    setattr(OutOfMemory, hook, OutOfMemory.fault)
    original = pl.Trainer.__init__

    def init(self, *args, callbacks=None, **kwargs):
        original(self, *args, callbacks=[*(callbacks or []), OutOfMemory()], **kwargs)

    pl.Trainer.__init__ = init


def _with_fault(tmp_path: Path, hook: str, folder: Path) -> dict:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(f"import sys\nsys.path.insert(0, {str(TESTS)!r})\n"
                                           f"from test_bounded_exit import install_fault\n"
                                           f"install_fault({hook!r}, {str(folder)!r})\n")
    return dict(environment(), PYTHONPATH=str(site))


def _results(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())


@pytest.mark.slow
def test_out_of_memory_at_a_random_phase_ends_the_run_at_once_naming_it(tmp_path, fake_root):
    hook, phase = random.choice([("on_train_batch_start", "training"), ("on_validation_start", "training"),
                                 ("on_test_start", "testing")])
    print(f"out of memory at {hook}")
    folder = tmp_path / "run"
    job = command(fake_root, folder) + SHORT_JOB
    started = time.monotonic()
    done = subprocess.run(job, cwd=ROOT, env=_with_fault(tmp_path, hook, folder), capture_output=True, text=True,
                          timeout=300)
    output = done.stdout + done.stderr
    landed = json.loads((folder / LANDED).read_text())  # the job was running when its memory ran out
    assert done.returncode == 1, output[-3000:]
    results = _results(folder)
    assert results["status"] == "failed"
    assert results["error"].startswith(f"out of memory in {phase}"), results["error"]
    assert (folder / "checkpoints" / "last.ckpt").is_file() or not landed["checkpoint"]
    assert time.monotonic() - started < 120, output[-3000:]  # it waited 12 minutes and more

    rerun = subprocess.run(job, cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-3000:]
    assert _results(folder)["status"] == "finished"


# --- a thread that runs out of memory before it says it started ---

THREAD_PROBE = textwrap.dedent("""
    import importlib.util, json, resource, sys, threading, time
    spec = importlib.util.spec_from_file_location("bounded", sys.argv[1])
    bounded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bounded)
    held = []

    def exhaust_address_space():  # as the job's fault does (test_bounded_exit's, without importing torch)
        vm_size = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize:"))
        resource.setrlimit(resource.RLIMIT_AS, (vm_size + (32 << 20), resource.RLIM_INFINITY))
        for size in (100_000, 4_000):
            try:
                while True:
                    held.append(bytearray(size))
            except MemoryError:
                pass
    warm = threading.Thread(target=lambda: None)
    warm.start()
    warm.join()  # a stack to reuse: the new thread is created, and its first steps find no memory
    with bounded.bounded_thread_starts():
        thread = threading.Thread(target=lambda: None, name="probe")
        exhaust_address_space()
        started = time.monotonic()
        try:
            thread.start()
            outcome = "started"
        except Exception as err:
            outcome = bounded.failure_text(err, "testing")
        took = time.monotonic() - started
        thread.join()  # a thread that never started is one that ended: no "cannot join ... before it is started"
        held.clear()
    print(json.dumps({"outcome": outcome, "took": took}))
""")


def test_a_thread_that_runs_out_of_memory_as_it_starts_is_an_error_naming_it():
    done = subprocess.run([sys.executable, "-c", THREAD_PROBE, str(BOUNDED)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    probe = json.loads(done.stdout.strip().splitlines()[-1])
    if probe["outcome"] == "started":  # the allocator found room after all: nothing to see this time
        pytest.skip("the thread found memory to start")
    assert probe["outcome"].startswith("out of memory in testing (ThreadStartError: thread 'probe'"), probe
    assert probe["took"] < 10


# --- a W&B service that never answers ---

SILENT_START = textwrap.dedent("""
    import os, socket, sys, time
    from omegaconf import OmegaConf
    import wandb
    from wandb.sdk.lib.service import service_token
    from rppnets.training import loggers

    listener = socket.socket(socket.AF_UNIX)
    listener.bind(sys.argv[1])
    listener.listen()  # accepts (the kernel does) and never answers
    os.environ["WANDB_SERVICE"] = f"{service_token._CURRENT_VERSION}-{os.getpid()}-unix-{sys.argv[1]}"
    loggers.WANDB_START_S = 3
    cfg = OmegaConf.create({"_target_": "rppnets.training.loggers.ContainedWandbLogger", "project": "p",
                            "save_dir": sys.argv[2], "mode": "offline"})
    started = time.monotonic()
    try:
        loggers.start_wandb(cfg, {"a": 1}, wandb_id="silent1")
        print("started")
    except Exception as err:
        print(f"{type(err).__name__}: {err} after {time.monotonic() - started:.1f} s")
""")


@pytest.mark.slow
def test_a_wandb_service_that_never_answers_fails_the_start_within_its_bound(tmp_path):
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", SILENT_START, str(tmp_path / "wandb.sock"), str(tmp_path)],
                          cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "WaitTimeout: W&B's service (starting the W&B run) did not answer within 3 s" in done.stdout, done.stdout
    assert time.monotonic() - started < 60  # the process exits too: nothing waits for the silent service at exit


def _wandb_core(pid: int) -> list[int]:
    return [child for child in descendants(pid)
            if "wandb-core" in Path(f"/proc/{child}/cmdline").read_bytes().decode(errors="replace")]


@pytest.mark.slow
def test_one_sigterm_stops_a_run_waiting_on_a_silent_wandb_service(tmp_path, fake_root):
    folder = tmp_path / "run"
    process = subprocess.Popen(command(fake_root, folder) + SHORT_JOB, cwd=ROOT, env=environment(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stopped: list[int] = []
    try:
        deadline = time.monotonic() + 240
        while not (services := _wandb_core(process.pid)):  # the W&B run is starting
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()[0][-3000:]
            time.sleep(0.05)
        while not (folder / "checkpoints" / "last.ckpt").is_file():  # training
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()[0][-3000:]
            time.sleep(0.05)
        for pid in services:
            os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)
        csv = folder / "csv" / "metrics.csv"
        while "test/acc" not in (csv.read_text() if csv.is_file() else ""):  # tested: now it waits on W&B
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()[0][-3000:]
            time.sleep(0.05)
        time.sleep(0.5)
        assert process.poll() is None, process.communicate()[0][-3000:]  # still running when the signal lands
        process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        output = process.communicate(timeout=90)[0]
        took = time.monotonic() - signalled
        left = {pid: _state(pid) for pid in stopped}
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
        for pid in stopped:
            for signum in (signal.SIGKILL, signal.SIGCONT):
                try:
                    os.kill(pid, signum)
                except ProcessLookupError:
                    pass
    assert process.returncode == 128 + signal.SIGTERM, output[-3000:]
    # the finish waits STOPPING_S from the signal, not its own WANDB_FINISH_S (20 s); exiting takes a few seconds more
    assert took < STOPPING_S + 10 < WANDB_FINISH_S + 5, output[-3000:]
    said = [line for line in output.splitlines() if line.startswith("W&B")]  # the summary names its W&B run too
    assert said == ["W&B could not finish its run (WaitTimeout: W&B's service (finishing the W&B run) did not answer "
                    f"within {STOPPING_S:g} s of the stop signal); the run's CSV and results.json are unaffected"], \
        output[-3000:]
    assert "Traceback" not in output and "Exception ignored" not in output, output[-3000:]
    assert _results(folder)["status"] == "finished"  # trained and tested before W&B was waited on
    assert (folder / "checkpoints" / "last.ckpt").is_file()
    assert "T" not in left.values(), left  # the run ended its own silent service: none is left behind


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"
