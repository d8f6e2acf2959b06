"""The compiled kernels give what the eager reference gives: the C++ CPU kernels (materialising and fused), and the
Triton kernels (materialising and fused) run by Triton's interpreter on the CPU (the same code that runs on a GPU),
unsigned and signed; and the C++ build's key."""

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import forward_backward

from rppnets.layers import backends, cpu_kernels
from rppnets.layers.backends import CppBackend, EagerBackend, Permutation, flat_index
from rppnets.layers.permutation import build_index, permuted_rows, round_keys, sign_keys
from rppnets.layers.rpp_linear import PERMUTATIONS, RPPLinear

# edge cases of the Feistel domain: tiny, powers of two and their neighbours, the project's sizes
ROWS = [1, 2, 3, 4, 5, 15, 16, 17, 100, 255, 256, 257, 513, 784, 1000, 1024, 1025, 2049]
EAGER = EagerBackend()


@pytest.fixture(scope="module")
def cpu_kernel():
    if os.environ.get("RPPNETS_CPU_KERNELS") == "0":
        pytest.skip("the C++ kernels are switched off (RPPNETS_CPU_KERNELS=0)")
    module = cpu_kernels.kernel()
    assert module is not None, "the C++ kernels did not build (see the warning)"
    return module


def permutations(m: int, n: int, k: int, seed: int = 1, layer: int = 2) -> list[Permutation]:
    """The same Feistel P as stored rows and as keys, and the identity."""
    keys = round_keys(seed, layer, k, n)
    return [
        Permutation("index", build_index(m, n, k, seed, layer), m, n, k),
        Permutation("keys", keys, m, n, k),
        Permutation("identity", None, m, n, k),
    ]


def test_cpu_kernel_rows_and_inverse_equal_the_eager_reference(cpu_kernel):
    keys = round_keys(seed=7, layer=3, k=4, n=5)
    for m in ROWS + [65535, 65536, 65537, 70000]:  # around 2^16 too, where the halves pass 8 bits
        for inverse in (False, True):
            assert torch.equal(cpu_kernel.feistel_rows(keys, m, inverse), permuted_rows(m, keys, inverse)), (m, inverse)


def test_cpu_kernels_build_the_w_p_of_an_eager_gather_in_every_mode(cpu_kernel):
    m, n, k = 300, 7, 6
    cpp = CppBackend(cpu_kernel, fused=False)
    stored, generated, _ = permutations(m, n, k)
    index = flat_index(stored).long()
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        weight = torch.randn(m, n).to(dtype)
        want = weight.reshape(-1)[index].view(m, -1)
        assert torch.equal(cpp.permuted_weight(weight, generated), want), dtype  # P generated inside the kernel
        assert torch.equal(cpp.permuted_weight(weight, stored), want), dtype  # P read from the index
        assert torch.equal(EAGER.permuted_weight(weight, generated), want), dtype


@pytest.mark.parametrize("m", [200, 784, 70000])  # P stored as uint8, int16, int32
def test_cpu_gather_and_fold_equal_index_select_and_bincount_bit_for_bit(cpu_kernel, m):
    n, k = 3, 4
    rows = build_index(m, n, k, seed=2, layer=1)
    flat = flat_index(Permutation("index", rows, m, n, k)).long()
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        weight, grad_wp = torch.randn(m, n).to(dtype), torch.randn(m, k * n).to(dtype)
        assert torch.equal(cpu_kernel.gather_weight(rows, weight), weight.reshape(-1)[flat].view(m, -1))
        accumulate = torch.promote_types(dtype, torch.float32)
        want = torch.bincount(flat, grad_wp.reshape(-1).to(accumulate), minlength=m * n).view(m, n)
        assert torch.equal(cpu_kernel.fold_weight_grad(rows, grad_wp, n), want), (m, dtype)


