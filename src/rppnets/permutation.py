"""The permutation P of an RPP layer: a keyed Feistel bijection per column copy, and index sources.

P[h, :, j] (copy h, column j) is a pseudo-random permutation of 0..m-1: a Feistel network on
t = max(1, ceil(log2 m)) bits, halves of ceil(t/2) and floor(t/2) bits that swap sizes every round,
with cycle walking for outputs >= m. Round keys come from splitmix64 of (seed, layer, h, j, round),
so P depends only on those and on m: it is identical on every device, in every process, and after
a checkpoint reload. All arithmetic is int32 and never overflows, so CPU and CUDA agree bit for bit.

Rounds: 8. Measured over 60,000 columns (chi-square and correlation z-scores against a uniform
random permutation), 4 rounds are visibly non-uniform (position chi-square z = 12 at m = 100,
z = 23 for the distribution of P(i+1) - P(i) at m = 784) even with a truly random round function;
6 rounds fix m >= 33 but not m = 16; 8 rounds pass everything we tried.

Cost, 2-thread CPU (m = 784, 1000 columns, 784k elements): 8 rounds plus cycle walking take about
2.5 ms, 3.2 ns per element, of which the nonzero() that finds the 23% out-of-range elements is
about 1 ms. Powers of two need no walking.
"""

import weakref

import numpy as np
import torch

ROUNDS = 8
MAX_IN_FEATURES = 2**30  # 30 bits: halves of at most 15 bits keep every product below 2**31

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 arrays (numpy uint64 wraps around, as we want)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _absorb(z: np.ndarray, value) -> np.ndarray:
    # (value + 1) * golden is never 0, so absorbing 0 still changes the state
    return _mix(z ^ ((np.asarray(value, dtype=np.uint64) + np.uint64(1)) * _GOLDEN))


def round_keys(seed: int, layer: int, k: int, n: int) -> torch.Tensor:
    """Round keys of all k*n columns: int32 tensor (2, ROUNDS, k*n), column c = h*n + j.

    keys[0] is XORed into the round input (15 bits), keys[1] is the odd multiplier (16 bits).
    """
    with np.errstate(over="ignore"):
        z = _absorb(_absorb(np.zeros(1, dtype=np.uint64), seed), layer)
        z = _absorb(z, np.arange(k, dtype=np.uint64)[:, None])  # (k, 1)
        z = _absorb(z, np.arange(n, dtype=np.uint64)[None, :])  # (k, n)
        z = _absorb(z, np.arange(ROUNDS, dtype=np.uint64)[:, None, None])  # (ROUNDS, k, n)
    xor_key = z & np.uint64(0x7FFF)
    multiplier = ((z >> np.uint64(16)) & np.uint64(0xFFFF)) | np.uint64(1)
    keys = np.stack([xor_key, multiplier]).astype(np.int32).reshape(2, ROUNDS, k * n)
    return torch.from_numpy(keys)


def feistel_bits(m: int) -> int:
    """Bits t of the Feistel domain 0..2**t - 1 that covers 0..m-1."""
    return max(1, (m - 1).bit_length())


def _round(v: torch.Tensor, xor_key, multiplier, width: int) -> torch.Tensor:
    # v, xor_key < 2**15 and multiplier < 2**16, so the product stays below 2**31
    f = torch.bitwise_xor(v, xor_key)
    f.mul_(multiplier).bitwise_and_(0xFFFF)
    return f.bitwise_right_shift_(16 - width)  # the top `width` bits of the low 16


def _feistel(x: torch.Tensor, k1: torch.Tensor, k2: torch.Tensor, t: int, inverse: bool):
    """One pass of the t-bit Feistel network (no cycle walking); k1[r], k2[r] broadcast with x."""
    wl, wr = (t + 1) // 2, t // 2
    left, right = x >> wr, x & ((1 << wr) - 1)
    for r in reversed(range(ROUNDS)) if inverse else range(ROUNDS):
        if inverse:  # undo (L, R) -> (R, L ^ F(R))
            f = _round(left, k1[r], k2[r], wr)
            left, right = f.bitwise_xor_(right), left
        else:
            f = _round(right, k1[r], k2[r], wl)
            left, right = right, f.bitwise_xor_(left)
        wl, wr = wr, wl
    # ROUNDS is even, so the halves are back to (ceil(t/2), floor(t/2)) bits
    return left.bitwise_left_shift_(wr).bitwise_or_(right)


