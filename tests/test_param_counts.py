"""The counts of the table's main column: `model/params_trainable` is what the network trains, not its dense width.

RPP's claim is about the trainable count (proportional to m), so the logged number must be the model's own
count of trainable parameters, frozen ones left out, and must differ from what dense layers of the same widths
would hold.
"""

import functools
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from rppnets.training.callbacks import ModelStats
from rppnets.training.classifier import Classifier
from rppnets.models import MLP, count_dense_equivalent, count_trainable, dense_trainable, rpp_trainable

ADAM = functools.partial(torch.optim.Adam, lr=1e-3)


class Recorder:
    """A logger stand-in that keeps what it was given."""

    def __init__(self):
        self.logged = []

    def log_metrics(self, metrics, step):
        self.logged.append((dict(metrics), step))


def logged_stats(net: nn.Module, global_step: int = 0) -> tuple[dict, list]:
    """What ModelStats logs when fitting starts, and what its loggers received."""
    callback, recorder = ModelStats(), Recorder()
    trainer = SimpleNamespace(loggers=[recorder], global_step=global_step)
    callback.on_fit_start(trainer, Classifier(net, optimizer=ADAM))
    return callback.metrics, recorder.logged


def own_count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


# 20 inputs, hidden m=4, k=5 (20 wide), 3 classes; by hand: hidden layers 20*4 + 20 biases each, output 20*3 + 3.
RPP_TRAINABLE = 2 * (20 * 4 + 20) + 20 * 3 + 3  # 263
DENSE_EQUIVALENT = 2 * (20 * 20 + 20) + 20 * 3 + 3  # 903: nn.Linear(20, 20) twice, then the output layer


@pytest.mark.parametrize("permutation", ["stored", "shared", "generated", "identity", "random"])
def test_params_trainable_is_the_rpp_networks_own_count_not_its_dense_width(permutation):
    net = MLP(kind="rpp", width=4, k=5, depth=2, bias="full", permutation=permutation, in_features=20,
              num_classes=3)
    metrics, logged = logged_stats(net)
    assert metrics["model/params_trainable"] == own_count(net) == RPP_TRAINABLE
    assert metrics["model/params_dense_equivalent"] == DENSE_EQUIVALENT != RPP_TRAINABLE
    assert metrics["model/params_trainable"] == rpp_trainable(5, 4, 2, 20, 3, "full")
    assert logged == [(metrics, 0)]  # one row to every logger


@pytest.mark.parametrize("bias, hidden_bias", [("full", 20), ("reuse", 4), ("none", 0)])
def test_rpp_bias_modes_count_their_own_biases(bias, hidden_bias):
    net = MLP(kind="rpp", width=4, k=5, depth=2, bias=bias, in_features=20, num_classes=3)
    metrics, _ = logged_stats(net)
    assert metrics["model/params_trainable"] == 2 * (20 * 4 + hidden_bias) + 63
    # dense layers of the same widths hold a bias per output where the layer has one
    assert metrics["model/params_dense_equivalent"] == 2 * (20 * 20 + (20 if bias != "none" else 0)) + 63


def test_frozen_parameters_are_not_trainable():
    net = MLP(kind="rpp", width=4, k=5, depth=2, bias="full", in_features=20, num_classes=3)
    net[-1].requires_grad_(False)  # the output layer: 63 parameters
    net[1].bias.requires_grad_(False)  # the first hidden layer's 20 biases
    metrics, _ = logged_stats(net)
    assert metrics["model/params_trainable"] == RPP_TRAINABLE - 63 - 20 == own_count(net) == count_trainable(net)
    assert metrics["model/params_dense_equivalent"] == DENSE_EQUIVALENT  # a size, whatever is trained


@pytest.mark.parametrize("depth, bias", [(2, True), (2, False), (1, True), (0, True)])
def test_a_dense_networks_two_counts_agree(depth, bias):
    net = MLP(kind="dense", width=7, depth=depth, bias=bias, in_features=20, num_classes=3)
    metrics, _ = logged_stats(net)
    expected = dense_trainable(7, depth, 20, 3, bias)
    assert metrics["model/params_trainable"] == metrics["model/params_dense_equivalent"] == expected
    assert expected == own_count(net)


@pytest.mark.parametrize("kind", ["hashed", "lowrank"])
def test_other_compressed_layers_log_their_own_count(kind):
    net = MLP(kind=kind, width=4, k=5, depth=2, bias="full", in_features=20, num_classes=3)
    metrics, _ = logged_stats(net)
    assert metrics["model/params_trainable"] == own_count(net) < metrics["model/params_dense_equivalent"]


def test_the_figures_rpp_network_has_about_a_hundredth_of_the_dense_parameters():
    net = MLP(kind="rpp", width=10, k=100, depth=2, bias="full", permutation="generated")  # m=10, 1000 wide
    metrics, _ = logged_stats(net, global_step=7)
    assert metrics["model/params_trainable"] == 784 * 10 + 1000 + 1000 * 10 + 1000 + 1000 * 10 + 10 == 29_850
    assert metrics["model/params_dense_equivalent"] == dense_trainable(1000) == 1_796_010
    assert metrics["model/index_elements"] == metrics["model/index_bytes"] == 0  # generated: no index


def test_index_counts_of_stored_permutations():
    net = MLP(kind="rpp", width=4, k=5, depth=2, bias="full", permutation="stored", in_features=20, num_classes=3)
    metrics, _ = logged_stats(net)
    assert metrics["model/index_elements"] == 2 * 20 * 20 and metrics["model/index_bytes"] == 2 * 20 * 20  # uint8


@pytest.mark.parametrize("permutation", ["stored", "shared", "generated", "identity", "random"])
@pytest.mark.parametrize("bias, hidden_bias", [("full", 20), ("reuse", 4), ("none", 0)])
def test_signed_rpp_and_every_init_count_like_unsigned_rpp(permutation, bias, hidden_bias):
    # signs and the init change values, never the count: the logged numbers and the formula stay those of RPP
    unsigned, _ = logged_stats(MLP(kind="rpp", width=4, k=5, bias=bias, permutation=permutation, in_features=20,
                                   num_classes=3))
    for init in ("hidden_fan_in", "wide_fan_in", "glorot_hidden", "glorot_wide"):
        net = MLP(kind="rpp", width=4, k=5, bias=bias, permutation=permutation, in_features=20, num_classes=3,
                  signs=True, init=init)
        metrics, _ = logged_stats(net)
        assert metrics["model/params_trainable"] == own_count(net) == 2 * (20 * 4 + hidden_bias) + 63
        assert metrics["model/params_trainable"] == rpp_trainable(5, 4, 2, 20, 3, bias)
        for key in ("model/params_trainable", "model/params_dense_equivalent", "model/index_elements",
                    "model/index_bytes"):
            assert metrics[key] == unsigned[key], (key, init)
        assert count_dense_equivalent(net) == metrics["model/params_dense_equivalent"]
