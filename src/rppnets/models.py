"""The MLPs of the experiments: dense, RPP, HashedNets or low-rank hidden layers with ReLU, and a dense output layer."""

from torch import nn

from rppnets.checks import check_choice, check_int

KINDS = ("dense", "rpp", "hashed", "lowrank", "dense_matched")
# RPPLinear's inits (rppnets.layers.rpp_linear.INITS, the first the default), here so that dense MLPs import no layer
RPP_INITS = ("hidden_fan_in", "wide_fan_in", "glorot_hidden", "glorot_wide")
BOOLEAN_BIAS = {True: "full", False: "none"}  # also accepted: true/false as older dense configs wrote them


class MLP(nn.Sequential):
    """Flatten, `depth` hidden layers with ReLU, dense output layer.

    ``"rpp"``, ``"hashed"`` and ``"lowrank"`` layers are k * width wide and hold the trainable weights of an RPP
    layer of that ``width`` (fan_in * width), so that the three cost the same budget:

    - ``"rpp"``: ``RPPLinear(fan_in, width, k)``, a hidden weight (fan_in, width) permuted into k copies;
    - ``"hashed"``: ``HashedLinear(fan_in, k * width, buckets=fan_in * width)``, the HashedNets layer;
    - ``"lowrank"``: ``LowRankLinear(fan_in, k * width, rank)`` with the rank from :func:`lowrank_rank`, rounded
      down, so its count may fall below the RPP layer's (``model/params_trainable`` logs the actual count);
    - ``"dense"``: ``nn.Linear(fan_in, width)``, k ignored;
    - ``"dense_matched"``: dense layers of the width from :func:`matched_dense_width`: the dense MLP whose
      trainable count is closest to that of the RPP MLP with this width, k, depth and bias.

    Args:
        kind: one of ``"dense"``, ``"rpp"``, ``"hashed"``, ``"lowrank"``, ``"dense_matched"``.
        width: the hidden width (the note's m; see above).
        depth: number of hidden layers; 0 gives multinomial logistic regression.
        bias: biases of the hidden layers: ``"full"`` (one per output) or ``"none"``, for every kind; RPP also
            ``"reuse"`` (see ``RPPLinear``). ``True``/``False`` mean ``"full"``/``"none"``. The output layer always
            has a bias.
        k: widening factor of rpp, hashed, lowrank and dense_matched (ignored for dense).
        permutation: RPP permutation source (see ``RPPLinear``).
        signs: signed RPP (``RPPLinear(signs=True)``): each entry of W_p times a pseudo-random sign; adds no
            parameters. RPP only: ``True`` with another kind is refused.
        init: the RPP hidden weight's initialisation (``RPPLinear``'s ``init``): ``"hidden_fan_in"`` (default),
            ``"wide_fan_in"``, ``"glorot_hidden"`` or ``"glorot_wide"``. RPP only, like ``signs``.
        seed: RPP permutation and hash seed; hidden layer l uses (seed, layer=l).
        in_features, num_classes: input size and number of classes, given by the data set in a run (784 and 10
            for Fashion-MNIST, the defaults).

    Example::

        >>> MLP(kind="rpp", width=10, k=100, depth=2, bias="full")(torch.rand(5, 28, 28)).shape
        torch.Size([5, 10])
    """

    def __init__(self, kind: str = "dense", width: int = 1000, depth: int = 2, bias: str = "full", k: int = 1,
                 permutation: str = "stored", seed: int = 0, in_features: int = 784, num_classes: int = 10,
                 signs: bool = False, init: str = "hidden_fan_in"):
        kind = check_choice("kind", kind, KINDS)
        if not isinstance(signs, bool) or (signs and kind != "rpp"):
            allowed = "True, False" if kind == "rpp" else f"False (signs are RPP's; kind={kind!r})"
            raise ValueError(f"signs={signs!r} is invalid; allowed: {allowed}")
        check_choice("init", init, RPP_INITS if kind == "rpp" else RPP_INITS[:1])
        width = check_int("width", width, 1)
        depth = check_int("depth", depth, 0)
        k = check_int("k", k, 1)
        in_features = check_int("in_features", in_features, 1)
        num_classes = check_int("num_classes", num_classes, 1)
        bias = BOOLEAN_BIAS[bias] if isinstance(bias, bool) else bias
        if kind in ("dense", "dense_matched"):
            check_choice("bias", bias, ("full", "none"))
        if kind == "dense_matched" and depth > 0:
            kind, width = "dense", matched_dense_width(k, width, depth, in_features, num_classes, bias == "full")
        layers: list[nn.Module] = [nn.Flatten()]
        fan_in = in_features
        for layer in range(depth):
            hidden = _hidden_layer(kind, fan_in, width, k, bias, permutation, seed, layer, signs, init)
            layers += [hidden, nn.ReLU()]
            fan_in = hidden.out_features
        layers.append(nn.Linear(fan_in, num_classes))
        super().__init__(*layers)


