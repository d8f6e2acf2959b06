"""Tests of the MLP builder: layer kinds, the trainable budgets of the frontier's methods, bad arguments."""

from pathlib import Path

import pytest
import torch
from helpers import CONF_DIR, compose_train
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from rppnets.layers.hashed_linear import HashedLinear
from rppnets.layers.low_rank_linear import LowRankLinear
from rppnets.models import (
    MLP,
    count_trainable,
    dense_trainable,
    lowrank_rank,
    matched_dense_width,
    rpp_trainable,
)
from rppnets.layers.rpp_linear import RPPLinear

FRONTIER_K = (1, 2, 5, 10, 20, 50, 100, 200)
# Trainable parameters per k of the frontier's networks (m=10, 784 -> two hidden layers -> 10, full biases).
# hashed has exactly RPP's budget; dense is an integer width (one unit is ~800 parameters); low-rank rounds its
# rank down in each layer.
FRONTIER_COUNTS = {
    1: {"rpp": 8070, "hashed": 8070, "lowrank": 7376, "dense": 8070},
    2: {"rpp": 8290, "hashed": 8290, "lowrank": 7686, "dense": 8070},
    5: {"rpp": 8950, "hashed": 8950, "lowrank": 8616, "dense": 8887},
    10: {"rpp": 10050, "hashed": 10050, "lowrank": 9282, "dense": 9706},
    20: {"rpp": 12250, "hashed": 12250, "lowrank": 11298, "dense": 12175},
    50: {"rpp": 18850, "hashed": 18850, "lowrank": 18714, "dense": 18847},
    100: {"rpp": 29850, "hashed": 29850, "lowrank": 29146, "dense": 29962},
    200: {"rpp": 51850, "hashed": 51850, "lowrank": 49578, "dense": 52287},
}


def frontier_net(method: str, k: int) -> MLP:
    if method == "dense":
        return MLP(kind="dense_matched", width=10, k=k, bias=True)
    kwargs = {"permutation": "generated"} if method == "rpp" else {}  # same count, no index to build
    return MLP(kind=method, width=10, k=k, bias="full", **kwargs)


@pytest.mark.parametrize("k", FRONTIER_K)
def test_frontier_budgets_per_method_and_k(k):
    counts = {method: count_trainable(frontier_net(method, k)) for method in FRONTIER_COUNTS[k]}
    print(f"k={k}: {counts}")
    assert counts == FRONTIER_COUNTS[k]
    rpp = counts["rpp"]
    assert rpp == rpp_trainable(k, 10) == 7850 + 220 * k
    assert counts["hashed"] == rpp
    assert abs(counts["dense"] - rpp) <= 0.05 * rpp  # the bound tested: dense within 5%
    assert 0.90 * rpp <= counts["lowrank"] <= rpp  # low-rank: at most RPP's, at least 90% of it


