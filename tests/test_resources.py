"""What a run asks of the machine (rppnets.resources): the memory estimate that refuses a model before it trains, the
memory left, and the threads each job of a sweep gets. A wrong estimate refuses a model that fits or lets one run the
machine out of memory; a wrong thread count oversubscribes the cores.

The first estimates below are counted by hand from estimate_training_bytes's docstring (threads fixed at 2); the
others pin the estimate of every kind and permutation, whose measured counterparts are in
experiments/width_limit (tests/test_width_limit.py checks the estimate against them).
"""

import os

import pytest
import torch

from rppnets import resources
from rppnets.resources import (available_memory_bytes, estimate_training_bytes, index_build_bytes, index_itemsize,
                               memory_refusal, threads_per_job)


@pytest.fixture()
def two_threads(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)


def test_the_index_takes_the_smallest_integer_that_holds_a_row():
    assert [index_itemsize(m) for m in (1, 256, 257, 2**15, 2**15 + 1, 10**6)] == [1, 1, 2, 2, 4, 4]


def test_index_build_bytes_by_hand():
    # m = 5: domain 8, 3 rows past m; per column the largest of 2*8*4 = 64, 8*4 + 3*(12+8) = 92 and
    # 8*4 + 3*16 + 9*5*28 // 64 = 99
    assert index_build_bytes(5, 6) == 99 * 6
    # m = 6: domain 8, d = 2: 64, 32 + 40 = 72, 32 + 32 + 4*6*28 // 64 = 74
    assert index_build_bytes(6, 1) == 74
    # a power of two walks no cycle: the two int32 passes
    assert index_build_bytes(8, 3) == 2 * 8 * 4 * 3 and index_build_bytes(1, 1) == max(16, 8 + 20, 8 + 16 + 7)
    # m = 9: domain 16, d = 7: 128, 64 + 140 = 204, 64 + 112 + 49*9*28 // 256 = 224
    assert index_build_bytes(9, 2) == 448
    # m = 2: domain 2 (at least one bit), nothing past m
    assert index_build_bytes(2, 5) == 2 * 2 * 4 * 5


def test_dense_estimate_by_hand(two_threads):
    # two layers 5 -> 3 -> 3, 2 classes: tensors 15, 3, 9, 3, 6, 2 (38 parameters); state 4 * 38 * 4 = 608 bytes;
    # batch 4: layer 1 4*(0+3+5)*4 = 128, layer 2 4*(3+3+3)*4 = 144, ReLU 4*(6+2*3)*4 = 192, Adam 2*15*4 = 120
    model = {"kind": "dense", "depth": 2, "width": 3}
    assert estimate_training_bytes(model, 4, in_features=5, num_classes=2) == 608 + 192
    # no biases, one layer: tensors 15, 6, 2; state 368; ReLU 4*(3+6)*4 = 144
    assert estimate_training_bytes({"kind": "dense", "depth": 1, "width": 3, "bias": False}, 4, 5, 2) == 368 + 144
    assert estimate_training_bytes({"kind": "dense", "depth": 1, "width": 3, "bias": "none"}, 4, 5, 2) == 368 + 144
    # batch 1, 100 inputs: Adam's temporaries of the 300-weight layer (2400) pass every step's backward (412)
    state = 4 * (300 + 3 + 9 + 3 + 6 + 2) * 4
    assert estimate_training_bytes(model, 1, in_features=100, num_classes=2) == state + 2400
    # softmax regression: 5*2 + 2 parameters, Adam's temporaries of the weight
    assert estimate_training_bytes({"kind": "dense", "depth": 0}, 4, 5, 2) == 4 * 12 * 4 + 2 * 10 * 4


def test_rpp_stored_estimate_by_hand(two_threads):
    # width 2, k 3 (6 wide): tensors 10, 6, 12, 6, 12, 2 (48 parameters); stored indices 5*6 and 6*6 bytes (66);
    # state 4*48*4 + 66 = 834. Fused step, 2 threads: layer 1 4*(0+6+2*5)*4 + 2*(64*2*5 + 5*2)*4 = 5456, layer 2
    # 4*(6+6+2*6)*4 + 2*(64*2*6 + 6*2)*4 = 6624
    model = {"kind": "rpp", "depth": 2, "width": 2, "k": 3, "permutation": "stored"}
    assert estimate_training_bytes(model, 4, in_features=5, num_classes=2) == 834 + 6624
    # reused biases: 2 per layer instead of 6 (40 parameters), everything else alike
    reuse = model | {"bias": "reuse"}
    assert estimate_training_bytes(reuse, 4, in_features=5, num_classes=2) == 4 * 40 * 4 + 66 + 6624


