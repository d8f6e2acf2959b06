"""Triton kernels for RPP layers on CUDA: W_p built in one launch and dW folded in two, or the fused step without W_p.

At the sizes of this project a GPU step is bound by kernel launches, not arithmetic: eagerly, a
generated P costs hundreds of small launches and a stored one several. Here P comes either from
the layer's index (stored, shared) or from the Feistel network itself, evaluated per element in
registers (generated): the same rounds and cycle walking as rppnets.layers.permutation, in int32, so the
values are identical. The weight gradient dW[r, j] = sum over h of dW_p[P^-1_h(r), h*n + j]: one
kernel puts the k copies back in W's order, a sum over k adds them; no atomics, so deterministic.

The fused step (backend "triton-fused") never holds W_p (m, k*n) nor dW_p:
- y = x @ W_p and dx = dy @ W_p^T are tiled matrix products (tl.dot) whose W_p (or W_p^T) tile is
  gathered from W where it is used, P read from the index or generated in registers for that tile.
- dW is folded as a gather, not a scatter: dW[r, j] = sum over copies h and batch rows b of
  x[b, P^-1_h(r, j)] * dy[b, h*n + j], each program owning a tile of dW and a slice of the copies, so
  every term is added by one program in a fixed order (no atomics: deterministic, run after run);
  the slices' partial dWs (at most FOLD_SLICES of them, each m x n) are then summed in slice order.
  Generated P^-1 is computed in registers (the rounds run backwards); a stored index is inverted by
  one scatter kernel into a tensor of the index's own dtype and size (each target written once).
  Its temporaries: that inverse (index only), x^T (batch x m, for coalesced gathers), the partials.

Signed RPP: every kernel takes the sign keys (one int32 per column) and, with SIGNED, negates the entries of W_p
(and the terms of dW's fold) whose hash of (row, key) says so: rppnets.layers.permutation.negative_signs in uint32
registers, bit for bit; no sign is stored.

Imported only when a CUDA layer runs; where Triton is missing, CUDA layers run eagerly."""

import functools

import torch
import triton
import triton.language as tl

from rppnets.layers.permutation import ROUNDS, feistel_bits, round_shape

BLOCK = 1024


@triton.jit
def _round(v, keys_ptr, column, columns, shape, R: tl.constexpr, ROUNDS: tl.constexpr):
    """Round R: even rounds XOR F(low half) into the high half, odd rounds F(high half) into the low half.

    `shape` is rppnets.layers.permutation.round_shape(t)."""
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
    """The t-bit Feistel network of rppnets.layers.permutation._feistel on a block of values (no walking)."""
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
def _negative(i, c, signs_ptr, live):
    """Whether W_p's entry at row i of column c is negated: lowbias32's steps on i ^ the column's sign key, in
    uint32 (0x846CA68B is a uint32 constant to Triton), then the top bit."""
    key = tl.load(signs_ptr + c, mask=live, other=0)
    x = i.to(tl.uint32) ^ key.to(tl.uint32)
    x = x ^ (x >> 16)
    x = x * 0x7FEB352D
    x = x ^ (x >> 15)
    x = x * 0x846CA68B
    return (x >> 31) != 0


@triton.jit
def _signed(value, i, c, signs_ptr, live, SIGNED: tl.constexpr):
    """value, negated where signed RPP's sign at (i, c) is negative."""
    if SIGNED:
        value = tl.where(_negative(i, c, signs_ptr, live), -value, value)
    return value


@triton.jit
def _lanes(numel, BLOCK: tl.constexpr):
    """This program's block of flat element numbers, and which of them exist."""
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    return offsets, offsets < numel


