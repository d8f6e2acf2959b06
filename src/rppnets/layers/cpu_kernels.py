"""The C++ CPU kernels of RPP layers (csrc/cpu_kernels.cpp), built once per source and environment, and loaded once.

The kernels: P generated from the round keys (each column's Feistel domain in a small table, its rounds in
16-bit vector lanes, then cycle walking), W_p gathered and dW folded reading P as stored (uint8, int16 or int32),
and the fused step that never holds the whole W_p. P, W_p and dW are exactly those of the eager
reference in rppnets.layers.backends; so is the fused step, whose sums the eager CPU backward makes in the same
blocks and runs (the runs fixed by the sizes, not the thread count: the same bits on any number of threads). The
tests compare them.

The first `kernel()` compiles them with torch.utils.cpp_extension (about 30 s; `make setup` does it
once) into a build folder under TORCH_EXTENSIONS_DIR (default ~/.cache/torch_extensions), compiled from
a copy of the source kept in that folder. The folder is named by a hash of everything the generated
build.ninja holds: the source, the compiler flags, the compiler, and the paths of the torch install and
the Python it compiles against (torch's include and library folders, Python's include folder), with the
torch and Python versions. Checkouts that share one environment share one build (the build file names
the copy, not a checkout's path); two environments with their own torch (two venvs, a conda env) get
two builds side by side instead of rewriting one build file with their own paths and rebuilding each
other's. Where the build fails (no C++ compiler), one warning is given and the eager reference is
used, with the same bits. RPPNETS_CPU_KERNELS=0 skips the kernels.
"""

import functools
import hashlib
import os
import sys
import sysconfig
import warnings
from pathlib import Path

import torch

from rppnets.console import import_cpp_extension

SOURCE = Path(__file__).parent / "csrc" / "cpu_kernels.cpp"
CFLAGS = ("-O3", "-fopenmp")
LDFLAGS = ("-fopenmp",)  # tuples: load() appends its own flags to the lists it is given


def build_environment() -> tuple[str, ...]:
    """What the generated build.ninja names besides the source and flags: the C++ compiler, torch's include and
    library folders and Python's include folder, as torch.utils.cpp_extension writes them (its absolute paths)."""
    cpp_extension = import_cpp_extension()
    python_include = sysconfig.get_path("include", scheme="nt" if sys.platform == "win32" else "posix_prefix")
    return (cpp_extension.get_cxx_compiler(), *cpp_extension.include_paths(), *cpp_extension.library_paths(),
            python_include or "")


def build_key() -> str:
    """16 hex digits naming this build: the source, the flags, the environment it is built in (build_environment),
    the torch and the Python versions."""
    digest = hashlib.sha256(SOURCE.read_bytes())
    for part in (*CFLAGS, *LDFLAGS, *build_environment(), torch.__version__, sys.version, sys.platform):
        digest.update(b"\0" + part.encode())
    return digest.hexdigest()[:16]


def build_directory() -> Path:
    """The build folder of this source and environment (created if missing)."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or import_cpp_extension().get_default_build_root()
    folder = Path(root) / f"rppnets_cpu_kernels_{build_key()}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def build_source(folder: Path) -> Path:
    """The source copied into its build folder (atomically; several processes may start at once)."""
    copy = folder / SOURCE.name
    if not copy.is_file() or copy.read_bytes() != SOURCE.read_bytes():
        tmp = folder / f".{SOURCE.name}.{os.getpid()}.tmp"
        tmp.write_bytes(SOURCE.read_bytes())
        os.replace(tmp, copy)
    return copy


@functools.cache
def kernel():
    """The compiled extension, or None where it cannot be built (after one warning) or is switched off."""
    if os.environ.get("RPPNETS_CPU_KERNELS") == "0":
        return None
    from torch.utils.cpp_extension import load

    try:
        folder = build_directory()
        return load(
            "rppnets_cpu_kernels",
            [str(build_source(folder))],
            extra_cflags=list(CFLAGS),
            extra_ldflags=list(LDFLAGS),
            build_directory=str(folder),
        )
    except Exception as error:  # no compiler, no ninja, a broken toolchain: fall back, loudly
        warnings.warn(f"rppnets: the C++ kernels could not be built ({error}); using eager PyTorch", stacklevel=2)
        return None