def test_building_a_large_index_can_be_the_peak(two_threads):
    # one layer 1,025 -> 100 (width 1, k 100): the Feistel network runs on 2,048 rows: building outweighs training
    model = {"kind": "rpp", "depth": 1, "width": 1, "k": 100}
    params = 1025 + 100 + 100 * 2 + 2
    expected = params * 4 + index_build_bytes(1025, 100)
    assert estimate_training_bytes(model, 1, in_features=1025, num_classes=2) == expected


# every kind, permutation and option, pinned (bytes); the width_limit record measures them
PINNED = [
    ({'kind': 'rpp', 'depth': 2, 'width': 10, 'k': 30, 'permutation': 'generated'}, 64, 2_014_752),
    ({'kind': 'rpp', 'depth': 2, 'width': 10, 'k': 30, 'permutation': 'generated'}, 512, 5_362_208),
    ({'kind': 'rpp', 'depth': 2, 'width': 10, 'k': 30, 'permutation': 'stored'}, 64, 2_800_100),
    ({'kind': 'rpp', 'depth': 2, 'width': 10, 'k': 30}, 512, 5_572_800),
    ({'kind': 'rpp', 'depth': 2, 'width': 10, 'k': 30, 'permutation': 'random'}, 64, 2_225_344),
    ({'kind': 'rpp', 'depth': 2, 'width': 10, 'k': 30, 'permutation': 'random'}, 512, 5_572_800),
    ({'kind': 'rpp', 'depth': 3, 'width': 10, 'k': 30, 'permutation': 'shared'}, 512, 5_625_600),
    ({'kind': 'rpp', 'depth': 3, 'width': 10, 'k': 30, 'permutation': 'stored'}, 512, 5_805_600),
    ({'kind': 'rpp', 'depth': 2, 'width': 10, 'k': 30, 'permutation': 'identity'}, 64, 538_400),
    ({'kind': 'rpp', 'depth': 2, 'width': 10, 'k': 30, 'permutation': 'identity'}, 512, 2_688_800),
    ({'kind': 'rpp', 'depth': 2, 'width': 10, 'k': 30, 'signs': True}, 512, 5_575_200),
    ({'kind': 'rpp', 'depth': 2, 'width': 10, 'k': 30, 'signs': True, 'permutation': 'generated'}, 512, 5_362_208),
    ({'kind': 'hashed', 'depth': 2, 'width': 10, 'k': 30}, 64, 4_271_904),
    ({'kind': 'hashed', 'depth': 2, 'width': 10, 'k': 30}, 512, 6_214_432),
    ({'kind': 'lowrank', 'depth': 2, 'width': 10, 'k': 30}, 64, 534_368),
    ({'kind': 'lowrank', 'depth': 2, 'width': 10, 'k': 30}, 512, 2_684_768),
    ({'kind': 'dense', 'depth': 2, 'width': 300, 'bias': 'reuse'}, 64, 7_142_560),
    ({'kind': 'dense', 'depth': 3, 'width': 300, 'bias': True}, 512, 9_777_760),
    ({'kind': 'rpp', 'depth': 2, 'width': 1, 'k': 40000, 'permutation': 'random'}, 1, 12_864_803_176),
    ({'kind': 'rpp', 'depth': 2, 'width': 1, 'k': 300, 'permutation': 'stored'}, 1, 2_761_076),
    ({'kind': 'rpp', 'depth': 1, 'width': 1, 'k': 100, 'permutation': 'shared'}, 512, 4_412_256),
]


@pytest.mark.parametrize("model, batch_size, expected", PINNED)
def test_the_estimate_of_every_kind_is_pinned(two_threads, model, batch_size, expected):
    assert estimate_training_bytes(model, batch_size) == expected


# --- memory available, and the refusal -----------------------------------------------------------------------------


