"""Checkpoints a run can resume from bit for bit: atomic writes, every epoch (and N steps), random states, signals."""

from __future__ import annotations

import errno
import os
import pickle
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import Checkpoint
from pytorch_lightning.utilities.exceptions import SIGTERMException

from rppnets.checks import check_int
from rppnets.training.history import RunHistory

# Every catchable signal whose default is to end the process stops a run the same way: a checkpoint after the
# current step, then exit 128 + signal. SLURM sends SIGTERM at a time limit or pre-emption, and SIGUSR1
# (`--signal=USR1@90`) or submitit's SIGUSR2 before the limit; Ctrl-C is SIGINT, a closed terminal SIGHUP.
STOP_SIGNALS = (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2,
                signal.SIGALRM, signal.SIGXCPU)
LAST = "last.ckpt"  # the run's own checkpoint (LastCheckpoint); the only one with a previous.ckpt
PREVIOUS = "previous.ckpt"  # the checkpoint before last.ckpt, kept beside it: a damaged last.ckpt falls back to it
# A run that has not reached its safe point this long after a stop signal stops at once, as if the signal came twice:
# one signal always stops a run, even one stuck in a wait that never ends.
STOP_GRACE_S = 10


class Attempts:
    """The attempts of one run: those before (from the checkpoint resumed) and this one, each with its thread count
    and the seconds it trained up to its last checkpoint (time after that is redone by the next attempt)."""

    def __init__(self, earlier: list[dict], threads: int, resumed_at_step: int | None):
        self.earlier = [dict(attempt) for attempt in earlier]
        self.current = {"torch_threads": threads, "resumed_at_step": resumed_at_step, "wall_s": 0.0}
        self.started = time.perf_counter()

    def up_to_now(self) -> list[dict]:
        """Every attempt, this one with its time so far."""
        return self.earlier + [self.current | {"wall_s": time.perf_counter() - self.started}]

    def thread_change(self) -> str | None:
        """Why this attempt's numbers may differ in the last digits from an uninterrupted run's: earlier attempts
        ran at another thread count (floating-point sums of BLAS and oneDNN then go in another order)."""
        others = sorted({a["torch_threads"] for a in self.earlier} - {self.current["torch_threads"]})
        if not others:
            return None
        return (f"resuming at {self.current['torch_threads']} threads where earlier attempts ran at "
                f"{', '.join(map(str, others))}: the results will differ from an uninterrupted run's in the last digits")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from: damaged, not a checkpoint, or another run's. Names the file."""


class Preempted(Exception):
    """The run was asked to stop by a signal; a checkpoint was saved and the job can be resumed."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint to a temporary file, syncs it, moves the ``last.ckpt`` it replaces to ``previous.ckpt``,
    then renames it into place: a kill mid-write leaves a good checkpoint, and a damaged ``last.ckpt`` still has one to
    fall back on. Any other checkpoint (``best.ckpt``) is replaced by the rename alone. Loads with ``weights_only=True``: a checkpoint holds tensors and plain values only."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            with open(tmp, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
        except (OSError, RuntimeError) as err:
            tmp.unlink(missing_ok=True)
            raise _write_error(path, err) from err
        if path.name == LAST and path.is_file():  # another checkpoint (best.ckpt) is replaced, previous.ckpt kept
            os.replace(path, path.with_name(PREVIOUS))
        os.replace(tmp, path)

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        return super().load_checkpoint(path, map_location=map_location or "cpu", weights_only=True)


def _write_error(path: Path, err: Exception) -> OSError:
    """An OSError that says why a checkpoint could not be written: torch's zip writer reports a full disk as an
    "unexpected pos" RuntimeError, which hides the cause."""
    if isinstance(err, OSError) and err.errno is not None:
        return OSError(err.errno, f"{err.strerror} writing the checkpoint", str(path))
    free = shutil.disk_usage(path.parent).free
    if free < (1 << 20):  # what torch's writer needed was not there
        return OSError(errno.ENOSPC, f"No space left on device writing the checkpoint ({free:,} bytes free)", str(path))
    return OSError(errno.EIO, f"could not write the checkpoint ({type(err).__name__}: {err})", str(path))


class StopSignals:
    """Catches STOP_SIGNALS while installed and remembers the first; the training loop checks it between steps. A run
    still going STOP_GRACE_S after the first stops at once (the timer's SIGALRM is the signal again), until `settle`."""

    def __init__(self):
        self.received: int | None = None
        self.settled = False
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.received is None:
            self.received = signum
            if not self.settled:
                signal.setitimer(signal.ITIMER_REAL, STOP_GRACE_S)
            print(f"\nreceived {signal.Signals(signum).name}: stopping at the next safe point (a checkpoint after "
                  f"this step, at most {STOP_GRACE_S} s away); send it again to stop at once", flush=True)
        else:  # asked twice, or the safe point did not come in time: stop now, from the last checkpoint saved
            raise Preempted(self.received)

    def settle(self) -> None:
        """The run is at its end (recording how it ended): a stop signal's timer no longer stops it there."""
        self.settled = True
        signal.setitimer(signal.ITIMER_REAL, 0)

    def check(self) -> None:
        """A safe point outside training (before fitting, between test batches): stop here if a signal came."""
        if self.received is not None:
            raise Preempted(self.received)

    def __enter__(self) -> "StopSignals":
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def take_over(self) -> None:
        """Installs the handler again over Lightning's, which the trainer sets at the start of each stage: its SIGTERM
        handler broadcasts to the other ranks from inside the handler, a collective they may never join."""
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._handle)

    def __exit__(self, *exc) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


