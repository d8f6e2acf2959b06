"""The layers give the same bits at 1 and 2 threads (a SLURM job's and a laptop's): an RPP layer's output and gradients
(stored, generated, random and identity P, with and without bias, signed and unsigned, on each CPU backend) and
HashedLinear's, switching threads in one process; and the fused step at the paper's sizes on 1 to 4 threads.

The fused kernels' sums over W_p's columns are split into runs by the sizes alone (backends.FUSED_RUNS); split by
the thread count, as before, dx and dW differed in their last bits between 1 and 2 threads. Products that MKL
computes outside the kernels (eager, materialising, identity P, nn.Linear) are MKL's: equal at 1 and 2 threads here,
but not always at 3 (a 32 x 300 @ 300 x 24 product differed), so only the fused step is held to any count."""

import os

import pytest
import torch

from rppnets.layers.hashed_linear import HashedLinear
from rppnets.layers.rpp_linear import RPPLinear

KERNELS_OFF = os.environ.get("RPPNETS_CPU_KERNELS") == "0"
kernels = pytest.mark.skipif(KERNELS_OFF, reason="the C++ kernels are switched off (RPPNETS_CPU_KERNELS=0)")
BACKENDS = [pytest.param("cpu-fused", marks=kernels), pytest.param("cpu", marks=kernels), "eager"]


def step_on_threads(layer: torch.nn.Module, x: torch.Tensor, counts=(1, 2)) -> dict[int, list[torch.Tensor]]:
    """For each thread count: y and, after a backward of y.square().mean() from cleared gradients, the gradients of x
    and of every parameter."""
    saved = torch.get_num_threads()
    results = {}
    try:
        for threads in counts:
            torch.set_num_threads(threads)
            x.grad = None
            layer.zero_grad(set_to_none=True)
            y = layer(x)
            y.square().mean().backward()
            results[threads] = [y.detach(), x.grad, *(param.grad for param in layer.parameters())]
    finally:
        torch.set_num_threads(saved)
    return results


def assert_same_bits(results: dict[int, list[torch.Tensor]], case) -> None:
    names = ("y", "dx", "dW", "db")
    for threads, got in results.items():
        for name, a, b in zip(names, got, results[1]):
            assert torch.equal(a, b), f"{case}: {name} at {threads} threads differs from 1 thread by " \
                                      f"{(a - b).abs().max().item():.3g}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("signs", [False, True], ids=["unsigned", "signed"])
def test_rpp_layer_gives_the_same_bits_on_1_and_2_threads(backend, signs):
    # 10 copies of 24 columns: 240 columns, 4 blocks of the fused step, each holding several copies of a column of W
    m, n, k = 100, 24, 10
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(16, m, generator=generator, requires_grad=True)
    for permutation in ("stored", "generated", "random", "identity"):
        for bias in ("full", "none"):
            torch.manual_seed(1)
            layer = RPPLinear(m, n, k, bias=bias, permutation=permutation, seed=2, signs=signs)
            layer.backend = backend
            assert_same_bits(step_on_threads(layer, x), (backend, permutation, bias, signs))


@kernels
def test_fused_step_of_the_paper_s_layers_gives_the_same_bits_on_1_to_4_threads():
    # the sizes the experiments train: 784 -> 10 x 100 and 1000 -> 10 x 100, at batch 128 (16 blocks, 4 runs)
    for m in (784, 1000):
        x = torch.randn(128, m, generator=torch.Generator().manual_seed(m), requires_grad=True)
        for permutation, signs in (("stored", False), ("generated", False), ("generated", True)):
            layer = RPPLinear(m, 10, 100, permutation=permutation, seed=3, signs=signs)
            assert_same_bits(step_on_threads(layer, x, (1, 2, 3, 4)), (m, permutation, signs))


def test_hashed_layer_gives_the_same_bits_on_1_and_2_threads():
    torch.manual_seed(0)
    layer = HashedLinear(100, 240, buckets=100 * 24)
    x = torch.randn(16, 100, generator=torch.Generator().manual_seed(0), requires_grad=True)
    assert_same_bits(step_on_threads(layer, x), "hashed")
