"""P against a uniformly random permutation: fixed points and the i-to-P(i) correlation, over many columns.

These are the statistics that fewer Feistel rounds fail first (rppnets.layers.permutation's docstring). Each test
draws one fixed set of columns, so it is deterministic: the thresholds are the 1e-6 tails of the statistic under
a uniform permutation, so a sound P passes with room, and a weakened one fails.

Measured on 200,000 columns at m = 33 (the thresholds in brackets): 8 rounds give a fixed-point chi-square of
20.7 (< 37.5), mean-correlation z 1.7 and correlation-spread z 1.8 (< 4.75); 6 rounds give 392, 7.3 and 13.4.
At m = 784, 6 rounds are not told apart by these statistics even at 50,000 columns; 4 rounds are (spread z 40 to
53 there). Measured in experiments/mutation/README.md.
"""

import math

import pytest
import torch

from rppnets.layers.permutation import negative_signs, permuted_rows, round_keys, sign_keys

Z = 4.753  # the normal's two-sided 2e-6 tail
COLUMNS = {33: 200_000, 784: 20_000}


def chi2_critical(df: int, z: float = Z) -> float:
    """Wilson-Hilferty upper quantile of chi-square(df) at the normal quantile z (1e-6 for the default)."""
    c = 2 / (9 * df)
    return df * (1 - c + z * math.sqrt(c)) ** 3


def fixed_point_pmf(m: int, top: int) -> list[float]:
    """P(j fixed points) of a uniform permutation of m elements for j < top, then P(at least top)."""
    pmf = [sum((-1) ** i / math.factorial(i) for i in range(m - j + 1)) / math.factorial(j) for j in range(top)]
    return pmf + [1 - sum(pmf)]


@pytest.fixture(scope="module", params=sorted(COLUMNS))
def columns(request) -> tuple[int, torch.Tensor]:
    """(m, P) with P (m, columns) int64: the Feistel permutations of seed 0, layer 0, one copy."""
    m = request.param
    return m, permuted_rows(m, round_keys(seed=0, layer=0, k=1, n=COLUMNS[m])).long()


def test_fixed_points_are_as_many_and_as_spread_as_in_random_permutations(columns):
    m, p = columns
    count = (p == torch.arange(m)[:, None]).sum(0)  # fixed points per column: mean 1, variance 1
    z = (count.sum().item() - count.numel()) / math.sqrt(count.numel())
    assert abs(z) < Z, f"total fixed points z = {z:.2f}"
    top = 5
    observed = torch.bincount(count.clamp(max=top), minlength=top + 1).double()
    expected = torch.tensor(fixed_point_pmf(m, top), dtype=torch.float64) * count.numel()
    statistic = ((observed - expected) ** 2 / expected).sum().item()
    assert statistic < chi2_critical(top), f"fixed points per column: chi-square {statistic:.1f}"


def test_p_of_i_is_uncorrelated_with_i(columns):
    m, p = columns
    i = torch.arange(m, dtype=torch.float64)[:, None]
    i = i - i.mean()
    centred = p.double() - (m - 1) / 2  # every column holds 0..m-1: its mean is known
    r = (i * centred).sum(0) / i.pow(2).sum()  # Pearson's r per column (both sides have the same variance)
    n = r.numel()
    mean_z = r.mean().item() * math.sqrt((m - 1) * n)  # var(r) = 1 / (m - 1) for a uniform permutation
    spread_z = ((r.pow(2) * (m - 1)).sum().item() - n) / math.sqrt(2 * n)  # (m - 1) r^2 is about chi-square(1)
    assert abs(mean_z) < Z, f"mean correlation z = {mean_z:.2f}"
    assert abs(spread_z) < Z, f"spread of the correlation z = {spread_z:.2f}"


def test_the_statistics_see_a_permutation_that_is_not_random():
    # the tests' power: leaving 2% of the columns unpermuted is seen at once
    m, n = 33, 2_000
    p = permuted_rows(m, round_keys(seed=0, layer=0, k=1, n=n)).long()
    p[:, ::50] = torch.arange(m)[:, None]
    count = (p == torch.arange(m)[:, None]).sum(0)
    assert (count.sum().item() - n) / math.sqrt(n) > Z


@pytest.mark.parametrize("m, n", [(33, 20_000), (784, 4_000)])
def test_signs_are_balanced_and_uncorrelated_with_row_neighbours_columns_and_p(m, n):
    # signed RPP's signs against independent fair coins: each statistic is a sum of N products of +-1, z = sum / sqrt(N)
    keys = round_keys(seed=0, layer=0, k=1, n=n)
    s = 1 - 2 * negative_signs(m, sign_keys(keys)).double()  # (m, columns)
    p = permuted_rows(m, keys).long()
    rows = torch.arange(m)[:, None].expand(m, n)

    def z(a: torch.Tensor, b: torch.Tensor | None = None) -> float:
        products = a if b is None else a * b
        return products.sum().item() / math.sqrt(products.numel())

    statistics = {
        "balance": z(s),
        "row i's low bit": z(s, 1 - 2 * (rows % 2).double()),
        "first half of the rows": z(s, torch.where(rows < m // 2, 1.0, -1.0)),
        "neighbour rows": z(s[1:], s[:-1]),
        "neighbour columns": z(s[:, 1:], s[:, :-1]),
        "P(i)'s low bit": z(s, 1 - 2 * (p % 2).double()),
        "P(i) in the first half": z(s, torch.where(p < m // 2, 1.0, -1.0)),
    }
    assert all(abs(value) < Z for value in statistics.values()), statistics
    per_column = s.sum(0).pow(2) / m  # about chi-square(1) per column for fair coins
    spread = (per_column.sum().item() - n) / math.sqrt(2 * n)
    assert abs(spread) < Z, f"spread of the columns' balance z = {spread:.2f}"


def test_the_sign_statistics_see_signs_that_are_not_random():
    # their power: signs that follow the row's low bit in 2% of the columns are seen at once
    m, n = 784, 4_000
    s = 1 - 2 * negative_signs(m, sign_keys(round_keys(seed=0, layer=0, k=1, n=n))).double()
    s[:, ::50] = 1 - 2 * (torch.arange(m)[:, None] % 2).double()
    rows = torch.arange(m)[:, None].expand(m, n)
    products = s * (1 - 2 * (rows % 2).double())
    assert products.sum().item() / math.sqrt(products.numel()) > Z
