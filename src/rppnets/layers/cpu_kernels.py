"""The C++ CPU kernels of RPP layers (csrc/cpu_kernels.cpp), built once per source, torch and Python, and loaded once.

The kernels: P generated from the round keys (each column's Feistel domain in a small vectorised
table, then cycle walking), W_p gathered and dW folded reading P as stored (uint8, int16 or int32),
and the fused step that never holds the whole W_p. P, W_p and dW are exactly those of the eager
reference in rppnets.layers.backends; the fused step's products equal its within float rounding (they are
summed by blocks). The tests compare them.

The first `kernel()` compiles them with torch.utils.cpp_extension (about 30 s; `make setup` does it
once) into a build folder named by a hash of the source, the compiler flags, the torch version and
the Python version, under TORCH_EXTENSIONS_DIR (default ~/.cache/torch_extensions), compiled from
a copy of the source kept in that folder: checkouts with the same source share one build (the
build file names the copy, not a checkout's path, so they do not rebuild each other), and a changed
source or environment gets its own. Where the build fails (no C++ compiler), one warning is given and the eager
reference is used, with the same results. RPPNETS_CPU_KERNELS=0 skips the kernels.
"""

import functools
import hashlib
import os
import sys
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).parent / "csrc" / "cpu_kernels.cpp"
CFLAGS = ("-O3", "-fopenmp")
LDFLAGS = ("-fopenmp",)  # tuples: load() appends its own flags to the lists it is given


def build_key() -> str:
    """16 hex digits naming this build: the source, the flags, the torch and the Python it is built for."""
    digest = hashlib.sha256(SOURCE.read_bytes())
    for part in (*CFLAGS, *LDFLAGS, torch.__version__, sys.version, sys.platform):
        digest.update(b"\0" + part.encode())
    return digest.hexdigest()[:16]


def build_directory() -> Path:
    """The build folder of this source and environment (created if missing)."""
    from torch.utils.cpp_extension import get_default_build_root

    root = os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()
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
