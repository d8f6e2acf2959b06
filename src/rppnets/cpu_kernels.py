"""The compiled CPU kernels of RPP layers (csrc/cpu_kernels.cpp), built on first use: P generated, W_p gathered, dW folded.

`generated` layers recompute P twice per training step; in eager PyTorch that is about 50 passes
over a tensor of m*k*n int32 values, several times the cost of the layer's matrix products. The
C++ kernel computes each column's whole Feistel domain in a small vectorised table and walks the
cycles there, writing P or W_p itself (no index in memory) once. It gives exactly the values of
`rppnets.permutation.permuted_rows`; the tests compare the two. Two more
functions serve every mode: W_p from P's rows, and dW folded from dW_p, both reading P as it is
stored (uint8, int16 or int32) instead of first widening it into a flat int32 index.

The first call compiles them with torch.utils.cpp_extension (about 30 s; cached afterwards under
TORCH_EXTENSIONS_DIR, by default ~/.cache/torch_extensions). Where that fails (no C++ compiler),
one warning is given and eager PyTorch is used, with the same results. RPPNETS_CPU_KERNELS=0 skips the kernels.
"""

import functools
import os
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).parent / "csrc" / "cpu_kernels.cpp"


@functools.cache
def kernel():
    """The compiled extension, or None where it cannot be built (after one warning) or is switched off."""
    if os.environ.get("RPPNETS_CPU_KERNELS") == "0":
        return None
    from torch.utils.cpp_extension import load

    try:
        return load("rppnets_cpu_kernels", [str(SOURCE)], extra_cflags=["-O3", "-fopenmp"], extra_ldflags=["-fopenmp"])
    except Exception as error:  # no compiler, no ninja, a broken toolchain: fall back, loudly
        warnings.warn(f"rppnets: the C++ kernels could not be built ({error}); using eager PyTorch", stacklevel=2)
        return None


def _call(name: str, *args) -> torch.Tensor | None:
    module = kernel()
    return None if module is None else getattr(module, name)(*args)


def feistel_rows(keys: torch.Tensor, m: int, inverse: bool = False) -> torch.Tensor | None:
    """P (m, c) as int32 from CPU round keys (2, rounds, c), or its inverse; None without the kernel."""
    return _call("feistel_rows", keys.contiguous(), m, inverse)


def permuted_weight(keys: torch.Tensor, weight: torch.Tensor) -> torch.Tensor | None:
    """W_p (m, c) with W_p[i, c] = W[P_c(i), c % n] for a CPU weight W (m, n), P generated; None without the kernel."""
    return _call("permuted_weight", keys.contiguous(), weight)


def gather_weight(rows: torch.Tensor, weight: torch.Tensor) -> torch.Tensor | None:
    """W_p (m, k*n) with W_p[i, h*n + j] = W[rows[i, h*n + j], j]; rows of uint8, int16 or int32. None without the kernel."""
    return _call("gather_weight", rows.contiguous(), weight)


def fold_weight_grad(rows: torch.Tensor, grad_wp: torch.Tensor, n: int) -> torch.Tensor | None:
    """dW (m, n), float32 or float64: dW[rows[i, c], c % n] += dW_p[i, c], added in bincount's order. None without the kernel."""
    return _call("fold_weight_grad", rows.contiguous(), grad_wp, n)