def test_hidden_layers_are_k_m_wide_with_the_rpp_layers_weights():
    k, m = 20, 10
    hashed = MLP(kind="hashed", width=m, k=k, bias="full", seed=3)
    lowrank = MLP(kind="lowrank", width=m, k=k, bias="full")
    rpp = MLP(kind="rpp", width=m, k=k, bias="full")
    for net, cls in ((hashed, HashedLinear), (lowrank, LowRankLinear), (rpp, RPPLinear)):
        hidden = [layer for layer in net if isinstance(layer, cls)]
        assert [(h.in_features, h.out_features) for h in hidden] == [(784, k * m), (k * m, k * m)]
        assert net[-1].in_features == k * m and net[-1].out_features == 10
    h1, h2 = (layer for layer in hashed if isinstance(layer, HashedLinear))
    assert (h1.buckets, h2.buckets) == (784 * m, k * m * m)  # the sizes of the RPP layers' W
    assert (h1.seed, h1.layer, h2.layer) == (3, 0, 1)
    l1, l2 = (layer for layer in lowrank if isinstance(layer, LowRankLinear))
    assert (l1.rank, l2.rank) == (7840 // (784 + 200), 2000 // 400)  # 7 and 5
    assert hashed(torch.rand(3, 28, 28)).shape == (3, 10)
    assert lowrank(torch.rand(3, 28, 28)).shape == (3, 10)


def test_lowrank_rank_is_rounded_down_and_at_least_one():
    assert lowrank_rank(784, 1000, 7840) == 4  # 4 * 1784 = 7136 <= 7840 < 5 * 1784
    assert lowrank_rank(10, 10, 100) == 5
    assert lowrank_rank(1000, 1000, 1999) == 1 and lowrank_rank(1000, 1000, 10) == 1


def test_matched_dense_width_is_the_closest_count():
    for k in FRONTIER_K:
        width, target = matched_dense_width(k, 10), rpp_trainable(k, 10)
        gaps = {w: abs(dense_trainable(w) - target) for w in range(1, 200)}
        assert gaps[width] == min(gaps.values())
    assert matched_dense_width(100, 10) == 36 and matched_dense_width(1, 10) == 10  # k=1: RPP is the dense MLP
    assert matched_dense_width(100, 10, bias=False) != matched_dense_width(100, 10, depth=1)
    net = MLP(kind="dense_matched", width=10, k=100)
    assert [layer.out_features for layer in net if isinstance(layer, nn.Linear)] == [36, 36, 10]


@pytest.mark.parametrize("kind, bias", [("rpp", "full"), ("rpp", "reuse"), ("rpp", "none"), ("hashed", "none"),
                                        ("dense", True), ("dense", False)])
@pytest.mark.parametrize("k, depth", [(3, 2), (7, 1), (2, 3), (4, 0)])
def test_formulas_agree_with_the_built_networks(kind, bias, k, depth):
    net = MLP(kind=kind, width=6, k=k, depth=depth, bias=bias, in_features=20, num_classes=4)
    if kind == "dense":
        assert count_trainable(net) == dense_trainable(6, depth, 20, 4, bias)
    else:  # a hashed layer holds the buckets of the RPP layer it stands in for
        assert count_trainable(net) == rpp_trainable(k, 6, depth, 20, 4, bias)


@pytest.mark.parametrize("kind", ["dense", "dense_matched", "rpp", "hashed", "lowrank"])
def test_bias_is_full_or_none_for_every_kind_and_booleans_map_to_them(kind):
    def biases(bias):
        return [layer.bias is not None for layer in MLP(kind=kind, width=4, k=3, bias=bias) if hasattr(layer, "bias")]

    assert biases("full") == biases(True) == [True, True, True]
    assert biases("none") == biases(False) == [False, False, True]  # the output layer always has one


@pytest.mark.parametrize("kwargs, name", [
    ({"kind": "hash"}, "kind"),
    ({"kind": "hashed", "bias": "reuse"}, "bias"),
    ({"kind": "dense", "bias": "reuse"}, "bias"),
    ({"kind": "dense_matched", "bias": "yes"}, "bias"),
    ({"kind": "lowrank", "k": 0}, "k"),
    ({"width": 0}, "width"),
])
def test_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=f"^{name}="):
        MLP(**kwargs)


def test_frontier_experiment_composes_every_job_to_the_counted_networks(tmp_path):
    sweep = OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / "experiment" / "frontier.yaml"))["hydra"]
    params = sweep["sweeper"]["params"]
    ks = [int(k) for k in str(params["model.k"]).split(",")]
    networks = [n.strip() for n in params["network"].split(",")]
    assert tuple(ks) == FRONTIER_K and sweep["sweep"]["subdir"] == "${network}-k${model.k}-seed${seed}"
    methods = set()
    for k in ks:
        for network in networks:
            cfg = compose_train(["experiment=frontier", f"network={network}", f"model.k={k}", "seed=2"],
                                output_dir=tmp_path)
            assert (cfg.group, cfg.skip_finished, cfg.model.k, cfg.model.width) == ("frontier", True, k, 10)
            if network.startswith("rpp"):  # no index needed to count: the generated mode has the same parameters
                cfg.model.permutation = "generated"
            # signs add no parameter: signed RPP counts as RPP
            assert count_trainable(instantiate(cfg.model)) == FRONTIER_COUNTS[k][cfg.network.removesuffix("_signed")]
            methods.add(cfg.network)
    assert methods == {"rpp", "rpp_signed", "dense", "hashed", "lowrank"}