def permuted_rows(m: int, keys: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """P as an int32 tensor (m, c) on keys' device: column c is the permutation keyed by keys[:, :, c].

    With inverse=True, returns the inverse permutations instead (the rounds run backwards).
    """
    t = feistel_bits(m)
    k1, k2 = keys[0], keys[1]  # (ROUNDS, c)
    rows = torch.arange(m, dtype=torch.int32, device=keys.device)[:, None]
    p = _feistel(rows, k1, k2, t, inverse)  # (m, c)
    if m < 1 << t:
        # cycle walking: re-apply the permutation to the few outputs still >= m
        flat = p.view(-1)
        pos = (flat >= m).nonzero().squeeze(1)
        col = pos % k1.shape[1]
        while pos.numel():
            v = _feistel(flat[pos], k1[:, col], k2[:, col], t, inverse)
            flat[pos] = v
            out = v >= m
            pos, col = pos[out], col[out]
    return p


def index_dtype(m: int) -> torch.dtype:
    """The smallest integer dtype that holds 0..m-1."""
    for dtype in (torch.uint8, torch.int16, torch.int32):
        if m - 1 <= torch.iinfo(dtype).max:
            return dtype
    raise ValueError(f"m={m} is too large for an int32 index")


def build_index(m: int, n: int, k: int, seed: int, layer: int) -> torch.Tensor:
    """P of one layer, (m, k*n) in the smallest dtype on the CPU: P[i, h*n + j] = P[h, i, j]."""
    return permuted_rows(m, round_keys(seed, layer, k, n)).to(index_dtype(m))


_SHARED: "weakref.WeakValueDictionary[tuple, torch.Tensor]" = weakref.WeakValueDictionary()


def shared_index(m: int, n: int, k: int, seed: int, device) -> torch.Tensor:
    """The process-wide P of shape (m, n, k) and seed (layer 0) on device, built once per device.

    The cache holds weak references: the index lives as long as some layer holds it.
    """
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    key = (m, n, k, seed, device)
    index = _SHARED.get(key)
    if index is None:
        cpu = _SHARED.get((m, n, k, seed, torch.device("cpu")))
        index = (cpu if cpu is not None else build_index(m, n, k, seed, layer=0)).to(device)
        _SHARED[key] = index
    return index


class IndexSource:
    """Where a layer's permutation comes from during one forward and backward.

    Subclasses give `rows()`, P as (m, k*n) (P[i, h*n + j] = P[h, i, j]) in some integer dtype,
    and `inverse_rows()`, the inverse permutations in the same layout. Stored on the autograd ctx
    as a plain object, so saved-tensor hooks do not see (or offload) a persistent index.
    """

    def __init__(self, m: int, n: int, k: int, device: torch.device):
        self.m, self.n, self.k, self.device = m, n, k, device

    def _columns(self, dtype: torch.dtype) -> torch.Tensor:
        return (torch.arange(self.k * self.n, device=self.device) % self.n).to(dtype)

    def gather_index(self, dtype: torch.dtype) -> torch.Tensor:
        """Flat index into W.reshape(-1) that builds W_p (m, k*n): P * n + j, flattened."""
        small = self.m * self.n < 2**31
        index = torch.add(self._columns(torch.int32 if small else torch.int64), self.rows(), alpha=self.n)
        return index.view(-1).to(dtype)

    def inverse_index(self) -> torch.Tensor:
        """Flat index into dW_p.reshape(-1), shape (k, m, n): entry [h, r, j] is where W[r, j] went in copy h."""
        kn = self.k * self.n
        dtype = torch.int32 if self.m * kn < 2**31 else torch.int64
        offsets = torch.arange(kn, device=self.device, dtype=dtype).view(self.k, 1, self.n)  # h*n + j
        inverse = self.inverse_rows().view(self.m, self.k, self.n).permute(1, 0, 2)  # (k, m, n)
        return torch.add(offsets, inverse, alpha=kn)


class StoredIndex(IndexSource):
    """A P tensor kept in memory (a layer's buffer, or the shared cache's entry)."""

    def __init__(self, index: torch.Tensor, n: int, k: int):
        super().__init__(index.shape[0], n, k, index.device)
        self.index = index

    def rows(self) -> torch.Tensor:
        return self.index

    def inverse_rows(self) -> torch.Tensor:
        # each column of P is a permutation, so every target is written once: deterministic
        m, kn = self.index.shape
        sources = torch.arange(m, dtype=torch.int32, device=self.device)[:, None].expand(m, kn)
        return torch.empty_like(sources).scatter_(0, self.index.long(), sources)


class GeneratedIndex(IndexSource):
    """P recomputed from the round keys whenever it is needed; nothing of size m*k*n is kept."""

    def __init__(self, m: int, n: int, k: int, keys: torch.Tensor):
        super().__init__(m, n, k, keys.device)
        self.keys = keys

    def rows(self) -> torch.Tensor:
        return permuted_rows(self.m, self.keys)

    def inverse_rows(self) -> torch.Tensor:
        return permuted_rows(self.m, self.keys, inverse=True)
