"""Tests of the Feistel permutation: bijectivity, inverse, statistics, keys, storage types and cache."""

import gc
import hashlib
import math

import pytest
import torch

from rppnets.layers import permutation
from rppnets.layers.permutation import (
    ROUNDS,
    _feistel,
    build_index,
    feistel_bits,
    index_dtype,
    permuted_rows,
    random_index,
    round_keys,
    shared_index,
)
from rppnets.layers.rpp_linear import RPPLinear

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def chi2_critical(df: int, z: float = 4.753) -> float:
    """Wilson-Hilferty upper quantile of chi-square(df); z = 4.753 is alpha = 1e-6, so no flakes."""
    c = 2 / (9 * df)
    return df * (1 - c + z * math.sqrt(c)) ** 3


def is_permutation_per_column(p: torch.Tensor, m: int) -> bool:
    return bool((p.sort(0).values == torch.arange(m, dtype=p.dtype)[:, None]).all())


def test_bijective_and_inverse_for_every_m_up_to_2048():
    keys = round_keys(seed=3, layer=1, k=1, n=3)
    for m in range(1, 2049):
        p = permuted_rows(m, keys)
        assert p.dtype == torch.int32 and p.shape == (m, 3)
        assert is_permutation_per_column(p, m), m
        inverse = permuted_rows(m, keys, inverse=True)
        assert (p.long().gather(0, inverse.long()) == torch.arange(m)[:, None]).all(), m


@pytest.mark.parametrize("t", [1, 2, 15, 16, 29, 30])
def test_one_pass_stays_in_range_and_inverts_at_every_width(t):
    # at 30 bits the halves are 15 bits: the largest products int32 must hold without overflow
    keys = round_keys(seed=9, layer=0, k=1, n=64)
    x = torch.randint(0, 2**t, (500, 64), dtype=torch.int32)
    y = _feistel(x, keys[0], keys[1], t, inverse=False)
    assert (y >= 0).all() and (y < 2**t).all()
    assert torch.equal(_feistel(y, keys[0], keys[1], t, inverse=True), x)


def test_feistel_bits():
    assert [feistel_bits(m) for m in (1, 2, 3, 4, 5, 1024, 1025)] == [1, 1, 2, 2, 3, 10, 11]


@pytest.mark.parametrize("m", [16, 100])
def test_positions_are_uniform(m):
    columns = 20_000
    p = permuted_rows(m, round_keys(seed=0, layer=0, k=1, n=columns)).long()  # (m, columns)
    counts = torch.zeros(m, m).index_put_(
        (torch.arange(m)[:, None].expand_as(p), p), torch.ones(p.shape), accumulate=True
    )  # counts[i, r]: how often element i lands on r
    expected = columns / m
    statistic = ((counts - expected) ** 2 / expected).sum().item()
    assert statistic < chi2_critical((m - 1) ** 2)


def test_neighbouring_rows_are_not_linked():
    # the offset P(i+1) - P(i) mod m is uniform for a random permutation; 4 rounds fail this
    m, columns = 100, 20_000
    p = permuted_rows(m, round_keys(seed=1, layer=0, k=1, n=columns)).long()
    offsets = ((p[1:] - p[:-1]) % m).flatten()
    counts = torch.bincount(offsets, minlength=m)[1:].double()  # offset 0 is impossible
    expected = offsets.numel() / (m - 1)
    statistic = ((counts - expected) ** 2 / expected).sum().item()
    assert statistic < chi2_critical(m - 2)


@pytest.mark.parametrize("m", [16, 1000])
def test_adjacent_columns_are_uncorrelated(m):
    columns = 4_000
    p = permuted_rows(m, round_keys(seed=2, layer=5, k=1, n=columns)).double()
    centred = p - p.mean(0)
    r = (centred[:, :-1] * centred[:, 1:]).sum(0) / centred.pow(2).sum(0)[1:]  # same variance per column
    sd = 1 / math.sqrt(m - 1)  # of the correlation of two independent random permutations
    assert abs(r.mean().item()) < 5 * sd / math.sqrt(r.numel())
    assert r.std().item() == pytest.approx(sd, rel=0.1)


