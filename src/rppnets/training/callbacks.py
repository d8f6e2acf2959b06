"""Lightning callbacks that record what each run must report: model size, epoch speed, memory."""

import resource
import sys
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping as LightningEarlyStopping, RichProgressBar
from pytorch_lightning.callbacks.early_stopping import EarlyStoppingReason
from pytorch_lightning.utilities.rank_zero import rank_zero_warn

from rppnets.checks import check_int
from rppnets.meters import StepPeakMeter, state_bytes, tensor_attribute_bytes
from rppnets.models import count_dense_equivalent, count_trainable


class RunMetrics(pl.Callback):
    """A callback that logs numbers once per run; `train()` collects them from `self.metrics` for results.json.

    The numbers travel in every checkpoint: a resumed run has them without measuring or logging them again.
    """

    def __init__(self):
        self.metrics: dict[str, float] = {}

    def log_once(self, trainer: pl.Trainer, metrics: dict) -> None:
        metrics = {key: value for key, value in metrics.items() if key not in self.metrics}
        if not metrics:
            return
        self.metrics.update(metrics)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    def state_dict(self) -> dict:
        return {"metrics": dict(self.metrics)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.metrics = dict(state_dict.get("metrics", {}))


class ModelStats(RunMetrics):
    """Logs ``model/params_trainable``, ``model/params_dense_equivalent`` and the stored permutation index."""

    def on_fit_start(self, trainer, pl_module):
        from rppnets.layers.rpp_linear import index_storage

        elements, nbytes = index_storage(pl_module)
        self.log_once(trainer, {
            "model/params_trainable": count_trainable(pl_module),
            "model/params_dense_equivalent": count_dense_equivalent(pl_module),
            "model/index_elements": elements,
            "model/index_bytes": nbytes,
        })


class EpochTimer(pl.Callback):
    """Logs ``time/epoch_s`` (training batches only, validation excluded) and ``time/samples_per_s``.

    The epoch in progress travels in each checkpoint (its training seconds and samples so far): a run stopped
    mid-epoch and resumed reports that epoch's whole time and all its samples, not only those after the resume.
    """

    def __init__(self):
        self.start: float | None = None  # when this attempt's part of the current epoch began; None between epochs
        self.before = 0.0  # seconds of the current epoch trained before this attempt (from the checkpoint resumed)
        self.elapsed: float | None = None  # the epoch's training seconds, once its training batches are done
        self.samples = 0  # the epoch's training samples so far, those before this attempt included
        self.device = torch.device("cpu")

    def on_train_epoch_start(self, trainer, pl_module):
        self.before, self.samples = 0.0, 0
        self._go_on(pl_module)

    def on_train_start(self, trainer, pl_module):
        # A run resumed mid-epoch gets no epoch start: that epoch goes on from the checkpoint's seconds and samples.
        self._go_on(pl_module)

    def _go_on(self, pl_module) -> None:
        self.device = pl_module.device
        self.start, self.elapsed = self._now(), None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.samples += len(batch[0])

    def on_validation_start(self, trainer, pl_module):
        # Validation runs inside the training epoch: stop the clock when it begins.
        if not trainer.sanity_checking and self.elapsed is None:
            self.elapsed = self._so_far()

    def on_train_epoch_end(self, trainer, pl_module):
        if self.elapsed is None:
            self.elapsed = self._so_far()
        pl_module.log_dict({"time/epoch_s": self.elapsed, "time/samples_per_s": self.samples / self.elapsed})
        self.start, self.before, self.samples = None, 0.0, 0  # the epoch's checkpoint has no epoch in progress

    def _so_far(self) -> float:
        return self.before + self._now() - self.start

    def state_dict(self) -> dict:
        if self.start is None:  # between epochs
            return {"epoch_s": 0.0, "samples": 0}
        return {"epoch_s": self.elapsed if self.elapsed is not None else self._so_far(), "samples": self.samples}

    def load_state_dict(self, state_dict: dict) -> None:
        self.before, self.samples = float(state_dict.get("epoch_s", 0.0)), int(state_dict.get("samples", 0))

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()


class MemoryStats(RunMetrics):
    """Logs each run's memory once per quantity (measured as described in rppnets.meters):

    - ``memory/data_bytes``: the resident data set (the datamodule's tensors), when fitting starts;
    - ``memory/state_bytes``: parameters, gradients, optimizer state, buffers and kept permutation indices,
      after the first training step of this fit (when the optimizer's state exists);
    - ``memory/step_peak_bytes``: the highest peak of tensor memory in a few early steps, each above what was
      allocated when it began; the same for every run of a config at one thread count, however busy the machine
      (``memory/step_peak_threads``: the thread count it was measured at; RPP's CPU kernels hold a tile per thread). After the first step, one warm-up step and `measured_steps` steps run with the
      measurement on (on the CPU, the profiler); it is off for the rest of training and changes no result;
    - the run's peak, reset when fitting starts so that jobs of one multirun process do not inherit each
      other's: ``memory/cuda_max_allocated_bytes`` on a GPU, ``memory/peak_rss_bytes`` (process RSS) on the CPU.

    Args:
        measured_steps: steps whose peaks are measured. An epoch too short for them measures those it has.
    """

    def __init__(self, measured_steps: int = 3):
        super().__init__()
        self.measured_steps = check_int("measured_steps", measured_steps, 1)
        self.meter: StepPeakMeter | None = None
        self.steps_done = 0
        self.prior_cuda_peak = 0

    def on_fit_start(self, trainer, pl_module):
        # a resumed run measured what its checkpoint holds already: its steps count as done
        self.steps_done = 2 + self.measured_steps if "memory/step_peak_bytes" in self.metrics else 0
        self.meter, self.prior_cuda_peak = None, 0
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)
        else:
            reset_peak_rss()
        if trainer.datamodule is not None:
            self.log_once(trainer, {"memory/data_bytes": tensor_attribute_bytes(trainer.datamodule)})

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.steps_done == 1:  # the warm-up step runs with the meter open
            self.meter = StepPeakMeter(pl_module.device)
            self.meter.open()
        elif self.meter is not None and self.steps_done >= 2:
            self.meter.begin_step()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps_done += 1
        if self.steps_done == 1 and "memory/state_bytes" not in self.metrics:
            self.log_once(trainer, {"memory/state_bytes": state_bytes(pl_module, trainer.optimizers)})
        elif self.meter is not None and self.steps_done >= 3:
            self.meter.end_step()
            if self.steps_done == 2 + self.measured_steps:
                self._close_meter(trainer)

    def on_validation_start(self, trainer, pl_module):
        if not trainer.sanity_checking:  # the first epoch ended inside the window: keep what it measured
            self._close_meter(trainer)

    def on_exception(self, trainer, pl_module, exception):
        # a run that fails or stops inside the window must not leave the profiler on (it crashes the process at exit)
        if self.meter is not None:
            meter, self.meter = self.meter, None
            meter.close()

    def on_train_epoch_end(self, trainer, pl_module):
        # the run's peak, at the end of its last epoch: before the checkpoint of that epoch, which then holds it
        if trainer.current_epoch + 1 >= (trainer.max_epochs or 0):
            self._log_run_peak(trainer, pl_module)

    def on_train_end(self, trainer, pl_module):
        self._log_run_peak(trainer, pl_module)  # training stopped early (max_steps, a callback): not logged yet

    def _log_run_peak(self, trainer, pl_module) -> None:
        self._close_meter(trainer)
        if pl_module.device.type == "cuda":
            peak = max(self.prior_cuda_peak, torch.cuda.max_memory_allocated(pl_module.device))
            metrics = {"memory/cuda_max_allocated_bytes": peak}
        else:
            metrics = {"memory/peak_rss_bytes": peak_rss_bytes()}
        self.log_once(trainer, metrics)

    def _close_meter(self, trainer) -> None:
        if self.meter is None:
            return
        meter, self.meter = self.meter, None
        peak = meter.close()
        self.prior_cuda_peak = meter.prior_peak  # the step resets hid the run's earlier CUDA peak
        if peak is None:
            rank_zero_warn("memory/step_peak_bytes not measured: the first epoch ended before a measured step")
        else:
            # on the CPU the peak depends on the thread count (each thread's scratch tile), logged beside it
            self.log_once(trainer, {"memory/step_peak_bytes": peak, "memory/step_peak_threads": torch.get_num_threads()})


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