class FakeFiles:
    """/proc/meminfo and the cgroup files as given (None: missing)."""

    def __init__(self, files: dict):
        self.files = files

    def __call__(self, path):
        files = self.files

        class P:
            def read_text(self):
                if files.get(path) is None:
                    raise FileNotFoundError(path)
                return files[path]
        return P()


MEMINFO = "MemTotal:       16000000 kB\nMemFree:         1000000 kB\nMemAvailable:    8000000 kB\n"


@pytest.mark.parametrize("files, expected", [
    ({"/proc/meminfo": MEMINFO}, 8_000_000 * 1024),
    ({"/proc/meminfo": MEMINFO, "/sys/fs/cgroup/memory.max": "max\n"}, 8_000_000 * 1024),
    ({"/proc/meminfo": MEMINFO, "/sys/fs/cgroup/memory.max": "4000000000\n",
      "/sys/fs/cgroup/memory.current": "1000000000\n"}, 3_000_000_000),
    ({"/proc/meminfo": "MemAvailable:  1000 kB\n", "/sys/fs/cgroup/memory.max": "4000000000\n",
      "/sys/fs/cgroup/memory.current": "1000000000\n"}, 1_024_000),
    ({"/sys/fs/cgroup/memory.max": "4000000000", "/sys/fs/cgroup/memory.current": "0"}, 4_000_000_000),
    ({"/proc/meminfo": MEMINFO, "/sys/fs/cgroup/memory.max": "4000000000"}, 8_000_000 * 1024),  # no usage
    ({"/proc/meminfo": MEMINFO, "/sys/fs/cgroup/memory.max": "lots", "/sys/fs/cgroup/memory.current": "0"},
     8_000_000 * 1024),
    ({"/proc/meminfo": "MemTotal: 5 kB\n"}, None),
    ({}, None),
])
def test_memory_available_is_the_smaller_of_linuxs_and_the_cgroups(monkeypatch, files, expected):
    monkeypatch.setattr(resources, "Path", FakeFiles(files))
    assert available_memory_bytes() == expected


def test_a_model_that_fits_or_is_not_an_mlp_is_not_refused(monkeypatch):
    model = {"kind": "dense", "depth": 2, "width": 100}
    needed = estimate_training_bytes(model, 64)
    monkeypatch.setattr(resources, "available_memory_bytes", lambda: needed)
    assert memory_refusal(model, 64) is None  # exactly enough
    monkeypatch.setattr(resources, "available_memory_bytes", lambda: None)  # unknown
    assert memory_refusal(model, 64) is None
    monkeypatch.setattr(resources, "available_memory_bytes", lambda: 0)
    assert memory_refusal({"_target_": "mymodels.TinyNet"}, 64) is None
    assert memory_refusal({"kind": "conv", "depth": 2}, 64) is None
    for kind in ("dense", "rpp", "hashed", "lowrank"):
        assert memory_refusal({"kind": kind, "depth": 2, "width": 10, "k": 2}, 64) is not None, kind


def test_a_refusal_names_the_model_the_memory_and_the_keys_to_lower(monkeypatch):
    model = {"kind": "rpp", "depth": 2, "width": 10, "k": 300}
    needed = estimate_training_bytes(model, 128)
    monkeypatch.setattr(resources, "available_memory_bytes", lambda: needed - 1)
    assert memory_refusal(model, 128) == (
        f"model (kind=rpp, width=10, k=300, depth=2) needs about {needed / 2**30:.1f} GiB to train, but this machine "
        f"has {(needed - 1) / 2**30:.1f} GiB available; lower model.k / model.width")
    dense = {"kind": "dense", "depth": 2, "width": 20000}
    needed = estimate_training_bytes(dense, 2)
    monkeypatch.setattr(resources, "available_memory_bytes", lambda: 2**30)
    assert memory_refusal(dense, 2) == (
        f"model (kind=dense, width=20000, k=1, depth=2) needs about {needed / 2**30:.1f} GiB to train, but this "
        "machine has 1.0 GiB available; lower model.width")
    small = {"kind": "dense", "depth": 2, "width": 100}  # most of it the activations of a large batch
    needed = estimate_training_bytes(small, 100000)
    monkeypatch.setattr(resources, "available_memory_bytes", lambda: 2**28)
    assert memory_refusal(small, 100000) == (
        f"model (kind=dense, width=100, k=1, depth=2) needs about {needed / 2**30:.1f} GiB to train, but this "
        "machine has 0.2 GiB available; lower data.batch_size (now 100000; most of the estimate grows with it) or "
        "model.width")


