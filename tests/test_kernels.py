"""The compiled kernels give exactly what the eager reference gives: the C++ CPU kernel, and the Triton kernels run
by Triton's interpreter on the CPU (the same code that runs on a GPU)."""

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import forward_backward

from rppnets import cpu_kernels
from rppnets.index_sources import GeneratedIndex, StoredIndex
from rppnets.permutation import build_index, permuted_rows, round_keys
from rppnets.rpp_linear import PERMUTATIONS, RPPLinear

# edge cases of the Feistel domain: tiny, powers of two and their neighbours, the project's sizes
ROWS = [1, 2, 3, 4, 5, 15, 16, 17, 100, 255, 256, 257, 513, 784, 1000, 1024, 1025, 2049]


@pytest.fixture(scope="module")
def cpu_kernel():
    if os.environ.get("RPPNETS_CPU_KERNELS") == "0":
        pytest.skip("the C++ kernels are switched off (RPPNETS_CPU_KERNELS=0)")
    module = cpu_kernels.kernel()
    assert module is not None, "the C++ kernels did not build (see the warning)"
    return module


def test_cpu_kernel_rows_and_inverse_equal_the_eager_reference(cpu_kernel):
    keys = round_keys(seed=7, layer=3, k=4, n=5)
    for m in ROWS:
        for inverse in (False, True):
            assert torch.equal(cpu_kernels.feistel_rows(keys, m, inverse), permuted_rows(m, keys, inverse)), (m, inverse)


def test_cpu_kernels_build_the_w_p_of_an_eager_gather_in_every_mode(cpu_kernel):
    m, n, k = 300, 7, 6
    generated = GeneratedIndex(m, n, k, round_keys(seed=1, layer=2, k=k, n=n))
    stored = StoredIndex(build_index(m, n, k, seed=1, layer=2), n, k)
    index = stored.gather_index().long()
    assert torch.equal(generated.gather_index(), stored.gather_index())
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        weight = torch.randn(m, n).to(dtype)
        want = weight.reshape(-1)[index].view(m, -1)
        assert torch.equal(generated.permuted_weight(weight), want), dtype  # P generated inside the kernel
        assert torch.equal(stored.permuted_weight(weight), want), dtype  # P read from the index


@pytest.mark.parametrize("permutation", PERMUTATIONS)
def test_layer_gives_identical_results_with_and_without_the_kernels(cpu_kernel, monkeypatch, permutation):
    layer = RPPLinear(100, 4, 5, permutation=permutation, seed=3)
    x = torch.randn(8, 100, requires_grad=True)
    with_kernels = forward_backward(layer, x)
    monkeypatch.setattr(cpu_kernels, "kernel", lambda: None)
    for got, eager in zip(with_kernels, forward_backward(layer, x)):
        assert torch.equal(got, eager)


TRITON_CHECK = textwrap.dedent(
    """
    import torch
    from rppnets import triton_kernels as kernels
    from rppnets.index_sources import GeneratedIndex
    from rppnets.permutation import build_index, round_keys

    for m, n, k in [(1, 1, 1), (2, 3, 2), (5, 2, 3), (33, 4, 5), (100, 3, 7), (257, 2, 3), (784, 2, 2)]:
        keys = round_keys(4, 2, k, n)
        source = GeneratedIndex(m, n, k, keys)
        index = source.gather_index().long()
        weight = torch.randn(m, n, dtype=torch.float64)
        grad_wp = torch.randn(m, k * n, dtype=torch.float64)
        want_wp = weight.reshape(-1)[index].view(m, -1)
        want_dw = torch.zeros(m * n, dtype=torch.float64).index_add_(0, index, grad_wp.reshape(-1)).view(m, n)
        for p in ({"keys": keys}, {"index": build_index(m, n, k, 4, 2)}):
            assert torch.equal(kernels.permuted_weight(weight, k, **p), want_wp), (m, n, k, p.keys())
            got = kernels.fold_weight_grad(grad_wp, n, k, torch.float64, **p)
            torch.testing.assert_close(got, want_dw, atol=1e-12, rtol=0)
        bf16 = kernels.fold_weight_grad(grad_wp.bfloat16(), n, k, torch.float32, keys=keys)
        assert bf16.dtype == torch.float32
        torch.testing.assert_close(bf16, want_dw.float(), atol=0.1, rtol=0.05)
    print("triton kernels agree")
    """
)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs Triton (CUDA builds of PyTorch)")
def test_triton_kernels_in_the_interpreter_equal_the_eager_reference():
    # TRITON_INTERPRET must be set before Triton compiles anything, so this runs in a fresh process
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": src}
    result = subprocess.run([sys.executable, "-c", TRITON_CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "triton kernels agree" in result.stdout


@pytest.mark.parametrize("m", [200, 784, 70000])  # P stored as uint8, int16, int32
def test_cpu_gather_and_fold_equal_index_select_and_bincount_bit_for_bit(cpu_kernel, m):
    n, k = 3, 4
    rows = build_index(m, n, k, seed=2, layer=1)
    flat = StoredIndex(rows, n, k).gather_index().long()
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        weight, grad_wp = torch.randn(m, n).to(dtype), torch.randn(m, k * n).to(dtype)
        assert torch.equal(cpu_kernels.gather_weight(rows, weight), weight.reshape(-1)[flat].view(m, -1))
        accumulate = torch.promote_types(dtype, torch.float32)
        want = torch.bincount(flat, grad_wp.reshape(-1).to(accumulate), minlength=m * n).view(m, n)
        assert torch.equal(cpu_kernels.fold_weight_grad(rows, grad_wp, n), want), (m, dtype)