@pytest.mark.parametrize("m, n, k", [(1, 1, 1), (5, 3, 2), (300, 7, 6), (784, 10, 100), (70000, 2, 3)])
def test_fused_products_equal_the_eager_ones(cpu_kernel, m, n, k):
    fused = CppBackend(cpu_kernel, fused=True)
    batch = 9
    for perm in permutations(m, n, k):
        x, weight, grad_y = torch.randn(batch, m), torch.randn(m, n), torch.randn(batch, k * n)
        for dtype, tol in ((torch.float64, 1e-10), (torch.bfloat16, 0.05)):
            x_, w_, dy_ = x.to(dtype), weight.to(dtype), grad_y.to(dtype)
            want_y = EAGER.matmul(x_.double(), w_.double(), perm)
            want_dx, want_dw = EAGER.backward(dy_.double(), x_.double(), w_.double(), perm)
            y = fused.matmul(x_, w_, perm)
            dx, dw = fused.backward(dy_, x_, w_, perm)
            assert y.dtype == dx.dtype == dtype and dw.dtype == torch.promote_types(dtype, torch.float32)
            for got, want in ((y, want_y), (dx, want_dx), (dw, want_dw)):
                torch.testing.assert_close(got.double(), want, atol=tol * want.abs().max().item(), rtol=tol)
            # each product alone: no dx without W, no dW without x
            assert fused.backward(dy_, None, w_, perm)[1] is None and fused.backward(dy_, x_, None, perm)[0] is None
            assert torch.equal(fused.backward(dy_, x_, None, perm)[1], dw)


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
def test_fused_blocks_cover_every_column_with_its_own_signs_whatever_their_width(cpu_kernel, monkeypatch, signed):
    m, n, k = 100, 3, 7  # 21 columns: blocks of 1, 4 (a partial last block), 21 and more
    perms = signed_permutations(m, n, k)[:2] if signed else permutations(m, n, k)[:1]  # signed: stored, generated
    for perm in perms:
        x, weight = torch.randn(4, m, dtype=torch.float64), torch.randn(m, n, dtype=torch.float64)
        grad_y = torch.randn(4, k * n, dtype=torch.float64)
        want = (EAGER.matmul(x, weight, perm), *EAGER.backward(grad_y, x, weight, perm))
        for block in (1, 4, 21, 64):
            monkeypatch.setattr(backends, "FUSED_BLOCK", block)
            fused = CppBackend(cpu_kernel, fused=True)
            got = (fused.matmul(x, weight, perm), *fused.backward(grad_y, x, weight, perm))
            for a, b in zip(got, want):
                torch.testing.assert_close(a, b, atol=1e-12, rtol=0, msg=f"{perm.kind}, block {block}")


@pytest.mark.parametrize("permutation", PERMUTATIONS)
@pytest.mark.parametrize("signs", [False, True], ids=["unsigned", "signed"])
def test_layer_gives_the_same_bits_on_the_fused_kernels_and_eagerly(cpu_kernel, permutation, signs):
    # eager PyTorch (what runs without a compiler) sums the backward as the fused default does: the same bits; the
    # materialising kernels sum through the whole W_p and dW_p, as the eager step on CUDA does
    layer = RPPLinear(100, 24, 10, permutation=permutation, seed=3, signs=signs)  # 240 columns: 4 blocks, 4 runs
    x = torch.randn(16, 100, requires_grad=True)
    for dtype in (torch.float32, torch.bfloat16):
        results = {}
        for backend in ("cpu-fused", "eager", "cpu"):
            layer.backend = backend
            results[backend] = forward_backward(layer.to(dtype), x.detach().to(dtype).requires_grad_())
        for got, eager in zip(results["cpu-fused"], results["eager"]):
            assert torch.equal(got, eager), (dtype, (got - eager).abs().max())
        tol = 0.05 if dtype == torch.bfloat16 else 1e-5
        for got, eager in zip(results["cpu"], results["eager"]):
            torch.testing.assert_close(got.double(), eager.double(), atol=tol * eager.abs().max().item(), rtol=tol)


def test_fused_step_on_several_threads_inside_autograd(cpu_kernel):
    # worker threads must run the blocks' products below autograd, like the calling thread
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        layer = RPPLinear(50, 4, 64, permutation="generated", seed=1)  # 256 columns: 4 blocks, one run per thread
        x = torch.randn(8, 50, requires_grad=True)
        fused = forward_backward(layer, x)
        layer.backend = "eager"
        for got, want in zip(fused, forward_backward(layer, x)):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    finally:
        torch.set_num_threads(threads)


def signed_permutations(m: int, n: int, k: int, seed: int = 1, layer: int = 2) -> list[Permutation]:
    """permutations(), each signed with the sign keys of (seed, layer)."""
    signs = sign_keys(round_keys(seed, layer, k, n))
    return [Permutation(perm.kind, perm.p, m, n, k, signs) for perm in permutations(m, n, k, seed, layer)]