class LastCheckpoint(Checkpoint):
    """Saves ``last.ckpt`` at the end of every epoch, every `every_n_train_steps` steps if set, and after the
    training step in which a stop signal reached any process of the run, then raises Preempted on every rank (after
    an epoch's last step, or during validation, at the epoch's end instead): a resumed run logs every metric of an
    uninterrupted one, once. Each checkpoint holds the run's identity and its logged history (RunHistory) up to it.
    Loggers are flushed first, so the CSV on disk covers the checkpoint.

    A `Checkpoint` subclass, so Lightning calls its epoch-end hook after the module has logged the epoch's values.
    The fit-level metrics at each save are kept in the checkpoint, for a job that resumes after training ended.
    """

    def __init__(self, dirpath: str, every_n_train_steps: int | None = None):
        self.path = Path(dirpath) / LAST
        self.every_n_train_steps = (None if every_n_train_steps is None
                                    else check_int("every_n_train_steps", every_n_train_steps, 1))
        self.signals: StopSignals | None = None  # set by train() while the run is protected
        self.identity: dict | None = None  # set by train(): stamped on every checkpoint (config hash, run, W&B id)
        self.attempts: Attempts | None = None  # set by train(): each attempt's threads and time up to the checkpoint
        self.fit_metrics: dict[str, float] = {}

    def save(self, trainer: pl.Trainer) -> None:
        self.fit_metrics = {key: float(value) for key, value in trainer.callback_metrics.items()}
        for logger in trainer.loggers:
            logger.save()
        trainer.save_checkpoint(self.path, weights_only=False)  # the full training state, not only weights

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        # the run's identity and its logged history up to this point: what resuming checks and rebuilds from
        history = next((lg for lg in trainer.loggers if isinstance(lg, RunHistory)), None)
        checkpoint["run"] = {"identity": self.identity,
                             "history": [dict(row) for row in history.rows] if history is not None else None,
                             "attempts": self.attempts.up_to_now() if self.attempts is not None else []}

    def on_train_start(self, trainer, pl_module):
        if self.signals is not None:
            self.signals.take_over()
            if signum := self.stop_signal(trainer):  # came while the data or the checkpoint loaded: nothing new to save
                raise Preempted(signum)

    def on_test_start(self, trainer, pl_module):
        if self.signals is not None:
            self.signals.take_over()

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if self.signals is not None:  # testing keeps nothing: a stopped test runs again from the checkpoint
            self.signals.check()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        # After an epoch's last step come its validation and epoch end: a signal then stops at the epoch's end.
        if not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch and (signum := self.stop_signal(trainer)):
            # what Lightning does right after this hook, done first: this step's metrics reach the loggers
            trainer._logger_connector.on_batch_end()
            trainer._logger_connector.update_train_step_metrics()
            self.save(trainer)
            raise Preempted(signum)
        if self.every_n_train_steps and trainer.global_step % self.every_n_train_steps == 0:
            self.save(trainer)

    def on_train_epoch_end(self, trainer, pl_module):
        # What Lightning does right after this hook, done first: the epoch's training metrics reach the loggers (and
        # so the checkpoint's history); Lightning's own pass then finds nothing left to log.
        connector, epoch_loop = trainer._logger_connector, trainer.fit_loop.epoch_loop
        connector.on_epoch_end()
        epoch_loop._batches_that_stepped -= 1  # Lightning logs epoch metrics at the epoch's last step
        connector.update_train_epoch_metrics()
        epoch_loop._batches_that_stepped += 1
        self.save(trainer)
        if signum := self.stop_signal(trainer):
            raise Preempted(signum)

    def stop_signal(self, trainer: pl.Trainer) -> int | None:
        """The stop signal any process of the run received, agreed by all of them (the highest if several): SLURM
        signals one process or all, never at the same step, and every rank must save and stop after the same one."""
        received = self.signals.received if self.signals is not None and self.signals.received is not None else 0
        if trainer.world_size > 1:
            agreed = torch.tensor(received, device=trainer.strategy.root_device)
            received = int(trainer.strategy.reduce(agreed, reduce_op=torch.distributed.ReduceOp.MAX))
        return received or None

    def on_exception(self, trainer, pl_module, exception):
        if isinstance(exception, SIGTERMException):  # Lightning's own SIGTERM stop, where our handler is not in
            self.save(trainer)

    def state_dict(self) -> dict:
        return {"fit_metrics": self.fit_metrics}

    def load_state_dict(self, state_dict: dict) -> None:
        self.fit_metrics = dict(state_dict.get("fit_metrics", {}))