def _hidden_layer(kind, fan_in, width, k, bias, permutation, seed, layer, signs, init) -> nn.Module:
    # imported here: plain-PyTorch users of dense MLPs never need the other layers
    if kind in ("dense", "dense_matched"):
        return nn.Linear(fan_in, width, bias=bias == "full")
    if kind == "rpp":
        from rppnets.layers.rpp_linear import RPPLinear

        return RPPLinear(fan_in, width, k, bias=bias, permutation=permutation, seed=seed, layer=layer, signs=signs,
                         init=init)
    if kind == "hashed":
        from rppnets.layers.hashed_linear import HashedLinear

        return HashedLinear(fan_in, k * width, buckets=fan_in * width, bias=bias, seed=seed, layer=layer)
    from rppnets.layers.low_rank_linear import LowRankLinear

    return LowRankLinear(fan_in, k * width, rank=lowrank_rank(fan_in, k * width, fan_in * width), bias=bias)


def lowrank_rank(in_features: int, out_features: int, budget: int) -> int:
    """The largest rank r >= 1 with r * (in_features + out_features) <= budget (1 if even rank 1 exceeds it)."""
    return max(1, budget // (in_features + out_features))


def rpp_trainable(k: int, width: int, depth: int = 2, in_features: int = 784, num_classes: int = 10,
                  bias: str = "full") -> int:
    """Trainable parameters of ``MLP(kind="rpp", width=width, k=k, depth=depth, bias=bias)``, by formula; signed or
    not, whatever the init (signs add no parameters)."""
    total, fan_in = 0, in_features
    for _ in range(depth):
        total += fan_in * width + {"full": k * width, "reuse": width, "none": 0}[bias]
        fan_in = k * width
    return total + fan_in * num_classes + num_classes


def dense_trainable(width: int, depth: int = 2, in_features: int = 784, num_classes: int = 10,
                    bias: bool = True) -> int:
    """Trainable parameters of ``MLP(kind="dense", width=width, depth=depth, bias=bias)``, by formula."""
    return rpp_trainable(1, width, depth, in_features, num_classes, "full" if bias else "none")


def matched_dense_width(k: int, m: int, depth: int = 2, in_features: int = 784, num_classes: int = 10,
                        bias: bool = True) -> int:
    """The dense hidden width whose trainable count is closest to the RPP MLP's (m, k), bias full or none.

    RPP biases are ``"full"`` when ``bias`` is True. Ties go to the narrower network.
    """
    target = rpp_trainable(k, m, depth, in_features, num_classes, "full" if bias else "none")
    width = 1
    while dense_trainable(width + 1, depth, in_features, num_classes, bias) <= target:
        width += 1
    below, above = (dense_trainable(w, depth, in_features, num_classes, bias) for w in (width, width + 1))
    return width if target - below <= above - target else width + 1


def count_trainable(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def count_dense_equivalent(module: nn.Module) -> int:
    """Parameters that dense layers of the same input and output widths would hold."""
    total = 0
    for layer in module.modules():
        if hasattr(layer, "in_features") and hasattr(layer, "out_features"):
            total += layer.in_features * layer.out_features + (layer.out_features if layer.bias is not None else 0)
    return total
