"""Checkpoints a run can resume from bit for bit: atomic writes, every epoch (and N steps), random states, signals."""

from __future__ import annotations

import os
import random
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import Checkpoint
from pytorch_lightning.utilities.exceptions import SIGTERMException

from rppnets.checks import check_int

# Signals that stop a run with a checkpoint: SLURM sends SIGTERM at a time limit or pre-emption, and SIGUSR1
# (`--signal=USR1@90`) or submitit's SIGUSR2 some time before the limit.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


class Preempted(Exception):
    """The run was asked to stop by a signal; a checkpoint was saved and the job can be resumed."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint to a temporary file, syncs it, then renames it into place: a kill mid-write leaves the
    previous checkpoint intact. Loads with ``weights_only=True``: a checkpoint holds tensors and plain values only."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as file:
            torch.save(checkpoint, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        return super().load_checkpoint(path, map_location=map_location or "cpu", weights_only=True)


class StopSignals:
    """Catches STOP_SIGNALS while installed and remembers the first; the training loop checks it between steps."""

    def __init__(self):
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.received is None:
            self.received = signum
            print(f"\nreceived {signal.Signals(signum).name}: saving a checkpoint after this step, then stopping",
                  flush=True)

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
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


class LastCheckpoint(Checkpoint):
    """Saves ``last.ckpt`` at the end of every epoch, every `every_n_train_steps` steps if set, and after the
    training step in which a stop signal reached any process of the run, then raises Preempted on every rank (after
    an epoch's last step, or during validation, the epoch ends first and the stop follows the next step): a
    resumed run logs every metric of an uninterrupted one, once.
    Loggers are flushed first, so the CSV on disk covers the checkpoint.

    A `Checkpoint` subclass, so Lightning calls its epoch-end hook after the module has logged the epoch's values.
    The fit-level metrics at each save are kept in the checkpoint, for a job that resumes after training ended.
    """

    def __init__(self, dirpath: str, every_n_train_steps: int | None = None):
        self.path = Path(dirpath) / "last.ckpt"
        self.every_n_train_steps = (None if every_n_train_steps is None
                                    else check_int("every_n_train_steps", every_n_train_steps, 1))
        self.signals: StopSignals | None = None  # set by train() while the run is protected
        self.fit_metrics: dict[str, float] = {}

    def save(self, trainer: pl.Trainer) -> None:
        self.fit_metrics = {key: float(value) for key, value in trainer.callback_metrics.items()}
        for logger in trainer.loggers:
            logger.save()
        trainer.save_checkpoint(self.path, weights_only=False)  # the full training state, not only weights

    def on_train_start(self, trainer, pl_module):
        if self.signals is not None:
            self.signals.take_over()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        # After an epoch's last step come its validation and epoch-end metrics, which a run resumed from here would
        # never log: a signal then stops after the next epoch's first step.
        if not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch and (signum := self.stop_signal(trainer)):
            # what Lightning does right after this hook, done first: this step's metrics reach the loggers
            trainer._logger_connector.on_batch_end()
            trainer._logger_connector.update_train_step_metrics()
            self.save(trainer)
            raise Preempted(signum)
        if self.every_n_train_steps and trainer.global_step % self.every_n_train_steps == 0:
            self.save(trainer)

    def on_train_epoch_end(self, trainer, pl_module):
        # Not the place to stop: Lightning logs the epoch's training metrics after this hook, and a resumed run
        # would never write them.
        self.save(trainer)

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


def checkpoint_progress(path: Path) -> dict:
    """What a checkpoint holds: epochs fully trained, global step, and whether it was saved mid-epoch."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    epoch_progress = checkpoint["loops"]["fit_loop"]["epoch_progress"]["current"]
    return {"epochs_done": epoch_progress["processed"], "global_step": checkpoint["global_step"],
            "mid_epoch": epoch_progress["started"] > epoch_progress["processed"]}


def requeue_slurm_job() -> bool:
    """Under SLURM (SLURM_JOB_ID set, RPPNETS_REQUEUE not 0), put this job back in the queue; True if requeued.

    The requeued job runs the same command in the same folders, so every unfinished run resumes.
    """
    job = os.environ.get("SLURM_JOB_ID")
    if not job or os.environ.get("RPPNETS_REQUEUE", "1") == "0":
        return False
    if array := os.environ.get("SLURM_ARRAY_JOB_ID"):
        job = f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    print(f"SLURM job {job} " + ("requeued" if result.returncode == 0 else f"not requeued: {result.stderr.strip()}"),
          flush=True)
    return result.returncode == 0
