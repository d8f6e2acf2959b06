"""Triton kernels for RPP layers on CUDA: W_p built in one launch, dW folded in two.

At the sizes of this project a GPU step is bound by kernel launches, not arithmetic: eagerly, a
generated P costs hundreds of small launches and a stored one several. Here P comes either from
the layer's index (stored, shared) or from the Feistel network itself, evaluated per element in
registers (generated): the same rounds and cycle walking as rppnets.permutation, in int32, so the
values are identical. The weight gradient dW[r, j] = sum over h of dW_p[P^-1_h(r), h*n + j]: one
kernel puts the k copies back in W's order, a sum over k adds them; no atomics, so deterministic.

Imported only when a CUDA layer runs; where Triton is missing, CUDA layers run eagerly."""

import functools

import torch
import triton
import triton.language as tl

from rppnets.permutation import ROUNDS, feistel_bits, round_shape

BLOCK = 1024


@triton.jit
def _round(v, keys_ptr, column, columns, shape, R: tl.constexpr, ROUNDS: tl.constexpr):
    """Round R: even rounds XOR F(low half) into the high half, odd rounds F(high half) into the low half.

    `shape` is rppnets.permutation.round_shape(t)."""
    b, low, keep_even, left_even, right_even, keep_odd, left_odd, right_odd = shape
    add = tl.load(keys_ptr + R * columns + column)
    mul = tl.load(keys_ptr + (ROUNDS + R) * columns + column)
    if R % 2 == 0:
        f = ((v & low) * mul + add) & keep_even  # below 2**31: half < 2**15, mul and add < 2**16
        v = v ^ ((f << left_even) >> right_even)
    else:
        f = ((v >> b) * mul + add) & keep_odd
        v = v ^ ((f << left_odd) >> right_odd)
    return v


@triton.jit
def _feistel(v, keys_ptr, column, columns, shape, ROUNDS: tl.constexpr, INVERSE: tl.constexpr):
    """The t-bit Feistel network of rppnets.permutation._feistel on a block of values (no walking)."""
    if INVERSE:  # each round is its own inverse: run them backwards
        for step in tl.static_range(ROUNDS):
            v = _round(v, keys_ptr, column, columns, shape, ROUNDS - 1 - step, ROUNDS)
    else:
        for step in tl.static_range(ROUNDS):
            v = _round(v, keys_ptr, column, columns, shape, step, ROUNDS)
    return v


@triton.jit
def _permute(x, keys_ptr, column, columns, m, shape, live, ROUNDS: tl.constexpr, INVERSE: tl.constexpr):
    """P (or P^-1) of x < m for the given columns: Feistel rounds, then cycle walking until below m."""
    y = _feistel(x, keys_ptr, column, columns, shape, ROUNDS, INVERSE)
    while tl.max(tl.where(live & (y >= m), 1, 0)) > 0:
        y = tl.where(y >= m, _feistel(y, keys_ptr, column, columns, shape, ROUNDS, INVERSE), y)
    return y


@triton.jit
def _lanes(numel, BLOCK: tl.constexpr):
    """This program's block of flat element numbers, and which of them exist."""
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    return offsets, offsets < numel


@triton.jit
def _permuted_weight_kernel(
    w_ptr, out_ptr, index_ptr, keys_ptr, m, n, columns, numel, shape,
    GENERATED: tl.constexpr, ROUNDS: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """out[i, c] = w[P_c(i), c % n]: one lane per element of W_p (m, columns)."""
    offsets, live = _lanes(numel, BLOCK)
    i = (offsets // columns).to(tl.int32)
    c = (offsets % columns).to(tl.int32)
    if GENERATED:
        row = _permute(i, keys_ptr, c, columns, m, shape, live, ROUNDS, False)
    else:
        row = tl.load(index_ptr + offsets, mask=live, other=0).to(tl.int32)
    value = tl.load(w_ptr + row.to(tl.int64) * n + c % n, mask=live)
    tl.store(out_ptr + offsets, value, mask=live)


@triton.jit
def _unpermute_kernel(
    g_ptr, out_ptr, index_ptr, keys_ptr, m, n, columns, numel, shape,
    GENERATED: tl.constexpr, ROUNDS: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """out[h, r, j] = g[P^-1_c(r), c] with c = h*n + j: each of the k copies in dW_p (m, columns) put back in W's order."""
    offsets, live = _lanes(numel, BLOCK)
    if GENERATED:  # a lane per output (h, r, j): P^-1 in registers, then a gather
        j = offsets % n
        r = ((offsets // n) % m).to(tl.int32)
        c = ((offsets // (m * n)) * n + j).to(tl.int32)
        i = _permute(r, keys_ptr, c, columns, m, shape, live, ROUNDS, True)
        tl.store(out_ptr + offsets, tl.load(g_ptr + i.to(tl.int64) * columns + c, mask=live), mask=live)
    else:  # a lane per input (i, c): P from the index, then a scatter that writes every target once
        c = offsets % columns
        row = tl.load(index_ptr + offsets, mask=live, other=0).to(tl.int64)
        target = ((c // n) * m + row) * n + c % n
        tl.store(out_ptr + target, tl.load(g_ptr + offsets, mask=live), mask=live)


@functools.lru_cache(maxsize=64)
def _shape(m: int) -> tuple[int, ...]:
    """The round constants of an m-row network (rppnets.permutation.round_shape), passed to the kernels."""
    return round_shape(feistel_bits(m))


def _launch(kernel, source: torch.Tensor, out: torch.Tensor, n: int, columns: int, index, keys) -> torch.Tensor:
    """Fills `out` with one of the kernels, one lane per element of out, reading P from `index` or `keys`."""
    m, generated = source.shape[0], index is None
    p = keys if generated else index  # the kernels read only the one that their GENERATED says
    kernel[(triton.cdiv(out.numel(), BLOCK),)](
        source, out, p, p, m, n, columns, out.numel(), _shape(m), GENERATED=generated, ROUNDS=ROUNDS, BLOCK=BLOCK
    )
    return out


def permuted_weight(weight: torch.Tensor, k: int, index: torch.Tensor | None = None, keys: torch.Tensor | None = None):
    """W_p (m, k*n) from W (m, n), P read from `index` (m, k*n) or generated from `keys`."""
    weight = weight.contiguous()
    (m, n), columns = weight.shape, k * weight.shape[1]
    out = torch.empty((m, columns), dtype=weight.dtype, device=weight.device)
    return _launch(_permuted_weight_kernel, weight, out, n, columns, index, keys)


def fold_weight_grad(grad_wp: torch.Tensor, n: int, k: int, accumulate: torch.dtype, index=None, keys=None):
    """dW (m, n) in `accumulate`: the k copies of dW_p (m, k*n) put back in W's order, then summed over k."""
    grad_wp = grad_wp.contiguous()
    copies = torch.empty((k, grad_wp.shape[0], n), dtype=grad_wp.dtype, device=grad_wp.device)
    return _launch(_unpermute_kernel, grad_wp, copies, n, k * n, index, keys).sum(0, dtype=accumulate)
