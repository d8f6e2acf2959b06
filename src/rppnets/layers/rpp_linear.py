"""RPPLinear: a k-times wider linear layer whose weights are k random permutations of one hidden weight."""

import copy
import math

import torch
from torch import nn

from rppnets.layers import rpp_ops
from rppnets.checks import check_choice, check_int
from rppnets.layers.permutation import (
    MAX_IN_FEATURES,
    build_index,
    negative_signs,
    random_index,
    round_keys,
    shared_index,
    sign_keys,
)

BIAS_MODES = ("full", "reuse", "none")
FEISTEL_PERMUTATIONS = ("stored", "shared", "generated")  # one P (the Feistel one) held three ways
PERMUTATIONS = FEISTEL_PERMUTATIONS + ("identity", "random")  # and two controls with other P
INITS = ("hidden_fan_in", "wide_fan_in", "glorot_hidden", "glorot_wide")  # the weight's uniform bound, see init_bounds


class RPPLinear(nn.Module):
    r"""A linear layer k times wider than its parameters: :math:`y = x W_p + b`.

    One hidden weight :math:`W` of shape (in_features, width) is trained. The layer's weight
    :math:`W_p` (in_features, k * width) holds k copies of it, each column of each copy shuffled by
    its own pseudo-random permutation P:
    :math:`W_p[i, h \cdot width + j] = W[P[h, i, j], j]`. Every entry of W appears exactly k times in W_p,
    always in its own column. P depends only on ``seed``, ``layer`` and the shape; for the three
    Feistel modes ``permutation`` only chooses how it is held (memory against speed), never which P
    it is. Two controls use other P: ``"identity"`` and ``"random"``. Signed RPP (``signs=True``)
    multiplies every entry by a pseudo-random sign, as HashedNets does:
    :math:`W_p[i, h \cdot width + j] = s[h, i, j] W[P[h, i, j], j]`, s = +-1 hashed from i and the column's
    round keys (rppnets.layers.permutation), so it too depends only on seed, layer and the shape.

    Args:
        in_features: size of each input sample (the note's m is `width`, not this), at most 2**30.
        width: number of hidden weight columns (the note's m).
        k: number of permuted copies; the output has k * width features.
        bias: ``"full"`` learns k * width biases, ``"reuse"`` learns width biases shared by the k
            copies (output h * width + j gets b[j]), ``"none"`` learns none. Default: ``"full"``.
        permutation: ``"stored"`` keeps this layer's P in a buffer (in_features * k * width entries
            of the smallest integer type); ``"shared"`` uses one P per (in_features, width, k, seed) for the whole
            process, the P of ``layer=0``; ``"generated"`` keeps no index and recomputes it in
            forward and backward. Controls: ``"identity"`` uses P[h, i, j] = i, every copy
            unpermuted (the narrow network repeated k times; no index); ``"random"`` stores truly
            random P, torch.randperm per column from a generator seeded by (seed, layer), held like
            ``"stored"``. Default: ``"stored"``.
        seed: seed of the permutation (an integer from 0 to 2**64 - 1). Default: 0.
        layer: layer number mixed into the permutation, so that layers differ. Default: 0.
        signs: ``True`` for signed RPP (above); its signs come from the Feistel keys of (seed, layer) in
            every mode (layer 0's for ``"shared"``, like its P). No parameters are added; a generated
            layer keeps nothing more, the others k * width int32 sign keys. Default: ``False``.
        init: the hidden weight's uniform bound (see :meth:`init_bounds`): ``"hidden_fan_in"`` (the
            default) and ``"wide_fan_in"``, nn.Linear's rule for nn.Linear(in_features, width) and
            nn.Linear(in_features, k * width), which give the same bound 1/sqrt(in_features), fan-in being
            in_features for both; ``"glorot_hidden"`` and
            ``"glorot_wide"``, Glorot (Xavier) uniform for shape (in_features, width) or (in_features, k * width). The bias is
            nn.Linear's U(-1/sqrt(in_features), 1/sqrt(in_features)) with every init. Default: ``"hidden_fan_in"``.

    Shape:
        - Input: :math:`(*, in\_features)`.
        - Output: :math:`(*, k \cdot width)`.

    Attributes:
        weight: the learnable hidden weight of shape (in_features, width), input-major (the
            transpose of nn.Linear's layout). Initialised by default from
            :math:`\mathcal{U}(-1/\sqrt{in\_features}, 1/\sqrt{in\_features})`, as nn.Linear(in_features,
            k * width) would be (``init``).
        bias: the learnable bias of shape (k * width,) for ``"full"``, (width,) for ``"reuse"``,
            None for ``"none"``; initialised from :math:`\mathcal{U}(-1/\sqrt{in\_features}, 1/\sqrt{in\_features})`.
        in_features, width, k, out_features (= k * width), bias_mode, permutation, seed, layer,
            signs, init: the constructor's arguments.
        index: ``"stored"`` and ``"random"`` only, a non-persistent buffer (m, k * n) with
            index[i, h*n + j] = P[h, i, j]; recomputed from seed and layer, never checkpointed.
        shared_index: ``"shared"`` only, the same tensor from the process-wide cache (a plain
            attribute, refetched when the layer moves to another device).
        keys: ``"generated"`` only, a non-persistent buffer (2, rounds, k * n) of round keys.
        sign_keys: signed and not ``"generated"`` only, a non-persistent buffer (k * n,) int32 of
            the columns' sign keys (a generated layer derives them from ``keys`` where used).
        backend: None (default) runs each step on the fastest kernels for the input's device,
            found once per device (rppnets.layers.backends.default_backend: fused C++ on the CPU, Triton
            on CUDA, else eager PyTorch); or the name of a backend of rppnets.layers.backends
            (``"cpu-fused"``, ``"cpu"``, ``"triton"``, ``"triton-fused"``, ``"eager"``) to force it.

    The step runs as two registered torch ops (rppnets.layers.rpp_ops), so ``torch.compile(model,
    fullgraph=True)`` and CUDA graphs take the layer; only the input is saved for backward.

    Example::

        >>> layer = RPPLinear(784, 10, k=100)
        >>> layer(torch.randn(128, 784)).shape
        torch.Size([128, 1000])
        >>> sum(p.numel() for p in layer.parameters())  # 784 * 10 + 1000
        8840
    """

    def __init__(
        self,
        in_features: int,
        width: int,
        k: int,
        bias: str = "full",
        permutation: str = "stored",
        seed: int = 0,
        layer: int = 0,
        device=None,
        dtype=None,
        signs: bool = False,
        init: str = "hidden_fan_in",
    ):
        super().__init__()
        self.in_features = check_int("in_features", in_features, 1, MAX_IN_FEATURES)
        self.width = check_int("width", width, 1)
        self.k = check_int("k", k, 1)
        self.bias_mode = check_choice("bias", bias, BIAS_MODES)
        self.permutation = check_choice("permutation", permutation, PERMUTATIONS)
        self.seed = check_int("seed", seed, 0, 2**64 - 1)
        self.layer = check_int("layer", layer, 0, 2**64 - 1)
        if not isinstance(signs, bool):
            raise ValueError(f"signs={signs!r} is invalid; allowed: True, False")
        self.signs = signs
        self.init = check_choice("init", init, INITS)
        self.out_features = self.k * self.width
        m, n, k = self.in_features, self.width, self.k
        factory = {"device": device, "dtype": dtype}

        self.weight = nn.Parameter(torch.empty((m, n), **factory))
        bias_size = {"full": k * n, "reuse": n, "none": 0}[self.bias_mode]
        if bias_size:
            self.bias = nn.Parameter(torch.empty(bias_size, **factory))
        else:
            self.register_parameter("bias", None)

        device = torch.device("cpu") if device is None else torch.device(device)
        if self.permutation in ("stored", "random"):
            make_index = build_index if self.permutation == "stored" else random_index
            index = make_index(m, n, k, self.seed, self.layer).to(device)
            self.register_buffer("index", index, persistent=False)
        elif self.permutation == "shared":
            # a plain attribute, not a buffer: state dicts leave it out, and _apply refetches it per device
            self.shared_index = shared_index(m, n, k, self.seed, device)
        elif self.permutation == "generated":
            keys = round_keys(self.seed, self.layer, k, n).to(device)  # (2, rounds, k*n), tiny
            self.register_buffer("keys", keys, persistent=False)
        if self.signs and self.permutation != "generated":
            # Signs hashed from these k*n keys where the kernels use them, not stored per entry: that costs the fused
            # step 0 to 5%, the most a stored bit per entry could save (experiments/rpp_layer_benchmark/), and
            # generated P must hash them anyway, so one path serves every mode.
            sign_layer = 0 if self.permutation == "shared" else self.layer  # shared: layer 0's P and signs
            keys = sign_keys(round_keys(self.seed, sign_layer, k, n)).to(device)
            self.register_buffer("sign_keys", keys, persistent=False)
        self.backend: str | None = None
        self.reset_parameters()

    def _apply(self, fn, recurse=True):
        """After .to(), .cuda() and the like, the shared index follows the weight to its device."""
        super()._apply(fn, recurse)
        device = self.weight.device
        if self.permutation == "shared" and self.shared_index.device != device:
            self.shared_index = shared_index(self.in_features, self.width, self.k, self.seed, device)
        return self

    def __deepcopy__(self, memo):
        """A copy (SWA, EMA, `copy.deepcopy`) shares the process-wide shared index instead of copying it."""
        if self.permutation == "shared":
            memo[id(self.shared_index)] = self.shared_index
        clone = self.__class__.__new__(self.__class__)
        memo[id(self)] = clone
        clone.__dict__.update({key: copy.deepcopy(value, memo) for key, value in self.__dict__.items()})
        return clone

    def init_bounds(self) -> tuple[float, float]:
        """(weight bound, bias bound) of the uniform initialisation chosen by ``init``.

        nn.Linear(in, out) draws its weight (out, in) with kaiming_uniform_(a=sqrt(5)): bound gain * sqrt(3 /
        fan_in) with gain sqrt(2 / (1 + 5)), that is 1/sqrt(fan_in), and its bias from U(+-1/sqrt(fan_in)); its
        fan-in is `in`, whatever `out` is. So the rule gives 1/sqrt(m) for the hidden layer nn.Linear(m, n)
        ("hidden_fan_in") and the wide one nn.Linear(m, k*n) ("wide_fan_in") alike. Glorot uniform bounds
        sqrt(6 / (fan_in + fan_out)): fan_out n ("glorot_hidden") or k*n ("glorot_wide"). The bias keeps
        nn.Linear's 1/sqrt(m) in every init: the ablation changes the weight alone.
        """
        m = self.in_features
        bias_bound = 1 / math.sqrt(m)
        if self.init in ("hidden_fan_in", "wide_fan_in"):
            return 1 / math.sqrt(m), bias_bound  # written as before this option, so the draws stay bit-identical
        fan_out = self.width if self.init == "glorot_hidden" else self.k * self.width
        return math.sqrt(6 / (m + fan_out)), bias_bound

    def reset_parameters(self) -> None:
        bound, bias_bound = self.init_bounds()
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bias_bound, bias_bound)

    def sign_args(self) -> torch.Tensor | None:
        """The sign keys (k*n,) int32 as the ops take them; None unsigned. A generated layer makes them from its
        round keys here, on every call (k*n integers: nothing kept)."""
        if not self.signs:
            return None
        return sign_keys(self.keys) if self.permutation == "generated" else self.sign_keys

    def sign_tensor(self) -> torch.Tensor:
        """The signs s as float32 +-1 (k, m, n) on the CPU: s[h, i, j] multiplies W_p[i, h*n + j]; all 1 unsigned."""
        m, n, k = self.in_features, self.width, self.k
        keys = self.sign_args()
        if keys is None:
            return torch.ones(k, m, n)
        negative = negative_signs(m, keys).cpu().view(m, k, n).permute(1, 0, 2)
        return 1 - 2 * negative.float()

    def index_tensor(self) -> torch.Tensor | None:
        """The permutation index this layer keeps in memory, (m, k*n); None when generated or identity."""
        if self.permutation in ("stored", "random"):
            return self.index
        return self.shared_index if self.permutation == "shared" else None

    def permutation_args(self) -> tuple[torch.Tensor | None, str]:
        """P as the ops take it (rppnets.layers.backends.Permutation): (tensor, kind)."""
        if self.permutation == "generated":
            return self.keys, "keys"
        if self.permutation == "identity":
            return None, "identity"
        return self.index_tensor(), "index"

    def permutation_tensor(self) -> torch.Tensor:
        """P as int64 (k, m, n) on the CPU: P[h, :, j] is the permutation of column j in copy h."""
        m, n, k = self.in_features, self.width, self.k
        p, kind = self.permutation_args()
        if kind == "identity":
            rows = torch.arange(m)[:, None].expand(m, k * n)
        else:
            rows = rpp_ops.feistel_rows(p, m) if kind == "keys" else p  # (m, k*n)
        return rows.long().cpu().view(m, k, n).permute(1, 0, 2).contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"RPPLinear: input has {x.shape[-1]} features, expected {self.in_features}")
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        p, kind = self.permutation_args()
        flat = x.reshape(-1, self.in_features).to(dtype)
        signs = self.sign_args()
        y = rpp_ops.permuted_matmul(flat, self.weight, p, self.k, kind, self.backend, signs)  # (batch, k*n)
        if self.bias is not None:  # in place: y is the op's own, saved by nothing, so one (batch, k*n) less
            (y.view(-1, self.k, self.width) if self.bias_mode == "reuse" else y).add_(self.bias.to(dtype))
        return y.view(*x.shape[:-1], self.out_features)  # reuse: output h*n + j got b[j]

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, width={self.width}, k={self.k}, bias={self.bias_mode!r}, "
            f"permutation={self.permutation!r}, seed={self.seed}, layer={self.layer}"
            + (", signs=True" if self.signs else "") + (f", init={self.init!r}" if self.init != INITS[0] else "")
        )


def index_storage(module: nn.Module) -> tuple[int, int]:
    """(elements, bytes) of the distinct permutation indices kept by the RPPLinear layers in module.

    An index shared by several layers counts once; generated and identity layers keep none.
    """
    seen, elements, nbytes = set(), 0, 0
    for layer in module.modules():
        index = layer.index_tensor() if isinstance(layer, RPPLinear) else None
        if index is None:
            continue
        key = (index.device, index.untyped_storage().data_ptr())
        if key not in seen:
            seen.add(key)
            elements += index.numel()
            nbytes += index.numel() * index.element_size()
    return elements, nbytes