@pytest.mark.parametrize("m", [200, 784, 70000])  # P stored as uint8, int16, int32
def test_signed_cpu_kernels_equal_the_eager_reference_bit_for_bit(cpu_kernel, m):
    n, k = 3, 4
    cpp = CppBackend(cpu_kernel, fused=False)
    stored, generated, identity = signed_permutations(m, n, k)
    negative = stored.negative()
    assert negative.any() and not negative.all()
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        weight, grad_wp = torch.randn(m, n).to(dtype), torch.randn(m, k * n).to(dtype)
        unsigned_wp = weight.reshape(-1)[flat_index(stored).long()].view(m, -1)
        want_wp = torch.where(negative, -unsigned_wp, unsigned_wp)
        for perm in (stored, generated):  # the index's rows, and P generated inside the kernel
            assert torch.equal(cpp.permuted_weight(weight, perm), want_wp), (m, dtype, perm.kind)
            assert torch.equal(EAGER.permuted_weight(weight, perm), want_wp), (m, dtype, perm.kind)
            assert torch.equal(cpp.fold(grad_wp, perm), EAGER.fold(grad_wp, perm)), (m, dtype, perm.kind)
        accumulate = torch.promote_types(dtype, torch.float32)
        signed_terms = torch.where(negative, -grad_wp, grad_wp).to(accumulate).reshape(-1)
        want_dw = torch.bincount(flat_index(stored).long(), signed_terms, minlength=m * n).view(m, n)
        assert torch.equal(cpp.fold(grad_wp, stored), want_dw), (m, dtype)
        wp_identity = torch.cat([weight] * k, dim=1)
        assert torch.equal(cpp.permuted_weight(weight, identity), torch.where(negative, -wp_identity, wp_identity))


@pytest.mark.parametrize("m, n, k", [(1, 1, 1), (5, 3, 2), (300, 7, 6), (784, 10, 100), (70000, 2, 3)])
def test_signed_fused_products_equal_the_eager_ones(cpu_kernel, m, n, k):
    fused = CppBackend(cpu_kernel, fused=True)
    for perm in signed_permutations(m, n, k):
        x, weight, grad_y = torch.randn(9, m), torch.randn(m, n), torch.randn(9, k * n)
        for dtype, tol in ((torch.float64, 1e-10), (torch.bfloat16, 0.05)):
            x_, w_, dy_ = x.to(dtype), weight.to(dtype), grad_y.to(dtype)
            want = (EAGER.matmul(x_.double(), w_.double(), perm), *EAGER.backward(dy_.double(), x_.double(),
                                                                                   w_.double(), perm))
            got = (fused.matmul(x_, w_, perm), *fused.backward(dy_, x_, w_, perm))
            for a, b in zip(got, want):
                torch.testing.assert_close(a.double(), b, atol=tol * b.abs().max().item(), rtol=tol)
            assert torch.equal(fused.backward(dy_, x_, None, perm)[1], got[2])  # dW alone: the same sums


def test_signed_kernels_refuse_sign_keys_of_the_wrong_size(cpu_kernel):
    rows = build_index(10, 2, 3, seed=0, layer=0)
    with pytest.raises(RuntimeError, match="signs: expected contiguous CPU int32 sign keys, one per column"):
        cpu_kernel.gather_weight(rows, torch.randn(10, 2), torch.zeros(5, dtype=torch.int32))


HOOKS_CHECK = textwrap.dedent(
    """
    import torch
    from rppnets.layers.rpp_linear import RPPLinear

    torch.set_num_threads(2)
    layer = RPPLinear(50, 4, 64, permutation="generated")  # 256 columns: a run of blocks per thread
    x = torch.randn(8, 50, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
        layer(x).sum().backward()
    print("done")
    """
)


def test_fused_step_with_python_saved_tensor_hooks_on_two_threads(cpu_kernel):
    # worker threads copy the caller's thread-local state, Python hooks included, which takes the GIL: the kernels
    # must run without it, or the step waits forever (in a fresh process, so that a hang fails instead of blocking)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src}
    result = subprocess.run([sys.executable, "-c", HOOKS_CHECK], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "done" in result.stdout, result.stderr[-3000:]


def test_the_build_folder_is_keyed_on_source_flags_torch_and_python(monkeypatch, tmp_path):
    key = cpu_kernels.build_key()
    assert len(key) == 16 and key == cpu_kernels.build_key()
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert cpu_kernels.build_directory() == tmp_path / f"rppnets_cpu_kernels_{key}"
    monkeypatch.setattr(torch, "__version__", torch.__version__ + "+other")
    assert cpu_kernels.build_key() != key
    monkeypatch.undo()
    source = tmp_path / "cpu_kernels.cpp"
    source.write_text(cpu_kernels.SOURCE.read_text() + "\n// changed\n")
    monkeypatch.setattr(cpu_kernels, "SOURCE", source)
    assert cpu_kernels.build_key() != key


def test_checkouts_with_the_same_source_build_from_one_copy_of_it(cpu_kernel):
    """build.ninja records the source's path: built from a checkout's own path, every other checkout with the same
    source would rewrite it and rebuild (~35 s), back and forth."""
    folder = cpu_kernels.build_directory()
    ninja = (folder / "build.ninja").read_text()
    assert str(folder / "cpu_kernels.cpp") in ninja and str(cpu_kernels.SOURCE) not in ninja
    assert (folder / "cpu_kernels.cpp").read_bytes() == cpu_kernels.SOURCE.read_bytes()


def test_the_source_copy_follows_a_changed_source(monkeypatch, tmp_path):
    source = tmp_path / "checkout" / "cpu_kernels.cpp"
    source.parent.mkdir()
    source.write_text("// one\n")
    monkeypatch.setattr(cpu_kernels, "SOURCE", source)
    copy = cpu_kernels.build_source(tmp_path)
    assert copy == tmp_path / "cpu_kernels.cpp" and copy.read_text() == "// one\n"
    source.write_text("// two\n")
    assert cpu_kernels.build_source(tmp_path).read_text() == "// two\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkout", "cpu_kernels.cpp"]  # no temporary left


