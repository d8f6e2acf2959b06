"""A run's console: the known, harmless messages of the libraries silenced, each matched by its own text; and the
paths and commands it prints, quoted so that each can be pasted.

A run prints where its data came from, a progress bar, its resume line and its closing summary; a warning should
mean a real problem. Each entry below says why its message is harmless here. Anything not listed still prints.
"""

import logging
import os
import re
import shlex
import shutil
import sys
import warnings
from collections.abc import Iterable
from pathlib import Path

# Kineto (torch.profiler, which the memory meter runs for a few steps) prints "USDT: profiler_start/stop" at its
# highest message level, 5 (and, on a machine without a GPU, an ERROR that it found none); a minimum level of 6 is
# above all of them. Kineto reads it when the profiler first starts in a process.
KINETO_LOG_LEVEL = "6"

# Lightning's hint, wherever `srun` is installed but the process was not started by it, that a SLURM job of several
# processes needs srun. Runs choose their cluster environment themselves (rppnets.training.cluster: SLURM's only for
# a job of several tasks, which srun starts), and Lightning still looks for srun again on every fit and test
# started without a checkpoint path.
SRUN_HINT = r"The `srun` command is available on your system but is not used"

# (message regex, category): Python warnings raised by the libraries on every run.
WARNINGS = (
    # Lightning 2.6's own _pytree helper uses a class that torch 2.14 deprecated; nothing for a user to change.
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
    # Quick runs have fewer batches than log_every_n_steps: their per-step rows are skipped, epoch rows are kept.
    (r"The number of training batches \(\d+\) is smaller than the logging interval", UserWarning),
    # Lightning's hint for SLURM jobs started without srun (see SRUN_HINT).
    (SRUN_HINT, UserWarning),
)

# (logger name, start of the message): lines logged through Python's logging.
LOG_LINES = (
    # Lightning advertises a logging service of its own when a Trainer starts.
    ("pytorch_lightning.utilities.rank_zero", "💡 Tip: For seamless cloud logging"),
    ("lightning_fabric.utilities.rank_zero", "💡 Tip: For seamless cloud logging"),
    # Which accelerators exist, on every Trainer: the run uses the one its trainer config names.
    ("pytorch_lightning.utilities.rank_zero", "GPU available: "),
    ("pytorch_lightning.utilities.rank_zero", "TPU available: "),
    ("pytorch_lightning.accelerators.cuda", "LOCAL_RANK: "),  # "LOCAL_RANK: 0 - CUDA_VISIBLE_DEVICES: [0]"
    # The end of training as planned (the progress bar shows the last epoch); "No training batches" still prints.
    ("pytorch_lightning.utilities.rank_zero", "`Trainer.fit` stopped: `max_"),
    # A resumed run prints its own line (epoch, step and checkpoint) before Lightning restores it.
    ("pytorch_lightning.utilities.rank_zero", "Restoring states from the checkpoint path at "),
    ("pytorch_lightning.utilities.rank_zero", "Restored all states from the checkpoint at "),
    # The C++ kernels are CPU code; a CUDA toolkit without a GPU does not matter to them.
    ("torch.utils.cpp_extension", "No CUDA runtime is found"),
    # SLURM sends SIGCONT, then SIGTERM, to a job it cancels or requeues; submitit's worker ignores both and says so.
    # The run's own handler takes SIGTERM while it runs and prints its stop line; SIGCONT changes nothing.
    ("submitit", "Bypassing signal SIGCONT"),
    ("submitit", "Bypassing signal SIGTERM"),
)


class _DropMessages(logging.Filter):
    def __init__(self, starts: tuple[str, ...]):
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.starts)


_FILTERS = {name: _DropMessages(tuple(start for logger, start in LOG_LINES if logger == name))
            for name, _ in LOG_LINES}


def _install_log_filter(name: str) -> None:
    logging.getLogger(name).addFilter(_FILTERS[name])  # addFilter adds a filter once


# On a machine with a CUDA toolkit and no GPU, torch.utils.cpp_extension logs "No CUDA runtime is found" when it is
# first imported, which the CPU kernels do wherever the layers are used (a library user's script too): the filter is
# in place as soon as this module is imported, and rppnets.layers.cpu_kernels imports it.
_install_log_filter("torch.utils.cpp_extension")


def import_cpp_extension():
    """torch.utils.cpp_extension, imported with its known line filtered (see above)."""
    _install_log_filter("torch.utils.cpp_extension")
    from torch.utils import cpp_extension

    return cpp_extension


