"""Where an RPP layer's P comes from in a step, and the two things a step does with it: build W_p, fold dW_p into dW.

Each runs on the fastest path for its device:
- CPU: the C++ kernels (rppnets.cpu_kernels) gather W_p and fold dW (a serial, deterministic
  scatter-add in torch.bincount's order) reading P as stored; generated P comes from the same
  extension, which builds W_p in the forward with no index in memory. Without a compiler: eager
  `index_select` and `bincount` through the flat index P*n + j, with the same results.
- CUDA with Triton: one kernel builds W_p, reading P from the index or generating it in registers;
  one kernel puts the k copies of dW_p back in W's order and a sum adds them. No atomics.
- CUDA without Triton: eager ops (gather through P^-1 and a sum over k for the fold).
"""

import functools

import torch

from rppnets import cpu_kernels
from rppnets.permutation import permuted_rows


@functools.cache
def _triton():
    """rppnets.triton_kernels where Triton is installed (CUDA builds of PyTorch), else None."""
    try:
        from rppnets import triton_kernels
    except ImportError:
        return None
    return triton_kernels


@functools.lru_cache(maxsize=64)
def _columns(kn: int, n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """j for every output column h*n + j; cached, since it is tiny and needed twice a step."""
    return (torch.arange(kn, device=device) % n).to(dtype)


class IndexSource:
    """The P of one layer during one forward and backward.

    Subclasses give `rows()`, P as (m, k*n) (P[i, h*n + j] = P[h, i, j]) in some integer dtype,
    `inverse_rows()`, the inverse permutations in the same layout, and `_kernel_args()`, how the
    Triton kernels read P. Stored on the autograd ctx as a plain object, so saved-tensor hooks do
    not see (or offload) a persistent index.
    """

    rows_are_fresh = False  # whether rows() returns a new tensor that callers may overwrite

    def __init__(self, m: int, n: int, k: int, device: torch.device):
        self.m, self.n, self.k, self.device = m, n, k, device

    def _triton(self):
        return _triton() if self.device.type == "cuda" else None

    def backward_rows(self) -> torch.Tensor | None:
        """P's rows for a CPU backward, made once for both W_p and the fold; None on CUDA (the kernels read P)."""
        return self.rows() if self.device.type == "cpu" else None

    def gather_index(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Flat index into W.reshape(-1) that builds W_p (m, k*n): P * n + j, int32 where it fits."""
        dtype = torch.int32 if self.m * self.n < 2**31 else torch.int64
        fresh = rows is None and self.rows_are_fresh
        rows = self.rows() if rows is None else rows
        # Widen first, then one in-place pass of j + n * P: an add that mixes int16 and int32 takes a slow
        # element-by-element path (3 ms instead of 0.1 ms for a million entries).
        index = rows if fresh and rows.dtype == dtype else rows.to(dtype, copy=True)
        columns = _columns(self.k * self.n, self.n, dtype, self.device)
        return torch.add(columns, index, alpha=self.n, out=index).view(-1)

    def inverse_index(self) -> torch.Tensor:
        """Flat index into dW_p.reshape(-1), shape (k, m, n): entry [h, r, j] is where W[r, j] went in copy h."""
        kn = self.k * self.n
        dtype = torch.int32 if self.m * kn < 2**31 else torch.int64
        offsets = torch.arange(kn, device=self.device, dtype=dtype).view(self.k, 1, self.n)  # h*n + j
        inverse = self.inverse_rows().view(self.m, self.k, self.n).permute(1, 0, 2)  # (k, m, n)
        out = torch.empty((self.k, self.m, self.n), dtype=dtype, device=self.device)
        return torch.add(offsets, inverse, alpha=kn, out=out)

    def permuted_weight(self, weight: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """W_p (m, k*n) with W_p[i, h*n + j] = W[P[h, i, j], j]; `rows`: P's rows if already made."""
        kernels = self._triton()
        if kernels is not None:
            return kernels.permuted_weight(weight, self.k, **self._kernel_args())
        if self.device.type == "cpu":
            rows = self.rows() if rows is None else rows  # made once, for the kernel or for the fallback
            wp = cpu_kernels.gather_weight(rows, weight)
            if wp is not None:
                return wp
        return weight.reshape(-1).index_select(0, self.gather_index(rows)).view(self.m, -1)

    def fold_weight_grad(self, grad_wp: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """dW (m, n): the sum of dW_p (m, k*n) over the k places each entry of W went to, in a fixed order.

        Summed in float32 at least (bf16 sums of k terms lose bits); the caller casts to W's dtype.
        """
        accumulate = torch.promote_types(grad_wp.dtype, torch.float32)
        if self.device.type == "cpu":
            rows = self.rows() if rows is None else rows
            folded = cpu_kernels.fold_weight_grad(rows, grad_wp, self.n)
            if folded is not None:
                return folded
            # bincount with weights is the same serial scatter-add, eagerly, through the flat index
            weights = grad_wp.reshape(-1).to(accumulate)
            return torch.bincount(self.gather_index(rows), weights, minlength=self.m * self.n).view(self.m, -1)
        kernels = self._triton()
        if kernels is not None:
            return kernels.fold_weight_grad(grad_wp, self.n, self.k, accumulate, **self._kernel_args())
        return self.fold_by_gather(grad_wp, accumulate)

    def fold_by_gather(self, grad_wp: torch.Tensor, accumulate: torch.dtype) -> torch.Tensor:
        """The fold without atomics, eagerly: gather each copy through P^-1, sum the k copies."""
        copies = grad_wp.reshape(-1).index_select(0, self.inverse_index().view(-1))
        return copies.view(self.k, self.m, self.n).sum(0, dtype=accumulate)


class StoredIndex(IndexSource):
    """A P tensor kept in memory (a layer's buffer, or the shared cache's entry)."""

    def __init__(self, index: torch.Tensor, n: int, k: int):
        super().__init__(index.shape[0], n, k, index.device)
        self.index = index

    def rows(self) -> torch.Tensor:
        return self.index

    def inverse_rows(self) -> torch.Tensor:
        # each column of P is a permutation, so every target is written once: deterministic
        m, kn = self.index.shape
        sources = torch.arange(m, dtype=torch.int32, device=self.device)[:, None].expand(m, kn)
        return torch.empty((m, kn), dtype=torch.int32, device=self.device).scatter_(0, self.index.long(), sources)

    def _kernel_args(self) -> dict:
        return {"index": self.index}


class GeneratedIndex(IndexSource):
    """P recomputed from the round keys whenever it is needed; nothing of size m*k*n is kept.

    On the CPU the compiled kernel (rppnets.cpu_kernels) computes it, and builds W_p with it directly.
    """

    rows_are_fresh = True

    def __init__(self, m: int, n: int, k: int, keys: torch.Tensor):
        super().__init__(m, n, k, keys.device)
        self.keys = keys

    def _compiled(self, inverse: bool = False) -> torch.Tensor | None:
        return cpu_kernels.feistel_rows(self.keys, self.m, inverse) if self.device.type == "cpu" else None

    def rows(self) -> torch.Tensor:
        rows = self._compiled()
        return permuted_rows(self.m, self.keys) if rows is None else rows

    def inverse_rows(self) -> torch.Tensor:
        rows = self._compiled(inverse=True)
        return permuted_rows(self.m, self.keys, inverse=True) if rows is None else rows

    def permuted_weight(self, weight: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        fused = cpu_kernels.permuted_weight(self.keys, weight) if rows is None and self.device.type == "cpu" else None
        return super().permuted_weight(weight, rows) if fused is None else fused

    def _kernel_args(self) -> dict:
        return {"keys": self.keys}


class IdentityIndex(IndexSource):
    """P[h, i, j] = i (the ``"identity"`` control): W_p is W tiled k times, dW the sum of dW_p's k copies; no index."""

    rows_are_fresh = True

    def rows(self) -> torch.Tensor:
        return torch.arange(self.m, dtype=torch.int32, device=self.device)[:, None].repeat(1, self.k * self.n)

    def inverse_rows(self) -> torch.Tensor:
        return self.rows()

    def backward_rows(self) -> None:
        return None  # neither the tiling nor the sum reads P

    def permuted_weight(self, weight: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        return weight.repeat(1, self.k)  # (m, k*n)

    def fold_weight_grad(self, grad_wp: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        accumulate = torch.promote_types(grad_wp.dtype, torch.float32)
        return grad_wp.view(self.m, self.k, self.n).sum(1, dtype=accumulate)