@triton.jit
def _permuted_weight_kernel(
    w_ptr, out_ptr, index_ptr, keys_ptr, signs_ptr, m, n, columns, numel, shape,
    GENERATED: tl.constexpr, SIGNED: tl.constexpr, ROUNDS: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """out[i, c] = s w[P_c(i), c % n]: one lane per element of W_p (m, columns)."""
    offsets, live = _lanes(numel, BLOCK)
    i = (offsets // columns).to(tl.int32)
    c = (offsets % columns).to(tl.int32)
    if GENERATED:
        row = _permute(i, keys_ptr, c, columns, m, shape, live, ROUNDS, False)
    else:
        row = tl.load(index_ptr + offsets, mask=live, other=0).to(tl.int32)
    value = tl.load(w_ptr + row.to(tl.int64) * n + c % n, mask=live)
    tl.store(out_ptr + offsets, _signed(value, i, c, signs_ptr, live, SIGNED), mask=live)


@triton.jit
def _unpermute_kernel(
    g_ptr, out_ptr, index_ptr, keys_ptr, signs_ptr, m, n, columns, numel, shape,
    GENERATED: tl.constexpr, SIGNED: tl.constexpr, ROUNDS: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """out[h, r, j] = s g[P^-1_c(r), c] with c = h*n + j: each of the k copies in dW_p (m, columns) put back in W's
    order, with its signs."""
    offsets, live = _lanes(numel, BLOCK)
    if GENERATED:  # a lane per output (h, r, j): P^-1 in registers, then a gather
        j = offsets % n
        r = ((offsets // n) % m).to(tl.int32)
        c = ((offsets // (m * n)) * n + j).to(tl.int32)
        i = _permute(r, keys_ptr, c, columns, m, shape, live, ROUNDS, True)
        value = tl.load(g_ptr + i.to(tl.int64) * columns + c, mask=live)
        tl.store(out_ptr + offsets, _signed(value, i, c, signs_ptr, live, SIGNED), mask=live)
    else:  # a lane per input (i, c): P from the index, then a scatter that writes every target once
        c = offsets % columns
        row = tl.load(index_ptr + offsets, mask=live, other=0).to(tl.int64)
        target = ((c // n) * m + row) * n + c % n
        value = tl.load(g_ptr + offsets, mask=live)
        i = (offsets // columns).to(tl.int32)
        tl.store(out_ptr + target, _signed(value, i, c, signs_ptr, live, SIGNED), mask=live)


@functools.lru_cache(maxsize=64)
def _shape(m: int) -> tuple[int, ...]:
    """The round constants of an m-row network (rppnets.layers.permutation.round_shape), passed to the kernels."""
    return round_shape(feistel_bits(m))


def _sign_keys(signs: torch.Tensor | None, p: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """(the sign keys, SIGNED) as the kernels take them; unsigned, P's own tensor stands in (never read)."""
    return (p, False) if signs is None else (signs.contiguous(), True)


def _launch(kernel, source: torch.Tensor, out: torch.Tensor, n: int, columns: int, index, keys, signs) -> torch.Tensor:
    """Fills `out` with one of the kernels, one lane per element of out, reading P from `index` or `keys`."""
    m, generated = source.shape[0], index is None
    p = keys if generated else index  # the kernels read only the one that their GENERATED says
    sign_keys, signed = _sign_keys(signs, p)
    kernel[(triton.cdiv(out.numel(), BLOCK),)](
        source, out, p, p, sign_keys, m, n, columns, out.numel(), _shape(m), GENERATED=generated, SIGNED=signed,
        ROUNDS=ROUNDS, BLOCK=BLOCK,
    )  # fmt: skip
    return out


def permuted_weight(weight: torch.Tensor, k: int, index: torch.Tensor | None = None, keys: torch.Tensor | None = None,
                    signs: torch.Tensor | None = None):  # fmt: skip
    """W_p (m, k*n) from W (m, n), P read from `index` (m, k*n) or generated from `keys`; signed with sign keys."""
    weight = weight.contiguous()
    (m, n), columns = weight.shape, k * weight.shape[1]
    out = torch.empty((m, columns), dtype=weight.dtype, device=weight.device)
    return _launch(_permuted_weight_kernel, weight, out, n, columns, index, keys, signs)


def fold_weight_grad(grad_wp: torch.Tensor, n: int, k: int, accumulate: torch.dtype, index=None, keys=None,
                     signs=None):  # fmt: skip
    """dW (m, n) in `accumulate`: the k copies of dW_p (m, k*n) put back in W's order (with their signs), then summed
    over k."""
    grad_wp = grad_wp.contiguous()
    copies = torch.empty((k, grad_wp.shape[0], n), dtype=grad_wp.dtype, device=grad_wp.device)
    return _launch(_unpermute_kernel, grad_wp, copies, n, k * n, index, keys, signs).sum(0, dtype=accumulate)


# The fused step's tiles. Not measured yet (no GPU where it was written): choose by measurement, and the backend
# too (benchmarks/gpu_checks.sh bench prints "triton" and "triton-fused" side by side). tl.dot needs each >= 16.
FUSED_TILES = (64, 32, 32)  # (batch rows, output columns, reduction) of each program of the two products
FOLD_TILES = (32, 16, 16)  # (rows of dW, at most this many of its columns, batch rows per step) of the fold
FOLD_SLICES = 8  # the fold splits the k copies into at most this many slices, each summed by its own programs


@triton.jit
def _gather_wp(w_ptr, index_ptr, keys_ptr, signs_ptr, i, c, m, n, columns, shape, GENERATED: tl.constexpr,
               SIGNED: tl.constexpr, ROUNDS: tl.constexpr):  # fmt: skip
    """W_p[i, c] = s W[P_c(i), c % n] for a block of (i, c) pairs (broadcast against each other); 0 outside W_p."""
    live = (i < m) & (c < columns)
    i = tl.where(live, i, 0)  # lanes outside W_p read P and W at (0, 0): in bounds, and the walking ends
    c = tl.where(live, c, 0)
    if GENERATED:
        row = _permute(i, keys_ptr, c, columns, m, shape, live, ROUNDS, False)
    else:
        row = tl.load(index_ptr + i.to(tl.int64) * columns + c, mask=live, other=0).to(tl.int32)
    value = tl.load(w_ptr + row.to(tl.int64) * n + c % n, mask=live, other=0)
    return _signed(value, i, c, signs_ptr, live, SIGNED)


@triton.jit
def _fused_product_kernel(
    a_ptr, w_ptr, out_ptr, index_ptr, keys_ptr, signs_ptr, batch, inner, outer, m, n, columns, shape,
    TRANSPOSED: tl.constexpr, GENERATED: tl.constexpr, SIGNED: tl.constexpr, ROUNDS: tl.constexpr, ACC: tl.constexpr,
    PRECISION: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
):  # fmt: skip
    """out[b, o] = sum over q of a[b, q] * B[q, o], B = W_p (m, columns), or W_p^T with TRANSPOSED.

    One tile (BM, BN) of out per program; each tile (BK, BN) of B is gathered from W and P where tl.dot
    uses it, so W_p exists one tile at a time, in registers. Sums in ACC (float32, float64 for float64)."""
    b = tl.program_id(0) * BM + tl.arange(0, BM)
    o = tl.program_id(1) * BN + tl.arange(0, BN)
    acc = tl.zeros((BM, BN), dtype=ACC)
    for q0 in range(0, inner, BK):
        q = q0 + tl.arange(0, BK)
        a_live = (b[:, None] < batch) & (q[None, :] < inner)
        a = tl.load(a_ptr + b[:, None].to(tl.int64) * inner + q[None, :], mask=a_live, other=0)
        if TRANSPOSED:  # B[q, o] = W_p[o, q]
            i, c = o[None, :], q[:, None]
        else:
            i, c = q[:, None], o[None, :]
        tile = _gather_wp(w_ptr, index_ptr, keys_ptr, signs_ptr, i, c, m, n, columns, shape, GENERATED, SIGNED, ROUNDS)
        acc = tl.dot(a, tile, acc, input_precision=PRECISION)
    out_live = (b[:, None] < batch) & (o[None, :] < outer)
    tl.store(out_ptr + b[:, None].to(tl.int64) * outer + o[None, :], acc.to(out_ptr.dtype.element_ty), mask=out_live)


@triton.jit
def _invert_kernel(index_ptr, out_ptr, columns, numel, BLOCK: tl.constexpr):
    """out[P_c(i), c] = i: P^-1's rows from P's (m, columns), in the index's dtype; each column of P is a
    permutation, so every target is written once (deterministic)."""
    offsets, live = _lanes(numel, BLOCK)
    row = tl.load(index_ptr + offsets, mask=live, other=0).to(tl.int64)
    tl.store(out_ptr + row * columns + offsets % columns, (offsets // columns).to(out_ptr.dtype.element_ty), mask=live)


@triton.jit
def _fused_fold_kernel(
    xt_ptr, dy_ptr, out_ptr, inverse_ptr, keys_ptr, signs_ptr, batch, m, n, k, columns, copies_per_slice, shape,
    GENERATED: tl.constexpr, SIGNED: tl.constexpr, ROUNDS: tl.constexpr, ACC: tl.constexpr,
    BR: tl.constexpr, BJ: tl.constexpr, BB: tl.constexpr,
):  # fmt: skip
    """out[s, r, j] = sum over the copies h of slice s and the batch rows b of s_c(i) x[b, i] * dy[b, c], with
    i = P^-1_c(r), c = h*n + j, and s_c(i) signed RPP's sign (1 unsigned).

    One tile (BR, BJ) of dW per program and slice; x comes transposed (m, batch), so each gather reads BB
    neighbours. P^-1 is read from `inverse_ptr` (m, columns) or generated. Copies, then batch rows, in order."""
    r = tl.program_id(0) * BR + tl.arange(0, BR)
    j = tl.program_id(1) * BJ + tl.arange(0, BJ)
    s = tl.program_id(2)
    live = (r[:, None] < m) & (j[None, :] < n)  # (BR, BJ)
    rows = tl.where(live, r[:, None], 0)
    acc = tl.zeros((BR, BJ), dtype=ACC)
    for h in range(s * copies_per_slice, tl.minimum((s + 1) * copies_per_slice, k)):
        c = tl.where(live, h * n + j[None, :], 0)  # (BR, BJ): where each entry of dW went in copy h
        if GENERATED:
            i = _permute(rows, keys_ptr, c, columns, m, shape, live, ROUNDS, True)
        else:
            i = tl.load(inverse_ptr + rows.to(tl.int64) * columns + c, mask=live, other=0).to(tl.int32)
        if SIGNED:  # this copy's signs, once for all its batch rows
            sign = tl.where(_negative(i, c, signs_ptr, live), -1.0, 1.0).to(ACC)
        for b0 in range(0, batch, BB):
            b = b0 + tl.arange(0, BB)
            gather_live = live[:, :, None] & (b < batch)[None, None, :]  # (BR, BJ, BB)
            xs = tl.load(xt_ptr + i[:, :, None].to(tl.int64) * batch + b[None, None, :], mask=gather_live, other=0)
            g = tl.load(dy_ptr + b[None, None, :].to(tl.int64) * columns + c[:, :, None], mask=gather_live, other=0)
            term = tl.sum(xs.to(ACC) * g.to(ACC), axis=2)
            if SIGNED:
                term = term * sign  # exact: +-1
            acc += term
    tl.store(out_ptr + (s.to(tl.int64) * m + r[:, None]) * n + j[None, :], acc, mask=live)


def _accumulator(dtype: torch.dtype):
    """The kernels' sum dtype: float64 for float64, else float32."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def _precision() -> str:
    """tl.dot's precision for float32 operands: TF32 only where torch allows it in its own CUDA matmuls (by
    default not), so the fused products round like the cuBLAS ones of the unfused path."""
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"


def _product(a: torch.Tensor, weight: torch.Tensor, k: int, transposed: bool, index, keys, signs) -> torch.Tensor:
    """a @ W_p (transposed=False, a: (batch, m)) or a @ W_p^T (a: (batch, k*n)), in a's dtype; W in a's dtype."""
    a, weight = a.contiguous(), weight.contiguous()
    (m, n), columns, batch = weight.shape, k * weight.shape[1], a.shape[0]
    inner, outer = (columns, m) if transposed else (m, columns)
    out = torch.empty((batch, outer), dtype=a.dtype, device=a.device)
    generated = index is None
    p = keys if generated else index  # the kernel reads only the one that its GENERATED says
    sign_keys, signed = _sign_keys(signs, p)
    bm, bn, bk = FUSED_TILES
    grid = (triton.cdiv(batch, bm), triton.cdiv(outer, bn))
    _fused_product_kernel[grid](
        a, weight, out, p, p, sign_keys, batch, inner, outer, m, n, columns, _shape(m), TRANSPOSED=transposed,
        GENERATED=generated, SIGNED=signed, ROUNDS=ROUNDS, ACC=_accumulator(a.dtype), PRECISION=_precision(), BM=bm,
        BN=bn, BK=bk,
    )  # fmt: skip
    return out


def fused_matmul(x: torch.Tensor, weight: torch.Tensor, k: int, index=None, keys=None, signs=None) -> torch.Tensor:
    """y = x @ W_p (batch, k*n) in x's dtype, for x (batch, m) and W (m, n) of x's dtype, without W_p."""
    return _product(x, weight, k, False, index, keys, signs)


def fused_grad_input(grad_y: torch.Tensor, weight: torch.Tensor, k: int, index=None, keys=None,
                     signs=None) -> torch.Tensor:  # fmt: skip
    """dx = dy @ W_p^T (batch, m) in dy's dtype, for dy (batch, k*n) and W (m, n) of dy's dtype, without W_p."""
    return _product(grad_y, weight, k, True, index, keys, signs)


def inverse_index(index: torch.Tensor) -> torch.Tensor:
    """P^-1's rows (m, columns) from P's, in the index's dtype: inverse[P[i, c], c] = i."""
    index = index.contiguous()
    out = torch.empty_like(index)
    _invert_kernel[(triton.cdiv(index.numel(), BLOCK),)](index, out, index.shape[1], index.numel(), BLOCK=BLOCK)
    return out


def fused_grad_weight(x: torch.Tensor, grad_y: torch.Tensor, n: int, k: int, accumulate: torch.dtype, index=None,
                      keys=None, signs=None) -> torch.Tensor:  # fmt: skip
    """dW (m, n) in `accumulate` for x (batch, m) and dy (batch, k*n), folded as a gather through P^-1, without dW_p;
    each copy's terms with their signs where given."""
    (batch, m), columns = x.shape, k * n
    x_t, grad_y = x.t().contiguous(), grad_y.contiguous()
    generated = index is None
    p = keys if generated else inverse_index(index)
    br, max_bj, bb = FOLD_TILES
    bj = min(triton.next_power_of_2(n), max_bj)
    slices = min(k, FOLD_SLICES)
    copies_per_slice = triton.cdiv(k, slices)
    slices = triton.cdiv(k, copies_per_slice)  # no empty slice
    partial = torch.empty((slices, m, n), dtype=accumulate, device=x.device)
    sign_keys, signed = _sign_keys(signs, p)
    grid = (triton.cdiv(m, br), triton.cdiv(n, bj), slices)
    _fused_fold_kernel[grid](
        x_t, grad_y, partial, p, p, sign_keys, batch, m, n, k, columns, copies_per_slice, _shape(m),
        GENERATED=generated, SIGNED=signed, ROUNDS=ROUNDS, ACC=_accumulator(accumulate), BR=br, BJ=bj, BB=bb,
    )  # fmt: skip
    return partial[0] if slices == 1 else partial.sum(0)