TRITON_CHECK = textwrap.dedent(
    """
    import torch
    from rppnets.layers import triton_kernels as kernels
    from rppnets.layers.backends import EagerBackend, Permutation, TritonBackend, flat_index
    from rppnets.layers.permutation import build_index, negative_signs, permuted_rows, round_keys, sign_keys

    triton, eager = TritonBackend(kernels), EagerBackend()
    for m, n, k in [(1, 1, 1), (2, 3, 2), (5, 2, 3), (33, 4, 5), (100, 3, 7), (257, 2, 3), (784, 2, 2)]:
        keys = round_keys(4, 2, k, n)
        index = flat_index(Permutation("index", permuted_rows(m, keys), m, n, k)).long()
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
        # signed: each entry of W_p, and each term of the fold, with its sign
        signs = sign_keys(keys)
        sign = 1 - 2 * negative_signs(m, signs).double()
        want_signed_dw = torch.zeros(m * n, dtype=torch.float64).index_add_(0, index, (grad_wp * sign).reshape(-1))
        for p in ({"keys": keys}, {"index": build_index(m, n, k, 4, 2)}):
            assert torch.equal(kernels.permuted_weight(weight, k, **p, signs=signs), want_wp * sign), (m, n, k)
            got = kernels.fold_weight_grad(grad_wp, n, k, torch.float64, **p, signs=signs)
            torch.testing.assert_close(got, want_signed_dw.view(m, n), atol=1e-12, rtol=0)
        # the CUDA backend's step, composed of those kernels, against the eager one
        x, grad_y = torch.randn(3, m, dtype=torch.float64), torch.randn(3, k * n, dtype=torch.float64)
        signed = [Permutation(kind, q, m, n, k, signs) for kind, q in
                  (("keys", keys), ("index", build_index(m, n, k, 4, 2)), ("identity", None))]
        for perm in [Permutation("keys", keys, m, n, k), Permutation("index", build_index(m, n, k, 4, 2), m, n, k),
                     *signed]:
            torch.testing.assert_close(triton.matmul(x, weight, perm), eager.matmul(x, weight, perm))
            for got, want in zip(triton.backward(grad_y, x, weight, perm), eager.backward(grad_y, x, weight, perm)):
                torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    print("triton kernels agree")
    """
)


