"""The parts of checkpointing that need no Lightning fit (rppnets.training.checkpointing): the atomic writer and its
error, stop signals, reading a checkpoint and its progress, requeueing under SLURM (scontrol stubbed), random states.

A broken writer loses the checkpoint a resume needs; a wrong progress resumes at the wrong epoch; a wrong requeue
leaves a pre-empted job dead, or brings a cancelled one back.
"""

import errno
import os
import pickle
import random
import signal
import subprocess
from collections import namedtuple
from fractions import Fraction

import numpy as np
import pytest
import torch

from rppnets.training import checkpointing
from rppnets.training.checkpointing import (STOP_GRACE_S, STOP_SIGNALS, AtomicCheckpointIO, CheckpointError, Preempted,
                                            RandomStates, StopSignals, _write_error, checkpoint_progress,
                                            read_checkpoint, requeue_slurm_job)


@pytest.fixture(autouse=True)
def grace_timer_disarmed():
    """A grace timer a test leaves armed (its assertion failed) is disarmed at once: its SIGALRM would otherwise kill
    the test process a second later, whatever test runs then."""
    yield
    signal.setitimer(signal.ITIMER_REAL, 0)


def lightning_checkpoint(step=3, processed=1, started=1) -> dict:
    return {"loops": {"fit_loop": {"epoch_progress": {"current": {"processed": processed, "started": started}}}},
            "global_step": step, "state_dict": {"w": torch.arange(3.0)}}


# --- the writer -------------------------------------------------------------------------------------------------


def test_a_save_replaces_last_and_keeps_the_one_before_as_previous(tmp_path):
    io, path = AtomicCheckpointIO(), tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint(lightning_checkpoint(step=1), path)  # makes the folder
    assert read_checkpoint(path)["global_step"] == 1 and not (path.parent / "previous.ckpt").exists()
    io.save_checkpoint(lightning_checkpoint(step=2), path)
    assert read_checkpoint(path)["global_step"] == 2
    assert read_checkpoint(path.parent / "previous.ckpt")["global_step"] == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt", "previous.ckpt"]  # no temporary file
    assert torch.equal(io.load_checkpoint(path)["state_dict"]["w"], torch.arange(3.0))


def test_a_failed_save_leaves_last_and_previous_as_they_were(tmp_path, monkeypatch):
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint(lightning_checkpoint(step=1), path)
    io.save_checkpoint(lightning_checkpoint(step=2), path)

    def full_disk(obj, file):
        file.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError) as raised:
        io.save_checkpoint(lightning_checkpoint(step=3), path)
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(path)
    assert str(raised.value) == f"[Errno {errno.ENOSPC}] No space left on device writing the checkpoint: '{path}'"
    monkeypatch.undo()
    assert read_checkpoint(path)["global_step"] == 2 and read_checkpoint(tmp_path / "previous.ckpt")["global_step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", "previous.ckpt"]


def test_loading_refuses_objects_other_than_tensors_and_plain_values(tmp_path):
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {}, "loops": {}, "thing": Fraction(1, 3)}, path)
    with pytest.raises(pickle.UnpicklingError):
        AtomicCheckpointIO().load_checkpoint(path)
    with pytest.raises(CheckpointError, match="is not a checkpoint of this project"):
        read_checkpoint(path)


