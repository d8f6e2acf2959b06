"""Memory meters for training, below training (which logs them) and analysis (which reports them).

`state_breakdown` sums the distinct storages a run keeps between steps (parameters, gradients, optimizer state, kept
permutation indices, buffers); `StepPeakMeter` measures the peak of tensor memory during each of a few steps above
what was allocated when it began (CUDA: the allocator's peak statistic after a reset; CPU: torch.profiler's
allocation and free events).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

STATE_PARTS = ("parameters", "gradients", "optimizer", "index", "buffers")
STEP_RANGE = "rppnets.meters.step"  # the profiler range that marks one measured step


def storage_bytes(tensors: Iterable[torch.Tensor | None], seen: set | None = None) -> int:
    """Bytes of the distinct storages behind `tensors`, skipping those already in `seen` (which is updated)."""
    seen = set() if seen is None else seen
    total = 0
    for tensor in tensors:
        if tensor is None:
            continue
        storage = tensor.untyped_storage()
        key = (tensor.device, storage.data_ptr())
        if key not in seen:
            seen.add(key)
            total += storage.nbytes()
    return total


def index_tensors(module: nn.Module) -> list[torch.Tensor]:
    """The permutation indices the RPP layers of `module` keep in memory (a shared one once per layer using it)."""
    from rppnets.layers.rpp_linear import RPPLinear

    indices = [layer.index_tensor() for layer in module.modules() if isinstance(layer, RPPLinear)]
    return [index for index in indices if index is not None]


def optimizer_tensors(optimizers: Iterable[torch.optim.Optimizer]) -> list[torch.Tensor]:
    """The tensors of the optimizers' state (Adam: exp_avg, exp_avg_sq, step), which exist after their first step."""
    return [value for optimizer in optimizers for state in optimizer.state.values()
            for value in state.values() if torch.is_tensor(value)]


def state_breakdown(module: nn.Module, optimizers: Iterable[torch.optim.Optimizer] = ()) -> dict[str, int]:
    """Bytes kept between training steps, by part (STATE_PARTS), each storage counted once across all parts.

    Summed from the tensors themselves: an index shared by several layers counts once, and the stored index (a
    buffer) counts as index, not buffer. Gradients count when present, so call this after a backward; Adam's state
    appears in its first step.
    """
    if isinstance(optimizers, torch.optim.Optimizer):
        optimizers = [optimizers]
    parameters = list(module.parameters())
    parts = {
        "parameters": parameters,
        "gradients": [p.grad for p in parameters],
        "optimizer": optimizer_tensors(optimizers),
        "index": index_tensors(module),
        "buffers": list(module.buffers()),
    }
    seen: set = set()
    return {name: storage_bytes(tensors, seen) for name, tensors in parts.items()}


def state_bytes(module: nn.Module, optimizers: Iterable[torch.optim.Optimizer] = ()) -> int:
    """Total bytes kept between training steps (see state_breakdown)."""
    return sum(state_breakdown(module, optimizers).values())


def tensor_attribute_bytes(obj) -> int:
    """Bytes of the tensors held as attributes of `obj` (a datamodule's x_train, y_train, x_val, ...), storages once."""
    return storage_bytes(value for value in vars(obj).values() if torch.is_tensor(value))


class StepPeakMeter:
    """Peak tensor memory of each measured step above what was allocated when the step began, on one device.

    Use: `open()`, then `begin_step()` / `end_step()` around each measured step, then `close()` for the highest
    peak. CUDA: the caching allocator's peak statistic, reset as each step begins (`prior_peak` keeps the peak
    from before the first reset, for a run-wide maximum). CPU: torch.profiler with profile_memory=True records
    every allocation and free between `open` and `close` only; each step is a record_function range, and its
    peak is the highest running sum of the memory events inside it. The profiler cannot size the free of a
    tensor allocated before it started (PyTorch warns about it once), so run one unmeasured step after `open`.
    """

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.peaks: list[int] = []
        self.prior_peak = 0
        self._profiler: profile | None = None
        self._range: record_function | None = None
        self._start = 0

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def open(self) -> None:
        """Starts measuring (CPU: starts the profiler)."""
        if not self.is_cuda:
            os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # quiets Kineto's device probing on machines without GPU
            self._profiler = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
            self._profiler.start()

    def begin_step(self) -> None:
        """Marks the start of a measured step: what is allocated now is its baseline."""
        if self.is_cuda:
            self.prior_peak = max(self.prior_peak, torch.cuda.max_memory_allocated(self.device))
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        else:
            self._range = record_function(STEP_RANGE)
            self._range.__enter__()

    def end_step(self) -> None:
        """Marks the end of a measured step."""
        if self.is_cuda:
            self.peaks.append(torch.cuda.max_memory_allocated(self.device) - self._start)
        else:
            self._range.__exit__(None, None, None)
            self._range = None

    def close(self) -> int | None:
        """Stops measuring; the highest peak of the measured steps (None if no step was measured)."""
        if self._profiler is not None:
            unfinished = self._range is not None
            if unfinished:  # a step begun but not ended: its range is closed here and not measured
                self._range.__exit__(None, None, None)
                self._range = None
            self._profiler.stop()
            self.peaks = profiled_step_peaks(self._profiler)[:-1 if unfinished else None]
            self._profiler = None
        return max(self.peaks, default=None)


def profiled_step_peaks(prof: profile) -> list[int]:
    """Per STEP_RANGE range of a stopped CPU profile: the peak of the running sum of CPU memory events in it."""
    events = prof.profiler.kineto_results.events()
    steps = sorted((e.start_ns(), e.end_ns()) for e in events if e.name() == STEP_RANGE)
    # sorted() is stable: events of the same nanosecond keep the order in which they were recorded
    memory = sorted(((e.start_ns(), e.nbytes()) for e in events
                     if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU),
                    key=lambda event: event[0])
    peaks = []
    for start, end in steps:
        running = peak = 0
        for time_ns, nbytes in memory:
            if start <= time_ns <= end:
                running += nbytes
                peak = max(peak, running)
        peaks.append(peak)
    return peaks
