"""The MLPs of the experiment: dense or RPP hidden layers with ReLU, and a dense output layer."""

from torch import nn

from rppnets.checks import check_choice, check_int


class MLP(nn.Sequential):
    """Flatten, `depth` hidden layers of width `width` (times `k` for RPP) with ReLU, dense output layer.

    Args:
        kind: ``"dense"`` for ``nn.Linear`` hidden layers, ``"rpp"`` for ``RPPLinear`` ones.
        width: hidden width of a dense layer; for RPP the hidden weight's width n (the layer is k*n wide).
        depth: number of hidden layers; 0 gives multinomial logistic regression.
        bias: dense: ``True``/``False``; RPP: ``"full"``, ``"reuse"`` or ``"none"``. The output layer
            always has a bias.
        k: RPP widening factor (ignored for dense).
        permutation: RPP permutation source, ``"stored"``, ``"shared"`` or ``"generated"``.
        seed: RPP permutation seed; hidden layer l uses (seed, layer=l).
        in_features, num_classes: input size (784 for 28x28 images) and number of classes.

    Example::

        >>> MLP(kind="rpp", width=10, k=100, depth=2, bias="full")(torch.rand(5, 28, 28)).shape
        torch.Size([5, 10])
    """

    def __init__(self, kind: str = "dense", width: int = 1000, depth: int = 2, bias=True, k: int = 1,
                 permutation: str = "stored", seed: int = 0, in_features: int = 784, num_classes: int = 10):
        kind = check_choice("kind", kind, ("dense", "rpp"))
        width = check_int("width", width, 1)
        depth = check_int("depth", depth, 0)
        in_features = check_int("in_features", in_features, 1)
        num_classes = check_int("num_classes", num_classes, 1)
        if kind == "dense":
            check_choice("bias", bias, (True, False))
        layers: list[nn.Module] = [nn.Flatten()]
        fan_in = in_features
        for layer in range(depth):
            if kind == "dense":
                hidden = nn.Linear(fan_in, width, bias=bias)
            else:
                from rppnets.rpp_linear import RPPLinear  # plain-PyTorch users of dense MLPs never need it

                hidden = RPPLinear(fan_in, width, k, bias=bias, permutation=permutation, seed=seed, layer=layer)
            layers += [hidden, nn.ReLU()]
            fan_in = hidden.out_features
        layers.append(nn.Linear(fan_in, num_classes))
        super().__init__(*layers)


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
