"""P's storage pinned beside its values: index dtypes of the Feistel and random P, and the limits named."""

import pytest
import torch

from rppnets.layers.permutation import build_index, index_dtype, random_index


@pytest.mark.parametrize("m, dtype", [(2, torch.uint8), (300, torch.int16), (40_000, torch.int32)])
def test_stored_and_random_indices_take_the_smallest_dtype(m, dtype):
    for index in (build_index(m, 2, 3, seed=1, layer=0), random_index(m, 2, 3, seed=1, layer=0)):
        assert index.dtype == dtype and index.shape == (m, 6)
        assert torch.equal(index.long().sort(0).values, torch.arange(m)[:, None].expand(m, 6))


def test_an_index_too_large_for_int32_is_refused_by_name():
    with pytest.raises(ValueError, match=f"^m={2**31 + 1} is too large for an int32 index$"):
        index_dtype(2**31 + 1)
