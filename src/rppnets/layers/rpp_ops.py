"""RPP's registered torch ops (namespace rppnets): the layer's product and its backward, W_p, dW's fold and generated P.

Each op has a fake (meta) implementation, so torch.compile, export and CUDA graphs trace through
it without running it, and registered autograd where it has a gradient (all but the backward op,
which has no double backward, and the integer feistel_rows). Their implementations
run a backend of rppnets.layers.backends: the one named by `backend`, or by default the fastest for the
tensors' device, found at the op's first call on that device; so the C++ kernels are built or
loaded there, once, and never inside anything traced.

P is passed as (p, k, kind), see rppnets.layers.backends.Permutation: kind "index" with p the rows
(m, k*n), "keys" with p the round keys (2, rounds, k*n), or "identity" with p None; and signed RPP's
sign keys (k*n,) int32 as `signs` (None, the default: unsigned).
"""

import torch
from torch import Tensor

from rppnets.layers.backends import KINDS, Permutation, accumulate_dtype, default_backend, get_backend


def _backend(name: str | None, device: torch.device):
    return get_backend(name or default_backend(device), device)


def _permutation(p: Tensor | None, m: int, n: int, k: int, kind: str, signs: Tensor | None = None) -> Permutation:
    if kind not in KINDS or (p is None) != (kind == "identity"):
        raise ValueError(f"kind={kind!r} with p {'None' if p is None else 'given'} is invalid; allowed: {KINDS}")
    if signs is not None and (signs.dtype != torch.int32 or signs.shape != (k * n,)):
        raise ValueError(f"signs: expected sign keys of shape ({k * n},) and dtype int32, got {tuple(signs.shape)} "
                         f"{signs.dtype}")
    return Permutation(kind, p, m, n, k, signs)


@torch.library.custom_op("rppnets::permuted_matmul", mutates_args=())
def permuted_matmul(x: Tensor, weight: Tensor, p: Tensor | None, k: int, kind: str, backend: str | None,
                    signs: Tensor | None = None) -> Tensor:  # fmt: skip
    """y = x @ W_p (batch, k*n) in x's dtype, for x (batch, m) and W (m, n) (cast to x's dtype)."""
    m, n = weight.shape
    with torch.autocast(x.device.type, enabled=False):  # the caller chose the dtype
        return _backend(backend, x.device).matmul(x, weight, _permutation(p, m, n, k, kind, signs))


@permuted_matmul.register_fake
def _(x, weight, p, k, kind, backend, signs=None):
    return x.new_empty((x.shape[0], k * weight.shape[1]))