class EarlyStopping(LightningEarlyStopping):
    """Lightning's EarlyStopping (conf/callbacks/early_stopping/), whose decision survives a resume and is said.

    Its state (best score, epochs without improvement) travels in every checkpoint through Lightning's callback state.
    A run stopped by a signal in the very epoch it decided to stop in has that decision in its last.ckpt, saved after
    it (LastCheckpoint saves after every other callback's epoch end), but not the trainer's `should_stop`: resumed, it
    would train one more epoch. Here the resumed run stops where the uninterrupted one did.
    """

    def on_train_start(self, trainer, pl_module):
        if self.stopping_reason != EarlyStoppingReason.NOT_STOPPED:  # decided before the checkpoint resumed
            trainer.should_stop = True

    def _run_early_stopping_check(self, trainer) -> None:
        decided = self.stopping_reason != EarlyStoppingReason.NOT_STOPPED
        super()._run_early_stopping_check(trainer)
        if not decided and self.stopping_reason != EarlyStoppingReason.NOT_STOPPED and trainer.is_global_zero:
            print(f"\nearly stopping after epoch {self.stopped_epoch + 1}: {self.stopping_reason_message}", flush=True)


class ProgressBar(RichProgressBar):
    """Lightning's rich progress bar, updated every `every_n_batches` training batches instead of every batch.

    Reading the logged metrics for the bar costs as much as a whole training step of a small network
    (benchmarks/pipeline_overhead.py measures the pipeline); every 20 batches keeps the bar live at little cost.
    """

    def __init__(self, every_n_batches: int = 20, **kwargs):
        super().__init__(**kwargs)
        self.every_n_batches = every_n_batches

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if (batch_idx + 1) % self.every_n_batches == 0 or batch_idx + 1 == self.total_train_batches:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def get_metrics(self, trainer, pl_module):
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)  # the logger's version (the W&B run id): the closing summary names the run
        return metrics

    def _get_train_description(self, current_epoch: int) -> str:
        # Lightning's bar counts epochs from 0 and shows the last epoch's index as the total ("Epoch 1/1" for a
        # 2-epoch run); people count from 1 to max_epochs ("Epoch 2/2").
        description = f"Epoch {current_epoch + 1}"
        if self.trainer.max_epochs is not None and self.trainer.max_epochs >= 0:  # -1: no limit
            description += f"/{self.trainer.max_epochs}"
        if len(self.validation_description) > len(description):  # as Lightning: no flicker between the two bars
            description = f"{description:{len(self.validation_description)}}"
        return description
