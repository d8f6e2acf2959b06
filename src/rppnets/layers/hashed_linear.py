"""HashedLinear: a linear layer whose virtual weight entries are signed, hashed copies of a few trained weights."""

import math

import torch
from torch import nn

from rppnets.checks import check_choice, check_int

BIAS_MODES = ("full", "none")
MAX_BUCKETS = 2**30  # the signed bucket 0..2K-1 comes from 32 hash bits by a multiply-shift

_MASK64 = (1 << 64) - 1
_GAMMA = 0x9E3779B97F4A7C15  # splitmix64's increment
_MIX1, _MIX2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB  # splitmix64's finaliser constants


def _int64(value: int) -> int:
    """The unsigned 64-bit `value` as the signed int64 with the same bits (what a torch scalar must be)."""
    return value - (1 << 64) if value >= 1 << 63 else value


def mix64(value: int) -> int:
    """splitmix64's finaliser on a Python integer, modulo 2**64."""
    z = value & _MASK64
    z = ((z ^ (z >> 30)) * _MIX1) & _MASK64
    z = ((z ^ (z >> 27)) * _MIX2) & _MASK64
    return z ^ (z >> 31)


def layer_salt(seed: int, layer: int) -> int:
    """The 64-bit start of the hash stream of one layer."""
    return mix64(mix64(seed) ^ layer)


def _xor_shift_right(z: torch.Tensor, shift: int, scratch: torch.Tensor) -> None:
    """z ^= z >> shift as unsigned 64-bit (torch's int64 shift is arithmetic: mask the copied sign bits)."""
    torch.bitwise_right_shift(z, shift, out=scratch)
    scratch.bitwise_and_((1 << (64 - shift)) - 1)
    z.bitwise_xor_(scratch)


def signed_buckets(salt: int, numel: int, buckets: int, device=None) -> torch.Tensor:
    """For entries e = 0..numel-1, s(e) * bucket(e) coded as one int64 in [0, 2K): bucket + K if the sign is -1.

    The hash of entry e is splitmix64's output number e + 1 from state `salt`; its top 32 bits, u, give
    floor(u * 2K / 2**32), uniform over the K buckets times the two signs. A registered op (rppnets::signed_buckets):
    torch.compile calls it as it is instead of compiling its wrapping int64 arithmetic: Inductor's CPU code for it,
    at one thread, crashed the process (a segfault; the cause inside Inductor was not pinned down).
    """
    return _signed_buckets(_int64(salt), numel, buckets, torch.device("cpu" if device is None else device))


@torch.library.custom_op("rppnets::signed_buckets", mutates_args=())
def _signed_buckets(salt: int, numel: int, buckets: int, device: torch.device) -> torch.Tensor:
    """signed_buckets with `salt` as a signed int64. Vectorised int64 ops whose products wrap modulo 2**64 (two's
    complement), in place to keep the transient memory at two int64 per entry."""
    z = torch.arange(1, numel + 1, dtype=torch.int64, device=device)
    z.mul_(_int64(_GAMMA)).add_(salt)  # wraps modulo 2**64
    scratch = torch.empty_like(z)
    _xor_shift_right(z, 30, scratch)
    z.mul_(_int64(_MIX1))
    _xor_shift_right(z, 27, scratch)
    z.mul_(_int64(_MIX2))
    _xor_shift_right(z, 31, scratch)
    torch.bitwise_right_shift(z, 32, out=scratch)
    return scratch.bitwise_and_(0xFFFFFFFF).mul_(2 * buckets).bitwise_right_shift_(32)  # < 2**31 * 2**32: no wrap


@_signed_buckets.register_fake
def _(salt, numel, buckets, device):
    return torch.empty(numel, dtype=torch.int64, device=device)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype of the matmuls: autocast's when it is on (a custom Function is not autocast by itself)."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