def test_a_write_error_says_its_cause(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    err = _write_error(path, PermissionError(errno.EACCES, "Permission denied"))
    assert (err.errno, err.strerror, err.filename) == (errno.EACCES, "Permission denied writing the checkpoint",
                                                       str(path))
    usage = namedtuple("usage", "total used free")
    # torch's zip writer says "unexpected pos" where the disk was full
    monkeypatch.setattr(checkpointing.shutil, "disk_usage", lambda p: usage(10**9, 10**9, 4096))
    err = _write_error(path, RuntimeError("PytorchStreamWriter failed writing file data/0: unexpected pos 64"))
    assert (err.errno, err.filename) == (errno.ENOSPC, str(path))
    assert err.strerror == "No space left on device writing the checkpoint (4,096 bytes free)"
    assert _write_error(path, OSError("no errno")).errno == errno.ENOSPC  # an OSError without a number: the disk
    monkeypatch.setattr(checkpointing.shutil, "disk_usage", lambda p: usage(10**9, 0, 1 << 20))
    err = _write_error(path, RuntimeError("bad"))
    assert (err.errno, err.strerror, err.filename) == (errno.EIO, "could not write the checkpoint (RuntimeError: bad)",
                                                       str(path))


# --- stop signals -----------------------------------------------------------------------------------------------


def test_a_stop_signal_is_remembered_and_a_second_stops_at_once(capsys):
    before = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    with StopSignals() as signals:
        assert all(signal.getsignal(signum) == signals._handle for signum in STOP_SIGNALS)
        signals.check()  # nothing received: goes on
        os.kill(os.getpid(), signal.SIGUSR1)
        assert signals.received == signal.SIGUSR1
        assert capsys.readouterr().out == ("\nreceived SIGUSR1: stopping at the next safe point (a checkpoint after "
                                           f"this step, at most {STOP_GRACE_S} s away); send it again to stop at once\n")
        with pytest.raises(Preempted) as stopped:
            signals.check()
        assert stopped.value.signum == signal.SIGUSR1 and str(stopped.value) == "stopped by SIGUSR1"
        with pytest.raises(Preempted) as stopped:
            os.kill(os.getpid(), signal.SIGUSR2)  # asked twice: the first signal is the one named
        assert stopped.value.signum == signal.SIGUSR1 and signals.received == signal.SIGUSR1
    assert {signum: signal.getsignal(signum) for signum in STOP_SIGNALS} == before
    assert signal.getitimer(signal.ITIMER_REAL)[0] == 0  # the grace timer ends with the run's protection


def test_take_over_reinstalls_the_handler_over_another(capsys):
    with StopSignals() as signals:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # as Lightning's trainer does at each stage
        signals.take_over()
        assert all(signal.getsignal(signum) == signals._handle for signum in STOP_SIGNALS)
        os.kill(os.getpid(), signal.SIGTERM)
        assert signals.received == signal.SIGTERM
    assert signal.getitimer(signal.ITIMER_REAL)[0] == 0


# --- reading a checkpoint ---------------------------------------------------------------------------------------


def test_read_checkpoint_names_the_file_and_what_is_wrong(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    torch.save(lightning_checkpoint(), path)
    assert read_checkpoint(path)["global_step"] == 3
    path.write_bytes(path.read_bytes()[:200])  # cut short
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    assert str(err.value).startswith(f"{path} cannot be read (RuntimeError: ") and err.value.__cause__ is None
    for content in ([1, 2], {"state_dict": {}}, {"loops": {}}):
        torch.save(content, path)
        with pytest.raises(CheckpointError) as err:
            read_checkpoint(path)
        assert str(err.value) == f"{path} is not a Lightning checkpoint (no training state in it)"

    def fails(message):
        def load(*args, **kwargs):
            raise RuntimeError(message)
        return load

    monkeypatch.setattr(torch, "load", fails(""))
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    assert str(err.value) == f"{path} cannot be read (RuntimeError: no detail)"
    monkeypatch.setattr(torch, "load", fails("x" * 300 + "\nsecond line"))
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    assert str(err.value) == f"{path} cannot be read (RuntimeError: {'x' * 200})"
    assert err.value.__cause__ is None and err.value.__suppress_context__


@pytest.fixture()
def loads(tmp_path, monkeypatch):
    """A saved checkpoint's path, and the keyword arguments of each torch.load call from then on (it still loads)."""
    seen = []
    real = torch.load

    def load(file, **kwargs):
        seen.append(kwargs)
        return real(file, **kwargs)

    path = tmp_path / "last.ckpt"
    torch.save(lightning_checkpoint(), path)
    monkeypatch.setattr(torch, "load", load)
    return path, seen


def test_read_checkpoint_loads_on_the_cpu_with_plain_values_only(loads):
    path, seen = loads
    read_checkpoint(path)
    assert seen == [{"map_location": "cpu", "weights_only": True}]


def test_progress_says_epochs_done_step_and_whether_saved_mid_epoch():
    assert checkpoint_progress(lightning_checkpoint(step=7, processed=2, started=2)) == {
        "epochs_done": 2, "global_step": 7, "mid_epoch": False}
    assert checkpoint_progress(lightning_checkpoint(step=9, processed=2, started=3))["mid_epoch"] is True
    assert checkpoint_progress(lightning_checkpoint(processed=3, started=2))["mid_epoch"] is False
    with pytest.raises(CheckpointError) as err:
        checkpoint_progress({"state_dict": {}})
    assert str(err.value) == "the checkpoint's training progress is incomplete (missing 'loops')"
    with pytest.raises(CheckpointError, match=r"incomplete \(missing "):
        checkpoint_progress({"loops": None, "global_step": 1})  # a TypeError inside
    no_step = lightning_checkpoint()
    del no_step["global_step"]
    with pytest.raises(CheckpointError, match=r"\(missing 'global_step'\)"):
        checkpoint_progress(no_step)


# --- requeueing under SLURM ---------------------------------------------------------------------------------------


@pytest.fixture()
def scontrol(monkeypatch, capsys):
    """scontrol stubbed where it is called: `state` is what `show job` says, `requeue` how the requeue ends."""
    calls = []
    answers = {"state": "RUNNING", "requeue": (0, "")}
    for name in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "RPPNETS_REQUEUE"):
        monkeypatch.delenv(name, raising=False)

    def run(command, **kwargs):
        calls.append(command)
        assert kwargs == {"capture_output": True, "text": True}
        if command[1] == "show":
            state = answers["state"]
            stdout = f"JobId={command[-1]} JobName=train UserId=me JobState={state} Reason=None" if state else "JobId=1"
            return subprocess.CompletedProcess(command, 0, stdout, "")
        code, stderr = answers["requeue"]
        return subprocess.CompletedProcess(command, code, "", stderr)

    monkeypatch.setattr(checkpointing.subprocess, "run", run)
    return calls, answers, capsys


def test_no_requeue_outside_slurm_or_when_turned_off(scontrol, monkeypatch):
    calls, _, _ = scontrol
    assert requeue_slurm_job() is False
    monkeypatch.setenv("SLURM_JOB_ID", "")
    assert requeue_slurm_job() is False
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("RPPNETS_REQUEUE", "0")
    assert requeue_slurm_job() is False
    assert calls == []
    monkeypatch.setenv("RPPNETS_REQUEUE", "1")
    assert requeue_slurm_job() is True


def test_a_running_job_is_requeued(scontrol, monkeypatch):
    calls, answers, capsys = scontrol
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    assert requeue_slurm_job() is True
    assert calls == [["scontrol", "show", "job", "--oneliner", "77"], ["scontrol", "requeue", "77"]]
    assert capsys.readouterr().out == "SLURM job 77 requeued\n"
    answers["requeue"] = (1, "  slurm_requeue error: Access/permission denied \n")
    assert requeue_slurm_job() is False
    assert capsys.readouterr().out == "SLURM job 77 not requeued: slurm_requeue error: Access/permission denied\n"


def test_an_array_task_is_requeued_by_its_array_name(scontrol, monkeypatch):
    calls, _, _ = scontrol
    monkeypatch.setenv("SLURM_JOB_ID", "80")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "77")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert requeue_slurm_job() is True
    assert calls == [["scontrol", "show", "job", "--oneliner", "77_3"], ["scontrol", "requeue", "77_3"]]