def test_the_refusal_estimates_with_the_data_sets_sizes(monkeypatch):
    monkeypatch.setattr(resources, "available_memory_bytes", lambda: 10**7)
    small = {"kind": "dense", "depth": 2, "width": 500, "in_features": 10, "num_classes": 2}
    assert memory_refusal(small, 64) is None  # with MNIST's 784 inputs it would not fit
    assert memory_refusal(small | {"in_features": 784}, 64) is not None
    assert memory_refusal(small | {"num_classes": 3000}, 64) is not None


@pytest.mark.parametrize("model", [
    {"kind": "dense", "depth": 2, "width": 50, "in_features": 20000, "num_classes": 2},  # far from MNIST's sizes
    {"kind": "hashed", "depth": 2, "width": 1, "k": 3},  # the first batch past half is small: a sample is a big step
])
def test_the_batch_is_named_exactly_when_more_than_half_the_estimate_grows_with_it(monkeypatch, two_threads, model):
    """The knob a refusal names: data.batch_size from the first batch size at which the part of the estimate above
    one sample's (estimated with the data set's sizes) passes half of it, and not one batch size before."""
    monkeypatch.setattr(resources, "available_memory_bytes", lambda: 0)
    shape = {name: model[name] for name in ("in_features", "num_classes") if name in model}

    def needed(batch):
        return estimate_training_bytes(model, batch, **shape)

    first = next(b for b in range(2, 10**6) if needed(b) - needed(1) > needed(b) / 2)
    assert first > 3 and needed(first - 1) - needed(1) > needed(first - 1) / 3
    assert "lower data.batch_size (now" in memory_refusal(model, first)
    assert memory_refusal(model, first - 1).endswith(("; lower model.width", "; lower model.k / model.width"))


def test_a_key_left_out_of_a_model_config_is_estimated_as_the_mlp_builds_it(two_threads):
    """Each key the estimate reads, left out, is the MLP's own default (rppnets.models.MLP), not a guess of its own."""
    import inspect

    from rppnets.models import MLP

    defaults = {name: p.default for name, p in inspect.signature(MLP).parameters.items()}
    model = {"kind": "rpp", "depth": 3, "width": 20, "bias": "none", "k": 5, "permutation": "generated", "signs": True}
    for key in model:
        assert defaults[key] != model[key], key
        without = {name: value for name, value in model.items() if name != key}
        assert estimate_training_bytes(without, 64) == estimate_training_bytes(without | {key: defaults[key]}, 64), key
    stored = model | {"permutation": "stored"}  # signs count where the keys are kept: stored P
    assert estimate_training_bytes(stored, 64) != estimate_training_bytes(stored | {"signs": False}, 64)
    assert estimate_training_bytes({}, 64) == estimate_training_bytes({"kind": "dense", "width": 1000, "depth": 2}, 64)


def test_a_dense_layer_is_as_wide_as_its_width_whatever_k_says(two_threads):
    dense = {"kind": "dense", "depth": 2, "width": 30}
    assert estimate_training_bytes(dense | {"k": 7}, 64) == estimate_training_bytes(dense | {"k": 1}, 64)
    assert estimate_training_bytes({**dense, "kind": "rpp", "k": 7}, 64) > estimate_training_bytes(
        {**dense, "kind": "rpp", "k": 1}, 64)


# --- threads ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_jobs, jobs, threads", [
    (None, None, 8), (0, 5, 8), (1, None, 8), (2, None, 4), (3, None, 2), (16, None, 1), (-1, None, 1),
    (-7, None, 4), (-8, None, 8), (-20, None, 8), (4, 2, 4), (4, 8, 2), (4, 0, 2),
])
def test_the_jobs_of_a_sweep_share_the_cores(monkeypatch, n_jobs, jobs, threads):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert threads_per_job(n_jobs, jobs) == threads


def test_without_affinity_the_cpu_count_is_used(monkeypatch):
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert threads_per_job(None) == 6 and threads_per_job(4) == 1
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert threads_per_job(None) == 1