_allocator_notice_spent = False


def spend_allocator_notice() -> bool:
    """Spends c10's once-in-1000 notice about freed blocks of unknown size on a block of our own, unseen.

    The memory meter (rppnets.meters) runs torch.profiler with profile_memory for a few steps. A block
    allocated before it started and freed while it runs (the previous step's gradients, in its warm-up step) is one
    the allocator cannot size, and c10 writes "Memory block of unknown size was allocated before the profiling
    started" to stderr from C++, past any Python filter: for the first such block of the process and for every
    1000th after it. Its counter is spent here once per process: one block freed under a profiler of a moment, with
    the process's stderr sent to /dev/null for those few lines only (nothing else runs then). A run frees a few
    dozen such blocks, the memory analysis a few hundred; a process that frees 999 more sees the line again.
    c10's flag that sizes every block instead (caffe2_report_cpu_memory_usage) costs about 3 us per allocation, a
    few percent of a small network's step. Returns whether the notice was spent (False after the first call).
    """
    global _allocator_notice_spent
    if _allocator_notice_spent:
        return False
    import torch
    from torch.profiler import ProfilerActivity, profile

    os.environ.setdefault("KINETO_LOG_LEVEL", KINETO_LOG_LEVEL)  # read when the first profiler starts
    block = torch.empty(16)  # allocated before the profiler starts
    sys.stdout.flush()
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True):
            del block
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    _allocator_notice_spent = True
    return True


def silence_known_noise() -> None:
    """Install the filters above; idempotent, so each job of a multirun (or a launcher's worker) may call it."""
    os.environ.setdefault("KINETO_LOG_LEVEL", KINETO_LOG_LEVEL)  # a level set by the user wins
    for message, category in WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name in _FILTERS:
        _install_log_filter(name)
    spend_allocator_notice()


def shell_word(word: str | Path) -> str:
    """`word` (a path, an argument) as one word of a shell line: quoted where the shell would split or expand it."""
    return shlex.quote(str(word))


def shell_line(words: Iterable[str | Path]) -> str:
    """A command line that a shell runs as these very words."""
    return " ".join(shell_word(word) for word in words)


def program(name: str | None = None) -> str:
    """This interpreter (`name` None), or the program `name` installed beside it (``wandb``), as the first word of a
    printed command: its name where the shell finds this very one by it, its whole path otherwise (a virtual
    environment that is not active)."""
    path = sys.executable if name is None else str(Path(sys.executable).parent / name)
    short = Path(path).name
    return short if shutil.which(short) == path else path


def shown_path(path: str | Path) -> Path:
    """`path` as typed where this process runs: relative to the working directory when it lies inside it (a job's
    folder under ``outputs/``), whole otherwise, so that a printed line stays short and still pastes here."""
    path = Path(os.path.abspath(path))
    return path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path


def file_named(path: str | Path) -> str:
    """`path` for a printed line, quoted as a shell word, and said to be missing where nothing is there."""
    return shell_word(path) + ("" if os.path.lexists(path) else " (missing)")


# What Hydra's override grammar reads unquoted as a string of these very characters: letters, digits, / . _ - : + @ %
# (a value that reads as something else, a number, a bool or null, is quoted too).
_HYDRA_PLAIN = re.compile(r"[A-Za-z0-9_./:+@%-]+")


def hydra_value(value: str | Path) -> str:
    """`value` as the right-hand side of a Hydra override (``key=<this>``) that Hydra reads back as this very string.

    As it is where the grammar takes it unquoted; otherwise in double quotes, with OmegaConf's escape before ``${``
    (a run of n backslashes there becomes 2n + 1) and Hydra's: ``\\"`` for a quote, and the backslashes right before
    a quote or the closing one doubled. Spaces, quotes, ``=``, ``,``, ``$``, backslashes and any Unicode then read back
    as they are. A shell line needs shell_word() around the whole override as well.
    """
    value = str(value)
    if _HYDRA_PLAIN.fullmatch(value) and _hydra_reads(value) == value:
        return value
    value = re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", value)  # OmegaConf: not an interpolation
    value = re.sub(r'(\\*)("|\Z)', lambda m: m.group(1) * 2 + ("\\" + m.group(2) if m.group(2) else ""), value)
    return f'"{value}"'


def _hydra_reads(value: str):
    """What Hydra's override parser makes of ``key=<value>``; None where it cannot parse it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        return OverridesParser.create().parse_override(f"key={value}").value()
    except HydraException:
        return None