@pytest.mark.parametrize("state", ["PENDING", "REQUEUED", "REQUEUE_HOLD"])
def test_a_job_slurm_already_requeued_is_not_requeued_again(scontrol, monkeypatch, state):
    calls, answers, capsys = scontrol
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    answers["state"] = state
    assert requeue_slurm_job() is True
    assert len(calls) == 1 and capsys.readouterr().out == f"SLURM job 77 requeued by SLURM ({state})\n"


@pytest.mark.parametrize("state", ["CANCELLED", "COMPLETING", None])
def test_a_cancelled_or_unknown_job_is_not_brought_back(scontrol, monkeypatch, state):
    calls, answers, capsys = scontrol
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    answers["state"] = state
    assert requeue_slurm_job() is False
    assert len(calls) == 1 and capsys.readouterr().out == f"SLURM job 77 not requeued: it is {state or 'unknown'}\n"


# --- random states ----------------------------------------------------------------------------------------------


def test_random_states_restore_every_generator_through_a_checkpoint_file(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.normal()  # numpy keeps a cached Gaussian: it must come back too
    saved = RandomStates().state_dict()
    path = tmp_path / "states.pt"
    torch.save(saved, path)  # through a checkpoint, loaded as read_checkpoint does
    expected = (random.random(), np.random.normal(), np.random.randint(1 << 30), torch.rand(3))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    RandomStates().load_state_dict(torch.load(path, weights_only=True))
    again = (random.random(), np.random.normal(), np.random.randint(1 << 30), torch.rand(3))
    assert expected[:3] == again[:3] and torch.equal(expected[3], again[3])
    assert "cuda" not in saved or torch.cuda.is_initialized()


def test_a_stop_signal_arms_the_grace_timer_until_the_run_settles():
    with StopSignals() as signals:
        assert signal.getitimer(signal.ITIMER_REAL)[0] == 0
        os.kill(os.getpid(), signal.SIGUSR1)
        assert 0 < signal.getitimer(signal.ITIMER_REAL)[0] <= STOP_GRACE_S  # still running then: stopped at once
        signals.settle()  # the run records how it ended: no longer stopped by the timer
        assert signals.settled and signal.getitimer(signal.ITIMER_REAL)[0] == 0
    with StopSignals() as signals:
        signals.settle()
        os.kill(os.getpid(), signal.SIGUSR2)  # a signal at the very end arms no timer
        assert signals.received == signal.SIGUSR2 and signal.getitimer(signal.ITIMER_REAL)[0] == 0
        with pytest.raises(Preempted):
            os.kill(os.getpid(), signal.SIGUSR1)  # a second one still stops at once
    assert signal.getitimer(signal.ITIMER_REAL)[0] == 0


# --- what the mutation run of 2026-12-08 found untested ----------------------------------------------------------


class FlushRecorder:
    """A stdout that records what is written and when it is flushed: a stop or requeue line must reach the job's log
    at once, before the process is killed with its buffer."""

    def __init__(self):
        self.events = []

    def write(self, text):
        self.events.append(("write", text))
        return len(text)

    def flush(self):
        self.events.append("flush")

    def text(self):
        return "".join(event[1] for event in self.events if event != "flush")


def test_loading_refuses_objects_even_where_the_environment_turns_torchs_default_off(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {}, "loops": {}, "thing": Fraction(1, 3)}, path)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # torch.load's default is then weights_only=False
    with pytest.raises(pickle.UnpicklingError):
        AtomicCheckpointIO().load_checkpoint(path)