def test_keys_depend_on_seed_layer_copy_and_column():
    keys = round_keys(seed=0, layer=0, k=2, n=3)
    assert keys.shape == (2, ROUNDS, 6) and keys.dtype == torch.int32
    assert (keys[0] >= 0).all() and (keys[0] < 2**16).all()
    assert (keys[1] % 2 == 1).all() and (keys[1] < 2**16).all()
    assert torch.equal(keys, round_keys(seed=0, layer=0, k=2, n=3))
    assert not torch.equal(keys, round_keys(seed=1, layer=0, k=2, n=3))
    assert not torch.equal(keys, round_keys(seed=0, layer=1, k=2, n=3))
    assert len({tuple(keys[:, :, c].flatten().tolist()) for c in range(6)}) == 6
    # a column's keys do not depend on how many columns there are
    assert torch.equal(round_keys(seed=0, layer=0, k=1, n=5)[:, :, :3], keys[:, :, :3])


def test_large_seed_is_accepted():
    assert not torch.equal(round_keys(2**64 - 1, 0, 1, 4), round_keys(0, 0, 1, 4))


@pytest.mark.parametrize(
    "m, dtype", [(1, torch.uint8), (256, torch.uint8), (257, torch.int16), (32768, torch.int16), (32769, torch.int32)]
)
def test_index_dtype_is_the_smallest_that_fits(m, dtype):
    assert index_dtype(m) == dtype


def test_build_index_layout_and_dtype():
    m, n, k = 300, 4, 3
    index = build_index(m, n, k, seed=0, layer=2)
    assert index.shape == (m, k * n) and index.dtype == torch.int16
    assert torch.equal(index.int(), permuted_rows(m, round_keys(0, 2, k, n)))


def test_shared_index_is_cached_while_referenced():
    first = shared_index(40, 3, 2, seed=11, device="cpu")
    assert shared_index(40, 3, 2, seed=11, device="cpu") is first
    assert torch.equal(first, build_index(40, 3, 2, seed=11, layer=0))
    key = (40, 3, 2, 11, torch.device("cpu"))
    assert permutation._SHARED[key] is first
    del first
    gc.collect()
    assert key not in permutation._SHARED  # weakly held: freed once no layer holds it


@cuda
@pytest.mark.parametrize("m", [1, 5, 100, 784, 1024])
def test_cuda_gives_the_same_permutation(m):
    keys = round_keys(seed=4, layer=2, k=3, n=50)
    for inverse in (False, True):
        assert torch.equal(permuted_rows(m, keys.cuda(), inverse).cpu(), permuted_rows(m, keys, inverse))


# sha256 (first 16 hex digits) of P's rows (m, k*n) as int32 for (m, n, k, seed, layer): saved checkpoints hold W
# and the bias only, so a change to the P that these produce would silently scramble every trained RPP network
GOLDEN = {
    (1, 1, 1, 0, 0): "df3f619804a92fdb",
    (13, 5, 7, 3, 2): "36f2343133058013",
    (300, 7, 6, 1, 2): "4cf6d34793ac5d37",
    (784, 10, 100, 0, 0): "1a731313917abb46",
    (1000, 10, 100, 0, 1): "737183d143b4cc2b",
    (70000, 2, 2, 5, 3): "eca4343d8e86ea6e",
}


def rows_hash(rows: torch.Tensor) -> str:
    return hashlib.sha256(rows.to(torch.int32).contiguous().numpy().tobytes()).hexdigest()[:16]


@pytest.mark.parametrize("shape", GOLDEN)
def test_feistel_permutations_are_the_ones_checkpoints_were_trained_with(shape):
    m, n, k, seed, layer = shape
    assert rows_hash(build_index(m, n, k, seed, layer)) == GOLDEN[shape]
    modes = ["stored", "generated"] + (["shared"] if layer == 0 else [])  # shared is always layer 0's P
    for mode in modes:
        p = RPPLinear(m, n, k, permutation=mode, seed=seed, layer=layer).permutation_tensor()  # (k, m, n)
        assert rows_hash(p.permute(1, 0, 2).reshape(m, k * n)) == GOLDEN[shape], mode


def test_random_control_permutation_is_the_one_checkpoints_were_trained_with():
    # randperm is torch's: if a torch upgrade changes its draws, "random" checkpoints no longer reload this P
    assert rows_hash(random_index(300, 7, 6, seed=1, layer=2)) == "0f72d5cc1ed349e8"
