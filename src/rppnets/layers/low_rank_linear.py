"""LowRankLinear: a linear layer whose weight is the product of two thin factors, W = U V."""

import math

import torch
from torch import nn

from rppnets.checks import check_choice, check_int

BIAS_MODES = ("full", "none")


class LowRankLinear(nn.Module):
    r"""A linear layer of rank at most r: :math:`y = (x U) V + b`.

    The weight :math:`W = U V` (in_features, out_features) is never formed: the input goes through the r-wide
    factor U first, so a step costs :math:`r (m + \text{out\_features})` multiply-adds per sample instead of
    :math:`m \cdot \text{out\_features}`.

    Args:
        in_features: size m of each input sample.
        out_features: size of each output sample.
        rank: the inner width r of the factors.
        bias: ``"full"`` learns out_features biases, ``"none"`` learns none. Default: ``"full"``.

    Shape:
        - Input: :math:`(*, m)`.
        - Output: :math:`(*, \text{out\_features})`.

    Attributes:
        weight_in: the learnable factor U of shape (in_features, rank), initialised from
            :math:`\mathcal{U}(-1/\sqrt{m}, 1/\sqrt{m})`, as nn.Linear(m, r) would be.
        weight_out: the learnable factor V of shape (rank, out_features), initialised from
            :math:`\mathcal{U}(-1/\sqrt{r}, 1/\sqrt{r})`, as nn.Linear(r, out_features) would be (each factor
            is initialised like the linear layer of its own shape).
        bias: the learnable bias of shape (out_features,) for ``"full"``, None for ``"none"``; initialised from
            :math:`\mathcal{U}(-1/\sqrt{m}, 1/\sqrt{m})`.
        in_features, out_features, rank, bias_mode: the constructor's arguments.

    Example::

        >>> layer = LowRankLinear(784, 1000, rank=4)
        >>> layer(torch.randn(128, 784)).shape
        torch.Size([128, 1000])
        >>> sum(p.numel() for p in layer.parameters())  # 4 * (784 + 1000) + 1000
        8136
    """

    def __init__(self, in_features: int, out_features: int, rank: int, bias: str = "full", device=None, dtype=None):
        super().__init__()
        self.in_features = check_int("in_features", in_features, 1)
        self.out_features = check_int("out_features", out_features, 1)
        self.rank = check_int("rank", rank, 1)
        self.bias_mode = check_choice("bias", bias, BIAS_MODES)
        factory = {"device": device, "dtype": dtype}
        self.weight_in = nn.Parameter(torch.empty((self.in_features, self.rank), **factory))
        self.weight_out = nn.Parameter(torch.empty((self.rank, self.out_features), **factory))
        if self.bias_mode == "full":
            self.bias = nn.Parameter(torch.empty(self.out_features, **factory))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound_in, bound_out = 1 / math.sqrt(self.in_features), 1 / math.sqrt(self.rank)
        nn.init.uniform_(self.weight_in, -bound_in, bound_in)
        nn.init.uniform_(self.weight_out, -bound_out, bound_out)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound_in, bound_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"LowRankLinear: input has {x.shape[-1]} features, expected {self.in_features}")
        y = (x @ self.weight_in) @ self.weight_out  # (*, r) then (*, out)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
            f"bias={self.bias_mode!r}"
        )