class RandomStates(pl.Callback):
    """Saves and restores the global random generators (Python, NumPy, torch CPU and CUDA) with each checkpoint.

    The data order has its own generator, saved by the training batches themselves (rppnets.data).
    """

    def state_dict(self) -> dict:
        version, numpy_keys, position, has_gauss, gauss = np.random.get_state()
        state = {
            "python": random.getstate(),
            "numpy": (version, torch.from_numpy(numpy_keys.astype(np.int64)), position, has_gauss, gauss),
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        random.setstate(state_dict["python"])
        version, keys, position, has_gauss, gauss = state_dict["numpy"]
        np.random.set_state((version, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
        torch.set_rng_state(state_dict["torch"])
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])


def read_checkpoint(path: Path) -> dict:
    """Load a checkpoint on the CPU, tensors and plain values only; CheckpointError naming the file if it cannot be."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's own text would suggest weights_only=False: never for a file we distrust
        raise CheckpointError(f"{path} is not a checkpoint of this project (it holds objects other than tensors "
                              "and plain values)") from None
    except Exception as err:
        raise CheckpointError(f"{path} cannot be read ({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else 'no detail'})") from None
    if not isinstance(checkpoint, dict) or "loops" not in checkpoint or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} is not a Lightning checkpoint (no training state in it)")
    return checkpoint


def checkpoint_progress(checkpoint: dict) -> dict:
    """What a loaded checkpoint holds: epochs fully trained, global step, and whether it was saved mid-epoch."""
    try:
        epoch_progress = checkpoint["loops"]["fit_loop"]["epoch_progress"]["current"]
        return {"epochs_done": epoch_progress["processed"], "global_step": checkpoint["global_step"],
                "mid_epoch": epoch_progress["started"] > epoch_progress["processed"]}
    except (KeyError, TypeError) as err:
        raise CheckpointError(f"the checkpoint's training progress is incomplete (missing {err})") from None


def requeue_slurm_job() -> bool:
    """Under SLURM (SLURM_JOB_ID set, RPPNETS_REQUEUE not 0), put this job back in the queue; True if requeued.

    The requeued job runs the same command in the same folders, so every unfinished run resumes.
    """
    job = os.environ.get("SLURM_JOB_ID")
    if not job or os.environ.get("RPPNETS_REQUEUE", "1") == "0":
        return False
    if array := os.environ.get("SLURM_ARRAY_JOB_ID"):
        job = f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    # `scancel` sends SIGTERM too, after marking the job CANCELLED, and SLURM requeues a cancelled job when asked:
    # only a job still RUNNING (a time limit's signal, a pre-emption by signal) is put back.
    shown = subprocess.run(["scontrol", "show", "job", "--oneliner", job], capture_output=True, text=True)
    state = next((word.split("=", 1)[1] for word in shown.stdout.split() if word.startswith("JobState=")), "unknown")
    if state.startswith("REQUEUE") or state == "PENDING":  # pre-empted by `scontrol requeue`: SLURM did it
        print(f"SLURM job {job} requeued by SLURM ({state})", flush=True)
        return True
    if state != "RUNNING":
        print(f"SLURM job {job} not requeued: it is {state}", flush=True)
        return False
    result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    print(f"SLURM job {job} " + ("requeued" if result.returncode == 0 else f"not requeued: {result.stderr.strip()}"),
          flush=True)
    return result.returncode == 0
