"""The kernels behind an RPP layer's step, one backend per device: C++ on the CPU, Triton on CUDA, else eager PyTorch.

A backend computes what a training step needs from W and P: y = x @ W_p, then dx = dy @ W_p^T and
dW, the fold of dW_p = x^T @ dy over the k places each entry of W went to (summed in float32 at
least, in a fixed order: deterministic). The registered ops (rppnets.layers.rpp_ops) call them.
Signed RPP multiplies each entry of W_p by its sign s[h, i, j] (rppnets.layers.permutation.negative_signs), and
each term of the fold by the same sign; every backend hashes the signs from the per-column sign keys where it
uses them.

- "cpu-fused" (the CPU default): C++ kernels that make W_p one block of columns at a time where the
  products use it, so the whole W_p never exists (csrc/cpu_kernels.cpp).
- "cpu": C++ kernels that gather the whole W_p and fold dW from dW_p, reading P as stored, and for
  generated P make its rows once per backward for both.
- "triton" (the CUDA default): one Triton kernel builds W_p, reading P from the index or generating
  it in registers; one puts dW_p's k copies back in W's order, and a sum adds them. No atomics.
- "triton-fused": Triton products whose W_p tiles are gathered from W where tl.dot uses them, and dW
  folded as a gather through P^-1, so neither W_p nor dW_p ever exists (rppnets.layers.triton_kernels). Not
  yet the default: written without a GPU, it is unmeasured; choose by measurement
  (benchmarks/gpu_checks.sh bench prints both).
- "eager": the reference, in plain PyTorch (index_select, and bincount on the CPU or a gather through
  P^-1 and a sum elsewhere); the CPU backends give exactly its W_p. On the CPU its backward sums in the fused
  kernel's blocks and runs (backward_by_runs), so "cpu-fused" gives exactly its y, dx and dW; "cpu" exactly its W_p
  and fold, and dx and dW within float rounding (summed through the whole W_p, as whole_backward does).

On the CPU none of these sums depends on the thread count (tests/test_thread_determinism.py); the products that MKL
computes by itself (not inside the fused kernels' runs) are MKL's, which gave the same bits at 1 and 2 threads.
"""

import functools
from dataclasses import dataclass

import torch

from rppnets.layers import cpu_kernels
from rppnets.layers.permutation import index_dtype, negative_signs, permuted_rows

FUSED_BLOCK = 64  # columns of W_p per block of the fused kernels (experiments/rpp_layer_benchmark)
# The fused backward's sums over W_p's columns (dx and dW) in at most this many runs of blocks, added in run order: a
# split by the sizes alone, so the bits are the same on any number of threads (up to this many work in parallel)
FUSED_RUNS = 4
KINDS = ("index", "keys", "identity")


@dataclass(frozen=True)
class Permutation:
    """P of one layer as the kernels read it: P[h, i, j], copy h, row i, column j of W (m, n), k copies.

    kind "index": p holds P's rows, (m, k*n) of some integer dtype, p[i, h*n + j] = P[h, i, j];
    "keys": p holds the Feistel round keys (2, rounds, k*n) and P is generated; "identity": p is
    None and P[h, i, j] = i. signs: None (unsigned), or the sign keys (k*n,) int32 of signed RPP.
    """

    kind: str
    p: torch.Tensor | None
    m: int
    n: int
    k: int
    signs: torch.Tensor | None = None

    def with_rows(self, rows: torch.Tensor) -> "Permutation":
        return Permutation("index", rows, self.m, self.n, self.k, self.signs)

    def signed_identity_as_rows(self) -> "Permutation":
        """Signed identity P as stored rows i (made here, not kept), so the kernels' index path takes it: its
        copies differ by their signs, so the unsigned identity's shortcuts (tiling x @ W, summing dy) do not apply."""
        if self.kind != "identity" or self.signs is None:
            return self
        device = self.signs.device
        rows = torch.arange(self.m, dtype=index_dtype(self.m), device=device)[:, None]
        return self.with_rows(rows.expand(self.m, self.k * self.n).contiguous())

    def negative(self) -> torch.Tensor:
        """Where W_p's signs are negative, bool (m, k*n); signed P only."""
        return negative_signs(self.m, self.signs)


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype sums of gradients are added in: float32 at least (bf16 sums of k terms lose bits)."""
    return torch.promote_types(dtype, torch.float32)


@functools.lru_cache(maxsize=64)
def _columns(kn: int, n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """j for every column h*n + j of W_p; cached, since it is tiny and needed twice a step."""
    return (torch.arange(kn, device=device) % n).to(dtype)


def signed(values: torch.Tensor, perm: Permutation) -> torch.Tensor:
    """values (m, k*n) (W_p or dW_p) times their signs, a new tensor (a product with +-1 is exact); values itself
    for unsigned P."""
    if perm.signs is None:
        return values
    return values * (1 - 2 * perm.negative().to(values.dtype))


def flat_index(perm: Permutation) -> torch.Tensor:
    """Flat index into W.reshape(-1) that builds W_p (m, k*n) from P's rows: P * n + j, int32 where it fits."""
    dtype = torch.int32 if perm.m * perm.n < 2**31 else torch.int64
    # Widen first, then one in-place pass of j + n * P: an add that mixes int16 and int32 takes a slow
    # element-by-element path (3 ms instead of 0.1 ms for a million entries).
    index = perm.p.to(dtype, copy=True)
    columns = _columns(perm.k * perm.n, perm.n, dtype, perm.p.device)
    return torch.add(columns, index, alpha=perm.n, out=index).view(-1)