def _virtual_weight(weight: torch.Tensor, signed: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """V (in_features, out_features) with V[i, j] = s(i, j) * weight[h(i, j)], from the signed buckets."""
    return torch.cat([weight, -weight]).take(signed).view(shape)  # one gather, sign included


def _fold(grad_v: torch.Tensor, signed: torch.Tensor, buckets: int) -> torch.Tensor:
    """dL/dw from dL/dV: w[b] gets the sum of s(i, j) * dV[i, j] over the entries hashed into bucket b."""
    total = torch.zeros(2 * buckets, dtype=grad_v.dtype, device=grad_v.device).index_add_(0, signed, grad_v.flatten())
    return total[:buckets] - total[buckets:]


class HashedFunction(torch.autograd.Function):
    """y = x @ V + b, with V[i, j] = s(i, j) * w[h(i, j)] hashed in forward and again in backward (never kept)."""

    @staticmethod
    def forward(ctx, x, weight, bias, salt: int, out_features: int):
        dtype = _compute_dtype(x)
        need_x, need_weight = ctx.needs_input_grad[:2]
        ctx.save_for_backward(x if need_weight else None, weight if need_x else None)
        ctx.salt, ctx.shape, ctx.buckets, ctx.dtype = salt, (x.shape[1], out_features), weight.numel(), dtype
        ctx.dtypes = (x.dtype, weight.dtype, None if bias is None else bias.dtype)
        signed = signed_buckets(salt, x.shape[1] * out_features, weight.numel(), weight.device)
        v = _virtual_weight(weight.to(dtype), signed, ctx.shape)  # (m, out)
        del signed  # transient: backward hashes again
        if bias is None:
            return torch.mm(x.to(dtype), v)
        return torch.addmm(bias.to(dtype), x.to(dtype), v)

    @staticmethod
    def backward(ctx, grad_y):
        x, weight = ctx.saved_tensors
        x_dtype, weight_dtype, bias_dtype = ctx.dtypes
        need_x, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad_y = grad_y.to(ctx.dtype)
        grad_x = grad_weight = grad_bias = None
        # one hash of every entry serves both the rebuilt V and the weight-gradient fold
        signed = signed_buckets(ctx.salt, ctx.shape[0] * ctx.shape[1], ctx.buckets, grad_y.device) \
            if need_x or need_weight else None
        if need_x:
            v = _virtual_weight(weight.to(ctx.dtype), signed, ctx.shape)
            grad_x = torch.mm(grad_y, v.t()).to(x_dtype)
        if need_weight:
            grad_v = torch.mm(x.to(ctx.dtype).t(), grad_y)  # (m, out)
            grad_weight = _fold(grad_v, signed, ctx.buckets).to(weight_dtype)
        if need_bias:
            grad_bias = grad_y.sum(0).to(bias_dtype)
        return grad_x, grad_weight, grad_bias, None, None


class HashedLinear(nn.Module):
    r"""A linear layer whose weights are hashed into a few shared buckets (HashedNets, Chen et al., 2015).

    The layer computes :math:`y = x V + b` with a virtual weight :math:`V` (in_features, out_features) whose
    entries are :math:`V[i, j] = s(i, j)\, w[h(i, j)]`: h hashes each entry into one of K trained weights
    ``w`` and s is a hashed sign, ±1, so that entries sharing a bucket are not all positively correlated.
    h and s are a splitmix64 hash of (seed, layer, i * out_features + j), computed in forward and again in
    backward; nothing of size in_features x out_features is kept between steps. The weight gradient of a
    bucket is the sum of :math:`s(i, j)\, \partial L / \partial V[i, j]` over its entries.

    Args:
        in_features: size m of each input sample.
        out_features: size of each output sample (the virtual width).
        buckets: number K of trained weights, at most 2**30.
        bias: ``"full"`` learns out_features biases, ``"none"`` learns none. Default: ``"full"``.
        seed: seed of the hash (an integer from 0 to 2**64 - 1). Default: 0.
        layer: layer number mixed into the hash, so that layers differ. Default: 0.

    Shape:
        - Input: :math:`(*, m)`.
        - Output: :math:`(*, \text{out\_features})`.

    Attributes:
        weight: the K learnable bucket weights, shape (buckets,). Initialised from
            :math:`\mathcal{U}(-1/\sqrt{m}, 1/\sqrt{m})`, so that V's entries are distributed as those of
            nn.Linear(m, out_features).
        bias: the learnable bias of shape (out_features,) for ``"full"``, None for ``"none"``; initialised
            like the weight.
        in_features, out_features, buckets, bias_mode, seed, layer: the constructor's arguments.
        salt: the 64-bit start of this layer's hash stream, from seed and layer (a plain integer).

    Example::

        >>> layer = HashedLinear(784, 1000, buckets=7840)
        >>> layer(torch.randn(128, 784)).shape
        torch.Size([128, 1000])
        >>> sum(p.numel() for p in layer.parameters())  # 7840 + 1000
        8840
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        buckets: int,
        bias: str = "full",
        seed: int = 0,
        layer: int = 0,
        device=None,
        dtype=None,
    ):
        super().__init__()
        self.in_features = check_int("in_features", in_features, 1)
        self.out_features = check_int("out_features", out_features, 1)
        self.buckets = check_int("buckets", buckets, 1, MAX_BUCKETS)
        self.bias_mode = check_choice("bias", bias, BIAS_MODES)
        self.seed = check_int("seed", seed, 0, 2**64 - 1)
        self.layer = check_int("layer", layer, 0, 2**64 - 1)
        self.salt = layer_salt(self.seed, self.layer)
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(self.buckets, **factory))
        if self.bias_mode == "full":
            self.bias = nn.Parameter(torch.empty(self.out_features, **factory))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1 / math.sqrt(self.in_features)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def virtual_weight(self) -> torch.Tensor:
        """V (in_features, out_features), built from the buckets (differentiable; for inspection and tests)."""
        signed = signed_buckets(self.salt, self.in_features * self.out_features, self.buckets, self.weight.device)
        return _virtual_weight(self.weight, signed, (self.in_features, self.out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"HashedLinear: input has {x.shape[-1]} features, expected {self.in_features}")
        y = HashedFunction.apply(x.reshape(-1, self.in_features), self.weight, self.bias, self.salt,
                                 self.out_features)
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, buckets={self.buckets}, "
            f"bias={self.bias_mode!r}, seed={self.seed}, layer={self.layer}"
        )