@torch.library.custom_op("rppnets::permuted_matmul_backward", mutates_args=())
def permuted_matmul_backward(
    grad_y: Tensor, x: Tensor | None, weight: Tensor | None, p: Tensor | None, m: int, n: int, k: int, kind: str,
    backend: str | None, signs: Tensor | None = None,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """(dx, dW) of permuted_matmul for dy (batch, k*n): dx (batch, m) in dy's dtype where W is given, dW (m, n) in
    float32 at least where x is given; each with 0 rows where not computed."""
    with torch.autocast(grad_y.device.type, enabled=False):
        grad_x, grad_weight = _backend(backend, grad_y.device).backward(
            grad_y, x, weight, _permutation(p, m, n, k, kind, signs)
        )
    if grad_x is None:
        grad_x = grad_y.new_empty((0, m))
    if grad_weight is None:
        grad_weight = grad_y.new_empty((0, n), dtype=accumulate_dtype(grad_y.dtype))
    return grad_x, grad_weight


@permuted_matmul_backward.register_fake
def _(grad_y, x, weight, p, m, n, k, kind, backend, signs=None):
    grad_x = grad_y.new_empty((grad_y.shape[0] if weight is not None else 0, m))
    return grad_x, grad_y.new_empty((m if x is not None else 0, n), dtype=accumulate_dtype(grad_y.dtype))


def _setup_matmul(ctx, inputs, output):
    x, weight, p, k, kind, backend, signs = inputs
    need_x, need_weight = ctx.needs_input_grad[:2]
    # only what the backward uses: W for dx, x for dW
    ctx.save_for_backward(x if need_weight else None, weight if need_x else None)
    ctx.p, ctx.signs = p, signs  # plain attributes, so saved-tensor hooks never see (or offload) a persistent index
    ctx.args = (weight.shape[0], weight.shape[1], k, kind, backend)
    ctx.weight_dtype = weight.dtype


def _backward_matmul(ctx, grad_y):
    x, weight = ctx.saved_tensors
    grad_x, grad_weight = permuted_matmul_backward(grad_y, x, weight, ctx.p, *ctx.args, ctx.signs)
    grad_x = grad_x if weight is not None else None
    grad_weight = grad_weight.to(ctx.weight_dtype) if x is not None else None
    return grad_x, grad_weight, None, None, None, None, None


permuted_matmul.register_autograd(_backward_matmul, setup_context=_setup_matmul)


@torch.library.custom_op("rppnets::permuted_weight", mutates_args=())
def permuted_weight(weight: Tensor, p: Tensor | None, k: int, kind: str, signs: Tensor | None = None) -> Tensor:
    """W_p (m, k*n) with W_p[i, h*n + j] = s[h, i, j] W[P[h, i, j], j] (s = 1 unsigned), for W (m, n)."""
    m, n = weight.shape
    return _backend(None, weight.device).permuted_weight(weight, _permutation(p, m, n, k, kind, signs))


@permuted_weight.register_fake
def _(weight, p, k, kind, signs=None):
    return weight.new_empty((weight.shape[0], k * weight.shape[1]))


@torch.library.custom_op("rppnets::fold_weight_grad", mutates_args=())
def fold_weight_grad(grad_wp: Tensor, p: Tensor | None, k: int, kind: str, signs: Tensor | None = None) -> Tensor:
    """dW (m, n), float32 at least: dW_p (m, k*n) (times its signs) summed over the k places each entry of W went
    to, in a fixed order."""
    m, n = grad_wp.shape[0], grad_wp.shape[1] // k
    return _backend(None, grad_wp.device).fold(grad_wp, _permutation(p, m, n, k, kind, signs))


@fold_weight_grad.register_fake
def _(grad_wp, p, k, kind, signs=None):
    return grad_wp.new_empty((grad_wp.shape[0], grad_wp.shape[1] // k), dtype=accumulate_dtype(grad_wp.dtype))


def _setup_linear_map(ctx, inputs, output):
    tensor, p, k, kind, signs = inputs
    ctx.p, ctx.k, ctx.kind, ctx.signs, ctx.dtype = p, k, kind, signs, tensor.dtype


def _backward_permuted_weight(ctx, grad_wp):  # the adjoint of the gather is the fold
    return fold_weight_grad(grad_wp, ctx.p, ctx.k, ctx.kind, ctx.signs).to(ctx.dtype), None, None, None, None


def _backward_fold(ctx, grad_w):  # and the adjoint of the fold is the gather
    return permuted_weight(grad_w, ctx.p, ctx.k, ctx.kind, ctx.signs).to(ctx.dtype), None, None, None, None


permuted_weight.register_autograd(_backward_permuted_weight, setup_context=_setup_linear_map)
fold_weight_grad.register_autograd(_backward_fold, setup_context=_setup_linear_map)


@torch.library.custom_op("rppnets::feistel_rows", mutates_args=())
def feistel_rows(keys: Tensor, m: int, inverse: bool = False) -> Tensor:
    """Generated P (or its inverse) as int32 rows (m, c) from round keys (2, rounds, c); integer, so no autograd."""
    return _backend(None, keys.device).generated_rows(keys, m, inverse)


@feistel_rows.register_fake
def _(keys, m, inverse=False):
    return keys.new_empty((m, keys.shape[2]), dtype=torch.int32)