class EagerBackend:
    """The reference in eager PyTorch, on any device: the step's products through a whole W_p.

    Subclasses replace permuted_weight, fold and the rows of generated P by kernels, or the products themselves.
    P of kind "identity" never needs a W_p: y = (x @ W) tiled k times, and the k copies of dy are summed first.
    """

    name = "eager"
    device_types: tuple[str, ...] = ("cpu", "cuda")

    def rows(self, perm: Permutation) -> torch.Tensor:
        """P's rows (m, k*n) in an integer dtype, for P of kind "index" or "keys"."""
        return perm.p if perm.kind == "index" else self.generated_rows(perm.p, perm.m)

    def generated_rows(self, keys: torch.Tensor, m: int, inverse: bool = False) -> torch.Tensor:
        """P (or P^-1) as int32 rows (m, k*n) from the round keys."""
        return permuted_rows(m, keys, inverse)

    def permuted_weight(self, weight: torch.Tensor, perm: Permutation) -> torch.Tensor:
        """W_p (m, k*n) with W_p[i, h*n + j] = s[h, i, j] W[P[h, i, j], j] (s = 1 unsigned)."""
        perm = perm.signed_identity_as_rows()
        if perm.kind == "identity":  # cat, not repeat: below autograd, repeat returns a view, which an op must not
            return torch.cat([weight] * perm.k, dim=1)
        flat = flat_index(perm.with_rows(self.rows(perm)))
        return signed(weight.reshape(-1).index_select(0, flat).view(perm.m, -1), perm)

    def fold(self, grad_wp: torch.Tensor, perm: Permutation) -> torch.Tensor:
        """dW (m, n), float32 at least: the sum of dW_p (m, k*n) (times its signs) over the k places each entry of W
        went to."""
        accumulate = accumulate_dtype(grad_wp.dtype)
        perm = perm.signed_identity_as_rows()
        if perm.kind == "identity":
            return grad_wp.reshape(perm.m, perm.k, perm.n).sum(1, dtype=accumulate)
        if grad_wp.device.type == "cpu":  # bincount with weights: a serial scatter-add, in a fixed order
            flat = flat_index(perm.with_rows(self.rows(perm)))
            terms = signed(grad_wp.to(accumulate), perm).reshape(-1)
            return torch.bincount(flat, terms, minlength=perm.m * perm.n).view(perm.m, -1)
        return self.fold_by_gather(grad_wp, perm)  # no atomics: deterministic on a GPU

    def inverse_rows(self, perm: Permutation) -> torch.Tensor:
        """P^-1 as int32 rows (m, k*n): the row of copy h's column j that W[r, j] went to."""
        if perm.kind == "keys":
            return self.generated_rows(perm.p, perm.m, inverse=True)
        rows = self.rows(perm)
        # each column of P is a permutation, so every target is written once: deterministic
        m, kn = rows.shape
        sources = torch.arange(m, dtype=torch.int32, device=rows.device)[:, None].expand(m, kn)
        return torch.empty((m, kn), dtype=torch.int32, device=rows.device).scatter_(0, rows.long(), sources)

    def fold_by_gather(self, grad_wp: torch.Tensor, perm: Permutation) -> torch.Tensor:
        """The fold without atomics: gather each copy through P^-1, sum the k copies."""
        perm = perm.signed_identity_as_rows()
        grad_wp = signed(grad_wp, perm)  # each term of the sum with its sign
        m, n, k, kn = perm.m, perm.n, perm.k, perm.k * perm.n
        dtype = torch.int32 if m * kn < 2**31 else torch.int64
        offsets = torch.arange(kn, device=grad_wp.device, dtype=dtype).view(k, 1, n)  # h*n + j
        inverse = self.inverse_rows(perm).view(m, k, n).permute(1, 0, 2)  # (k, m, n)
        index = torch.empty((k, m, n), dtype=dtype, device=grad_wp.device)  # where W[r, j] went in copy h
        copies = grad_wp.reshape(-1).index_select(0, torch.add(offsets, inverse, alpha=kn, out=index).view(-1))
        return copies.view(k, m, n).sum(0, dtype=accumulate_dtype(grad_wp.dtype))

    def for_backward(self, perm: Permutation) -> Permutation:
        """P as the backward's two uses read it: generated P's rows, made once for both."""
        return perm.with_rows(self.rows(perm)) if perm.kind == "keys" else perm

    def matmul(self, x: torch.Tensor, weight: torch.Tensor, perm: Permutation) -> torch.Tensor:
        """y = x @ W_p (batch, k*n), in x's dtype."""
        weight = weight.to(x.dtype)
        perm = perm.signed_identity_as_rows()
        if perm.kind == "identity":
            return torch.cat([torch.mm(x, weight)] * perm.k, dim=1)
        return torch.mm(x, self.permuted_weight(weight, perm))

    def backward(self, grad_y, x, weight, perm: Permutation):
        """(dx, dW) for dy (batch, k*n): dx = dy @ W_p^T where W is given (else None), in dy's dtype; dW (m, n)
        where x is given (else None), in float32 at least."""
        perm = perm.signed_identity_as_rows()
        if perm.kind == "identity":
            summed = grad_y.reshape(-1, perm.k, perm.n).sum(1, dtype=accumulate_dtype(grad_y.dtype))  # (B, n)
            grad_x = None if weight is None else torch.mm(summed.to(grad_y.dtype), weight.to(grad_y.dtype).t())
            return grad_x, None if x is None else torch.mm(x.t().to(summed.dtype), summed)
        perm = self.for_backward(perm)
        if grad_y.device.type == "cpu":  # as the CPU default (the fused kernels) sums: the same bits with them or not
            return self.backward_by_runs(grad_y, x, weight, perm)
        return self.whole_backward(grad_y, x, weight, perm)

    def whole_backward(self, grad_y, x, weight, perm: Permutation):
        """backward through the whole W_p and dW_p: two products, and dW folded from dW_p."""
        grad_x = None if weight is None else torch.mm(grad_y, self.permuted_weight(weight.to(grad_y.dtype), perm).t())
        grad_weight = None if x is None else self.fold(torch.mm(x.t(), grad_y), perm)
        return grad_x, grad_weight

    def backward_by_runs(self, grad_y, x, weight, perm: Permutation):
        """backward summed as the fused C++ kernel sums it (csrc/cpu_kernels.cpp, fused_backward), so that the
        kernels' results and these are the same bits: W_p's columns in blocks of FUSED_BLOCK, the blocks in at most
        FUSED_RUNS runs; each run adds its blocks' products into its own dx, in block order, and folds its dW_p into
        its own columns of dW entry by entry in the order of (block, row, column); the runs' sums are then added in
        run order."""
        m, n, columns = perm.m, perm.n, perm.k * perm.n
        accumulate = accumulate_dtype(grad_y.dtype)
        blocks = -(-columns // FUSED_BLOCK)
        runs = min(FUSED_RUNS, blocks)
        starts = [min(run * blocks // runs * FUSED_BLOCK, columns) for run in range(runs + 1)]
        tiles = None if weight is None else self.permuted_weight(weight.to(grad_y.dtype), perm)
        rows = None if x is None else self.rows(perm).long()
        signs = None if perm.signs is None or x is None else 1 - 2 * perm.negative().to(accumulate)
        grad_x = grad_weight = None
        for start, end in zip(starts, starts[1:]):
            dx = dw_terms = dw_index = None
            for c0 in range(start, end, FUSED_BLOCK):
                c1 = min(c0 + FUSED_BLOCK, end)
                dy = grad_y[:, c0:c1]
                if tiles is not None:
                    product = torch.mm(dy, tiles[:, c0:c1].contiguous().t())
                    dx = product.to(accumulate) if dx is None else dx.add_(product)
                if rows is not None:  # this block's terms, row by row, and where they go among the run's columns
                    terms = torch.mm(x.t(), dy).to(accumulate)
                    if signs is not None:
                        terms = terms * signs[:, c0:c1]
                    local = (torch.arange(c0, c1) - start) % n  # column l of the run's dW holds W's (start + l) % n
                    width = min(n, end - start)
                    index = rows[:, c0:c1] * width + local
                    dw_terms = [*(dw_terms or []), terms.reshape(-1)]
                    dw_index = [*(dw_index or []), index.reshape(-1)]
            if dx is not None:
                grad_x = dx if grad_x is None else grad_x.add_(dx)
            if dw_terms is not None:  # bincount adds in the order given: (block, row, column), from 0
                width = min(n, end - start)
                part = torch.bincount(torch.cat(dw_index), torch.cat(dw_terms), minlength=m * width).view(m, width)
                columns_of_w = (torch.arange(start, start + width)) % n
                if grad_weight is None:
                    grad_weight = torch.zeros(m, n, dtype=accumulate)
                grad_weight[:, columns_of_w] += part
        return None if grad_x is None else grad_x.to(grad_y.dtype), grad_weight


class CppBackend(EagerBackend):
    """The C++ kernels on the CPU: W_p gathered and dW folded from P as stored; generated P's rows made by the
    vectorised Feistel kernel, once per backward. With `fused`, the products take W_p one block at a time."""

    device_types = ("cpu",)

    def __init__(self, module, fused: bool):
        self.module, self.fused = module, fused
        self.name = "cpu-fused" if fused else "cpu"

    def generated_rows(self, keys, m, inverse=False):
        return self.module.feistel_rows(keys.contiguous(), m, inverse)

    def permuted_weight(self, weight, perm):
        perm = perm.signed_identity_as_rows()
        if perm.kind == "keys":  # P generated inside the kernel: no index in memory
            return self.module.permuted_weight(perm.p.contiguous(), weight, perm.signs)
        if perm.kind == "index":
            return self.module.gather_weight(perm.p.contiguous(), weight, perm.signs)
        return super().permuted_weight(weight, perm)

    def fold(self, grad_wp, perm):
        perm = perm.signed_identity_as_rows()
        if perm.kind == "identity":
            return super().fold(grad_wp, perm)
        return self.module.fold_weight_grad(self.rows(perm).contiguous(), grad_wp, perm.n, perm.signs)

    def matmul(self, x, weight, perm):
        perm = perm.signed_identity_as_rows()
        if not self.fused or perm.kind == "identity":
            return super().matmul(x, weight, perm)
        p, generated = perm.p.contiguous(), perm.kind == "keys"
        return self.module.fused_matmul(x, weight.to(x.dtype), p, generated, FUSED_BLOCK, perm.signs)

    def backward(self, grad_y, x, weight, perm):
        perm = perm.signed_identity_as_rows()
        if perm.kind == "identity":
            return super().backward(grad_y, x, weight, perm)
        if not self.fused:  # materialising: the whole W_p and dW_p, dW folded by the kernel
            return self.whole_backward(grad_y, x, weight, self.for_backward(perm))
        weight = None if weight is None else weight.to(grad_y.dtype)
        p, generated = perm.p.contiguous(), perm.kind == "keys"
        grad_x, grad_weight = self.module.fused_backward(grad_y, x, weight, p, generated, perm.m, perm.n, FUSED_BLOCK,
                                                         FUSED_RUNS, perm.signs)
        return None if weight is None else grad_x, None if x is None else grad_weight


class TritonBackend(EagerBackend):
    """The Triton kernels on CUDA; P is read from the index or generated in registers, never as rows. With `fused`,
    the products gather W_p tile by tile and dW is folded from x and dy directly: no W_p, no dW_p."""

    device_types = ("cuda",)

    def __init__(self, kernels, fused: bool = False):
        self.kernels, self.fused = kernels, fused
        self.name = "triton-fused" if fused else "triton"

    def _p(self, perm: Permutation) -> dict:
        return {"keys" if perm.kind == "keys" else "index": perm.p, "signs": perm.signs}

    def permuted_weight(self, weight, perm):
        perm = perm.signed_identity_as_rows()
        if perm.kind == "identity":
            return super().permuted_weight(weight, perm)
        return self.kernels.permuted_weight(weight, perm.k, **self._p(perm))

    def fold(self, grad_wp, perm):
        perm = perm.signed_identity_as_rows()
        if perm.kind == "identity":
            return super().fold(grad_wp, perm)
        accumulate = accumulate_dtype(grad_wp.dtype)
        return self.kernels.fold_weight_grad(grad_wp, perm.n, perm.k, accumulate, **self._p(perm))

    def for_backward(self, perm):
        return perm  # the kernels read the index or the keys themselves

    def matmul(self, x, weight, perm):
        perm = perm.signed_identity_as_rows()
        if not self.fused or perm.kind == "identity":
            return super().matmul(x, weight, perm)
        return self.kernels.fused_matmul(x, weight.to(x.dtype), perm.k, **self._p(perm))

    def backward(self, grad_y, x, weight, perm):
        perm = perm.signed_identity_as_rows()
        if not self.fused or perm.kind == "identity":
            return super().backward(grad_y, x, weight, perm)
        p = self._p(perm)
        grad_x = None if weight is None else self.kernels.fused_grad_input(grad_y, weight.to(grad_y.dtype), perm.k, **p)
        if x is None:
            return grad_x, None
        accumulate = accumulate_dtype(grad_y.dtype)
        return grad_x, self.kernels.fused_grad_weight(x.to(grad_y.dtype), grad_y, perm.n, perm.k, accumulate, **p)


_BACKENDS: dict[str, EagerBackend] = {"eager": EagerBackend()}


def _triton_kernels():
    """rppnets.layers.triton_kernels where Triton is installed (CUDA builds of PyTorch), else None."""
    try:
        from rppnets.layers import triton_kernels
    except ImportError:
        return None
    return triton_kernels


def default_backend(device: torch.device | str) -> str:
    """The name of the fastest backend for a device, found once per device type (building the C++ kernels
    or importing Triton the first time): "cpu-fused", "triton", or "eager" where neither is available.

    On CUDA "triton-fused" is made too, but "triton" stays the default until the two are measured on a GPU."""
    device_type = torch.device(device).type
    if device_type == "cpu" and "cpu-fused" not in _BACKENDS:
        module = cpu_kernels.kernel()
        if module is not None:
            _BACKENDS["cpu-fused"], _BACKENDS["cpu"] = CppBackend(module, fused=True), CppBackend(module, fused=False)
    if device_type == "cuda" and "triton" not in _BACKENDS:
        kernels = _triton_kernels()
        if kernels is not None:
            _BACKENDS["triton"], _BACKENDS["triton-fused"] = TritonBackend(kernels), TritonBackend(kernels, fused=True)
    for name in {"cpu": ("cpu-fused",), "cuda": ("triton",)}.get(device_type, ()):
        if name in _BACKENDS:
            return name
    return "eager"


def get_backend(name: str, device: torch.device) -> EagerBackend:
    """The backend called `name`, checked to run on device."""
    default_backend(device)  # makes the device's backends on a first call
    backend = _BACKENDS.get(name)
    if backend is None or device.type not in backend.device_types:
        allowed = [b.name for b in _BACKENDS.values() if device.type in b.device_types]
        raise ValueError(f"backend={name!r} is invalid on {device.type}; allowed: {', '.join(map(repr, allowed))}")
    return backend