FUSED_TRITON_CHECK = textwrap.dedent(
    """
    import itertools

    import torch
    from rppnets.layers import backends, triton_kernels as kernels
    from rppnets.layers.backends import EagerBackend, Permutation, TritonBackend
    from rppnets.layers.permutation import build_index, random_index, round_keys, sign_keys
    from rppnets.layers.rpp_linear import BIAS_MODES, PERMUTATIONS, RPPLinear

    fused, eager = TritonBackend(kernels, fused=True), EagerBackend()
    default_tiles = kernels.FUSED_TILES
    kernels.FUSED_TILES, kernels.FOLD_TILES = (16, 16, 16), (16, 4, 4)  # the smallest tiles: more edges per product
    # odd sizes, so that tiles end inside W_p, x and dW; m = 260: an int16 index and a walked 512-value domain
    for m, n, k, batch in [(1, 1, 1, 2), (7, 3, 2, 5), (17, 4, 3, 6), (33, 5, 4, 9), (260, 2, 2, 3)]:
        keys = round_keys(4, 2, k, n)
        perms = {"generated": Permutation("keys", keys, m, n, k),
                 "stored": Permutation("index", build_index(m, n, k, 4, 2), m, n, k),
                 "random": Permutation("index", random_index(m, n, k, 4, 2), m, n, k)}
        for name in list(perms):  # signed RPP: the same P, each entry with its sign
            perms[f"{name}, signed"] = Permutation(perms[name].kind, perms[name].p, m, n, k, sign_keys(keys))
        perms["identity, signed"] = Permutation("identity", None, m, n, k, sign_keys(keys))
        x, weight = torch.randn(batch, m, dtype=torch.float64), torch.randn(m, n, dtype=torch.float64)
        grad_y = torch.randn(batch, k * n, dtype=torch.float64)
        for name, perm in perms.items():
            case = (m, n, k, batch, name)
            torch.testing.assert_close(fused.matmul(x, weight, perm), eager.matmul(x, weight, perm), msg=str(case))
            want_dx, want_dw = eager.backward(grad_y, x, weight, perm)
            got_dx, got_dw = fused.backward(grad_y, x, weight, perm)
            torch.testing.assert_close(got_dx, want_dx, atol=1e-12, rtol=1e-12, msg=str(case))
            torch.testing.assert_close(got_dw, want_dw, atol=1e-12, rtol=1e-12, msg=str(case))
            # each product alone: no dx without W, no dW without x
            assert fused.backward(grad_y, None, weight, perm)[1] is None, case
            assert fused.backward(grad_y, x, None, perm)[0] is None, case
        # float32 and float16 in, float32 sums: dtypes of the eager step, values within their rounding. Not bfloat16:
        # the interpreter's tl.dot gets it wrong (Triton 3.8, even a bare 16 x 16 product); the CUDA tests check it.
        # At the sizes up to two tiles: the larger ones (40 s in the interpreter) add no dtype path
        if m > 17:
            continue
        for (dtype, tol), name in itertools.product(((torch.float32, 1e-5), (torch.float16, 1e-2)),
                                                    ("generated", "generated, signed")):
            x_, w_, dy_ = x.to(dtype), weight.to(dtype), grad_y.to(dtype)
            perm = perms[name]
            got = (fused.matmul(x_, w_, perm), *fused.backward(dy_, x_, w_, perm))
            want = (eager.matmul(x_, w_, perm), *eager.backward(dy_, x_, w_, perm))
            for a, b in zip(got, want):
                assert a.dtype == b.dtype, (dtype, a.dtype, b.dtype)
                torch.testing.assert_close(a.double(), b.double(), atol=tol * max(b.abs().max().item(), 1), rtol=tol)

    # the layer on the fused backend (its default tiles), through the registered ops, in every mode and bias mode,
    # against the eager backend; the interpreter runs Triton on CPU tensors, so the backend is lent to the CPU here
    kernels.FUSED_TILES = default_tiles
    fused.device_types = ("cpu",)
    backends._BACKENDS["triton-fused"] = fused
    for permutation in PERMUTATIONS:
        for bias, signs in [(bias, False) for bias in BIAS_MODES] + [("full", True)]:
            torch.manual_seed(0)
            layer = RPPLinear(33, 4, 3, bias=bias, permutation=permutation, seed=5, layer=2, signs=signs).double()
            x = torch.randn(7, 33, dtype=torch.float64, requires_grad=True)
            results = []
            for backend in ("triton-fused", "eager"):
                layer.backend = backend
                for param in (x, *layer.parameters()):
                    param.grad = None
                y = layer(x)
                y.square().mean().backward()
                results.append([y, *(param.grad for param in (x, *layer.parameters()))])
            for got, want in zip(*results):
                torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12, msg=f"{permutation}, {bias}, {signs}")
    print("fused triton kernels agree")
    """
)


@pytest.mark.long  # minutes in the interpreter; on a GPU, benchmarks/gpu_checks.sh runs the same kernels compiled
@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs Triton (CUDA builds of PyTorch)")
def test_fused_triton_kernels_in_the_interpreter_equal_the_eager_reference():
    # the fused step at odd sizes (tile edges and masks), every kind of P, each product alone, three dtypes, and the
    # layer in every mode and bias mode; in a fresh process, as below, without loading the C++ kernels (not needed)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": src, "RPPNETS_CPU_KERNELS": "0"}
    result = subprocess.run([sys.executable, "-c", FUSED_TRITON_CHECK], env=env, capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "fused triton kernels agree" in result.stdout

@pytest.mark.long  # a minute in the interpreter; on a GPU, benchmarks/gpu_checks.sh runs the kernels compiled
@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs Triton (CUDA builds of PyTorch)")
def test_triton_kernels_in_the_interpreter_equal_the_eager_reference():
    # TRITON_INTERPRET must be set before Triton compiles anything, so this runs in a fresh process
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": src}
    result = subprocess.run([sys.executable, "-c", TRITON_CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "triton kernels agree" in result.stdout
