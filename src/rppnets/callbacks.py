"""Lightning callbacks that record what each run must report: model size, epoch speed, peak memory."""

import resource
import sys
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import RichProgressBar

from rppnets.models import count_dense_equivalent, count_trainable


class RunMetrics(pl.Callback):
    """A callback that logs numbers once per run; `train()` collects them from `self.metrics` for results.json."""

    def __init__(self):
        self.metrics: dict[str, float] = {}

    def log_once(self, trainer: pl.Trainer, metrics: dict) -> None:
        self.metrics.update(metrics)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)


class ModelStats(RunMetrics):
    """Logs ``model/params_trainable``, ``model/params_dense_equivalent`` and the stored permutation index."""

    def on_fit_start(self, trainer, pl_module):
        from rppnets.rpp_linear import index_storage

        elements, nbytes = index_storage(pl_module)
        self.log_once(trainer, {
            "model/params_trainable": count_trainable(pl_module),
            "model/params_dense_equivalent": count_dense_equivalent(pl_module),
            "model/index_elements": elements,
            "model/index_bytes": nbytes,
        })


class EpochTimer(pl.Callback):
    """Logs ``time/epoch_s`` (training batches only, validation excluded) and ``time/samples_per_s``."""

    def on_train_epoch_start(self, trainer, pl_module):
        self.start, self.elapsed, self.samples = self._now(pl_module), None, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.samples += len(batch[0])

    def on_validation_start(self, trainer, pl_module):
        # Validation runs inside the training epoch: stop the clock when it begins.
        if not trainer.sanity_checking and self.elapsed is None:
            self.elapsed = self._now(pl_module) - self.start

    def on_train_epoch_end(self, trainer, pl_module):
        if self.elapsed is None:
            self.elapsed = self._now(pl_module) - self.start
        pl_module.log_dict({"time/epoch_s": self.elapsed, "time/samples_per_s": self.samples / self.elapsed})

    @staticmethod
    def _now(pl_module) -> float:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        return time.perf_counter()


class PeakMemory(RunMetrics):
    """Logs this run's peak memory once, named for what it measures: CUDA allocations on a GPU, resident set on
    the CPU. The peak is reset when fitting starts, so jobs of one multirun process do not inherit each other's."""

    def on_fit_start(self, trainer, pl_module):
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)
        else:
            reset_peak_rss()

    def on_train_end(self, trainer, pl_module):
        if pl_module.device.type == "cuda":
            metrics = {"memory/cuda_max_allocated_bytes": torch.cuda.max_memory_allocated(pl_module.device)}
        else:
            metrics = {"memory/peak_rss_bytes": peak_rss_bytes()}
        self.log_once(trainer, metrics)


def reset_peak_rss() -> None:
    """Linux: start the process's peak resident set (VmHWM) again from the current one; elsewhere a no-op."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_bytes() -> int:
    """Peak resident set since the last reset: VmHWM on Linux, else the process's lifetime ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


class ProgressBar(RichProgressBar):
    """Lightning's rich progress bar, updated every `every_n_batches` training batches instead of every batch.

    Reading the logged metrics for the bar costs about a millisecond, as much as a whole training step of a
    small network; doing it every 20 batches keeps the bar live at a negligible cost.
    """

    def __init__(self, every_n_batches: int = 20, **kwargs):
        super().__init__(**kwargs)
        self.every_n_batches = every_n_batches

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if (batch_idx + 1) % self.every_n_batches == 0 or batch_idx + 1 == self.total_train_batches:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