def test_signs_and_init_reach_every_rpp_layer():
    net = MLP(kind="rpp", width=4, k=3, signs=True, init="glorot_wide", seed=2)
    layers = [layer for layer in net if isinstance(layer, RPPLinear)]
    assert [(layer.signs, layer.init, layer.layer) for layer in layers] == [(True, "glorot_wide", 0),
                                                                           (True, "glorot_wide", 1)]
    plain = [layer for layer in MLP(kind="rpp", width=4, k=3) if isinstance(layer, RPPLinear)]
    assert [(layer.signs, layer.init) for layer in plain] == [(False, "hidden_fan_in")] * 2
    assert MLP(kind="rpp", width=4, k=3, signs=True)(torch.rand(2, 28, 28)).shape == (2, 10)


def test_the_mlp_knows_the_layers_inits():
    from rppnets.layers.rpp_linear import INITS
    from rppnets.models import RPP_INITS

    assert RPP_INITS == INITS


@pytest.mark.parametrize("kwargs, name", [
    ({"kind": "rpp", "signs": "true"}, "signs"),
    ({"kind": "dense", "signs": True}, "signs"),
    ({"kind": "hashed", "signs": True}, "signs"),
    ({"kind": "rpp", "init": "xavier"}, "init"),
    ({"kind": "lowrank", "init": "glorot_wide"}, "init"),
])
def test_bad_signs_and_init_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=f"^{name}=.* is invalid; allowed: "):
        MLP(**kwargs)


def test_the_signed_network_config_trains_signed_rpp_and_names_its_runs(tmp_path):
    from rppnets.training.pipeline import model_name, run_name

    cfg = compose_train(["network=rpp_signed", "seed=3"], output_dir=tmp_path)
    assert (cfg.network, cfg.model.kind, cfg.model.width, cfg.model.k, cfg.model.bias) == (
        "rpp_signed", "rpp", 10, 100, "full")
    assert cfg.model.signs is True and cfg.model.init == "hidden_fan_in"
    net = instantiate(cfg.model)
    assert [layer.signs for layer in net if isinstance(layer, RPPLinear)] == [True, True]
    assert count_trainable(net) == FRONTIER_COUNTS[100]["rpp"]
    assert run_name(cfg) == "rpp-w10-k100-signed-s3"
    rpp = compose_train(["network=rpp"], output_dir=tmp_path)
    assert rpp.model.signs is False and model_name(rpp) == "rpp-w10-k100"


def test_the_init_ablation_composes_each_init_signed_and_unsigned(tmp_path):
    sweep = OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / "experiment" / "init_ablation.yaml"))["hydra"]
    params = sweep["sweeper"]["params"]
    inits, networks = params["model.init"].split(","), params["network"].split(",")
    assert inits == ["hidden_fan_in", "wide_fan_in", "glorot_hidden", "glorot_wide"]
    assert networks == ["rpp", "rpp_signed"] and sweep["sweep"]["subdir"] == "${network}-${model.init}-seed${seed}"
    for network in networks:
        for init in inits:
            cfg = compose_train(["experiment=init_ablation", f"network={network}", f"model.init={init}"],
                                output_dir=tmp_path)
            assert (cfg.group, cfg.skip_finished, cfg.trainer.max_epochs) == ("init_ablation", True, 3)
            model = cfg.model
            assert (model.kind, model.width, model.k, model.bias, model.init) == ("rpp", 10, 100, "full", init)
            assert model.signs is (network == "rpp_signed")
            layers = [layer for layer in instantiate(model) if isinstance(layer, RPPLinear)]
            assert [(layer.init, layer.signs) for layer in layers] == [(init, model.signs)] * 2
