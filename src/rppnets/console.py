"""A run's console: the known, harmless messages of the libraries silenced, each matched by its own text.

A run prints where its data came from, a progress bar and its closing summary; a warning should mean a real
problem. Each entry below says why its message is harmless here. Anything not listed still prints.
"""

import logging
import os
import warnings

# Kineto (torch.profiler, which the memory meter runs for a few steps) prints "USDT: profiler_start/stop" at its
# highest message level, 5 (and, on a machine without a GPU, an ERROR that it found none); a minimum level of 6 is
# above all of them. Kineto reads it when the profiler first starts in a process.
KINETO_LOG_LEVEL = "6"

# (message regex, category): Python warnings raised by the libraries on every run.
WARNINGS = (
    # Lightning 2.6's own _pytree helper uses a class that torch 2.14 deprecated; nothing for a user to change.
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
    # Quick runs have fewer batches than log_every_n_steps: their per-step rows are skipped, epoch rows are kept.
    (r"The number of training batches \(\d+\) is smaller than the logging interval", UserWarning),
)

# (logger name, start of the message): lines logged through Python's logging.
LOG_LINES = (
    # Lightning advertises a logging service of its own when a Trainer starts.
    ("pytorch_lightning.utilities.rank_zero", "💡 Tip: For seamless cloud logging"),
    ("lightning_fabric.utilities.rank_zero", "💡 Tip: For seamless cloud logging"),
    # The C++ kernels are CPU code; a CUDA toolkit without a GPU does not matter to them.
    ("torch.utils.cpp_extension", "No CUDA runtime is found"),
)


class _DropMessages(logging.Filter):
    def __init__(self, starts: tuple[str, ...]):
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.starts)


_FILTERS = {name: _DropMessages(tuple(start for logger, start in LOG_LINES if logger == name))
            for name, _ in LOG_LINES}


def silence_known_noise() -> None:
    """Install the filters above; idempotent, so each job of a multirun (or a launcher's worker) may call it."""
    os.environ.setdefault("KINETO_LOG_LEVEL", KINETO_LOG_LEVEL)  # a level set by the user wins
    for message, category in WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name, drop in _FILTERS.items():
        logging.getLogger(name).addFilter(drop)