def test_the_writer_loads_on_the_cpu_unless_told_otherwise(loads):
    path, seen = loads
    AtomicCheckpointIO().load_checkpoint(path)

    def elsewhere(storage, location):
        return storage

    AtomicCheckpointIO().load_checkpoint(path, map_location=elsewhere)
    assert seen == [{"map_location": "cpu", "weights_only": True}, {"map_location": elsewhere, "weights_only": True}]


def test_a_save_makes_every_missing_folder_above_the_checkpoint(tmp_path):
    path = tmp_path / "sweep" / "run" / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(lightning_checkpoint(step=4), path)
    assert read_checkpoint(path)["global_step"] == 4


def test_a_temporary_file_that_cannot_be_made_is_a_write_error_naming_the_checkpoint(tmp_path, monkeypatch):
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint(lightning_checkpoint(step=1), path)

    def no_file(*args, **kwargs):  # e.g. no descriptor left, or no inode: the temporary file never exists
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(checkpointing, "open", no_file, raising=False)
    with pytest.raises(OSError) as raised:
        io.save_checkpoint(lightning_checkpoint(step=2), path)
    assert (raised.value.errno, raised.value.filename) == (errno.EMFILE, str(path))
    monkeypatch.undo()
    assert read_checkpoint(path)["global_step"] == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_a_write_error_measures_the_free_space_of_the_checkpoints_folder(tmp_path, monkeypatch):
    asked = []
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(checkpointing.shutil, "disk_usage", lambda p: asked.append(p) or usage(1, 1, 0))
    assert _write_error(tmp_path / "last.ckpt", RuntimeError("unexpected pos")).errno == errno.ENOSPC
    assert asked == [tmp_path]


def test_the_stop_line_is_flushed_at_once(monkeypatch):
    out = FlushRecorder()
    monkeypatch.setattr("sys.stdout", out)
    with StopSignals() as signals:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert signals.received == signal.SIGUSR1
    assert signal.getitimer(signal.ITIMER_REAL)[0] == 0
    assert out.text().startswith("\nreceived SIGUSR1: stopping") and out.events[-1] == "flush"


@pytest.mark.parametrize("state, requeue, line", [("RUNNING", (0, ""), "SLURM job 77 requeued\n"),
                                                  ("RUNNING", (1, "denied"), "SLURM job 77 not requeued: denied\n"),
                                                  ("PENDING", None, "SLURM job 77 requeued by SLURM (PENDING)\n"),
                                                  ("CANCELLED", None, "SLURM job 77 not requeued: it is CANCELLED\n")])
def test_every_requeue_line_is_flushed_at_once(scontrol, monkeypatch, state, requeue, line):
    _, answers, _ = scontrol
    answers["state"], answers["requeue"] = state, requeue
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    out = FlushRecorder()
    monkeypatch.setattr("sys.stdout", out)
    requeue_slurm_job()
    assert out.text() == line and out.events[-1] == "flush"


class FakeCuda:
    """torch.cuda as a machine with a GPU shows it: `initialized` once a tensor went to the GPU."""

    def __init__(self, initialized):
        self.initialized, self.set = initialized, []

    def install(self, monkeypatch):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_initialized", lambda: self.initialized)
        monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [torch.tensor([7], dtype=torch.uint8)])
        monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: self.set.append(states))


def test_cuda_generators_are_saved_once_cuda_runs_and_restored_where_saved(monkeypatch):
    cuda = FakeCuda(initialized=True)
    cuda.install(monkeypatch)
    saved = RandomStates().state_dict()
    assert [state.tolist() for state in saved["cuda"]] == [[7]]
    RandomStates().load_state_dict(saved)
    assert len(cuda.set) == 1 and cuda.set[0] is saved["cuda"]

    cuda = FakeCuda(initialized=False)  # a GPU the run never used: nothing of it saved, nothing set
    cuda.install(monkeypatch)
    saved = RandomStates().state_dict()
    assert "cuda" not in saved
    RandomStates().load_state_dict(saved)  # a checkpoint without CUDA states, on a machine with a GPU
    assert cuda.set == []
