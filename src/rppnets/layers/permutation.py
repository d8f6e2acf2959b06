"""The permutation P of an RPP layer: a keyed Feistel bijection per column copy, its keys, index and shared cache.

Also the truly random P of the ``"random"`` control (torch.randperm per column).

P[h, :, j] (copy h, column j) is a pseudo-random permutation of 0..m-1: a Feistel network on
t = max(1, ceil(log2 m)) bits, with halves of ceil(t/2) and floor(t/2) bits that take turns, and
cycle walking for outputs >= m. Round r of column c computes F(v) = ((v * k2 + k1) mod 2**16) >> s,
keyed by (k1, k2) = splitmix64(seed, layer, h, j, r), so P depends only on those and on m: it is
the same on every device, in every process and after a checkpoint reload. All arithmetic is int32
and never overflows (v < 2**15, k1, k2 < 2**16), so CPU and CUDA agree bit for bit.

Rounds: 8. Scored against uniform random permutations (chi-square and correlation z-scores over
thousands of columns, m = 16 to 5000): 4 rounds are visibly non-uniform even with a truly random
round function (position chi-square z = 12 at m = 100; P(i+1) - P(i) z = 23 at m = 784); 6 pass
the position and neighbour tests for m >= 100 but leave excess fixed points and i-to-P(i)
correlation (z = 3 to 5 at m = 33, 784, 2000); 8 pass those tests, but at m = 33 over 200,000
columns still leave a small excess of fixed points (chi-square 12 to 30 against 5 +- 3 for uniform
permutations, seeds 0 to 3; 6 rounds: 350 to 460; experiments/mutation/README.md). The controls
(experiments/controls/) find no difference in training between these P and torch.randperm's. A fixed
multiplier instead of the keyed k2 fails the position test at 4 rounds (z = 100 at m = 100).

Cost, 1000 columns. This module's eager version (the reference, used to build stored indices) makes
49 int32 passes over the tensor: on the 2-thread CPU 2.3 to 2.9 ms for m = 1024 and 4.8 to 6.5 ms
for m = 784, where 23% of the 1024-value domain is out of range and cycle walking adds bookkeeping;
on an H200 0.42 and 2.5 ms, bound by kernel launches and the walking's synchronisations. Generated
layers use compiled kernels instead (rppnets.layers.backends): the C++ one takes 1.5 to 1.9 ms for
m = 1024 and 2.3 to 2.4 ms for m = 784 on the same CPU (1.5 to 3 ns per element, half of it the
vectorised rounds, the rest cycle walking and writing); the Triton one evaluates P per element in
registers inside the kernel that uses it, costing no launches of its own.

Signs (signed RPP): s[h, i, j] = +-1 for the entry of W_p at row i of column c = h*n + j, hashed from i and a
31-bit key per column taken from that column's round-0 keys (sign_keys: addend << 15 | multiplier >> 1), so a
generated layer needs nothing beyond its round keys and a stored one k*n int32 keys (32/m bits per entry of W_p).
The hash is lowbias32's first four steps (x ^= x >> 16, x *= 0x7feb352d, x ^= x >> 15, x *= 0x846ca68b on
x = i ^ key, in uint32); the sign is its top bit (lowbias32's last step, x ^= x >> 16, cannot change that bit):
negative where it is 1. Against fair coins, over 20,000 columns at m = 33 and 4,000 at m = 784 (seed 0, layer 0),
the signs are balanced overall and per column and uncorrelated with their row, their neighbours in i and in c, and
P(i) (every |z| below 2; tests/test_permutation_statistics.py).
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

    keys[0] is the round's addend (16 bits), keys[1] its odd multiplier (16 bits).
    """
    with np.errstate(over="ignore"):
        z = _absorb(_absorb(np.zeros(1, dtype=np.uint64), seed), layer)
        z = _absorb(z, np.arange(k, dtype=np.uint64)[:, None])  # (k, 1)
        z = _absorb(z, np.arange(n, dtype=np.uint64)[None, :])  # (k, n)
        z = _absorb(z, np.arange(ROUNDS, dtype=np.uint64)[:, None, None])  # (ROUNDS, k, n)
    addend = z & np.uint64(0xFFFF)
    multiplier = ((z >> np.uint64(16)) & np.uint64(0xFFFF)) | np.uint64(1)
    keys = np.stack([addend, multiplier]).astype(np.int32).reshape(2, ROUNDS, k * n)
    return torch.from_numpy(keys)


SIGN_MULTIPLIERS = (0x7FEB352D, 0x846CA68B)  # lowbias32's (Wellons' hash-prospector): the sign hash's two multiplies


def sign_keys(keys: torch.Tensor) -> torch.Tensor:
    """The 31-bit sign key of every column, int32 (c,), from round keys (2, ROUNDS, c): round 0's addend << 15 |
    its odd multiplier >> 1 (16 + 15 bits). Torch ops on keys' device, so a generated layer makes them where used."""
    return torch.bitwise_or(keys[0, 0] << 15, keys[1, 0] >> 1)


def negative_signs(m: int, keys: torch.Tensor) -> torch.Tensor:
    """Where the signs are negative, bool (m, c) on keys' device: row i of column c from sign_keys (c,).

    The hash (this module's docstring) runs in int64 holding uint32 values; the second multiplier is over 2**31, so
    that product is made from its two 16-bit halves, and nothing overflows int64."""
    mask = 0xFFFFFFFF
    low, high = SIGN_MULTIPLIERS[1] & 0xFFFF, SIGN_MULTIPLIERS[1] >> 16
    x = torch.arange(m, dtype=torch.int64, device=keys.device)[:, None] ^ keys.long()[None, :]
    x ^= x >> 16
    x = x.mul_(SIGN_MULTIPLIERS[0]).bitwise_and_(mask)  # < 2**32 * 2**31
    x ^= x >> 15
    x = (x * low + ((x * high).bitwise_and_(0xFFFF) << 16)).bitwise_and_(mask)  # x * multiplier mod 2**32
    return (x >> 31).bool()


def feistel_bits(m: int) -> int:
    """Bits t of the Feistel domain 0..2**t - 1 that covers 0..m-1."""
    return max(1, (m - 1).bit_length())


def round_shape(t: int) -> tuple[int, ...]:
    """The constants of the t-bit network's rounds (halves of a = ceil(t/2) and b = floor(t/2) bits):
    b and the low half's mask, then for even rounds (F of the low half into the high) and odd rounds
    (F of the high half into the low) the mask of F's bits kept (the top ones of its low 16) and the
    left and right shifts that move them onto the other half (one of the two is 0)."""
    a, b = (t + 1) // 2, t // 2
    constants = [b, (1 << b) - 1]
    for width, to_bit in ((a, b), (b, 0)):
        shift = to_bit - (16 - width)
        constants += [((1 << width) - 1) << (16 - width), max(shift, 0), max(-shift, 0)]
    return tuple(constants)


def _feistel(x: torch.Tensor, k1: torch.Tensor, k2: torch.Tensor, t: int, inverse: bool) -> torch.Tensor:
    """One pass of the t-bit Feistel network, no cycle walking; k1[r], k2[r] broadcast with x.

    The state stays packed in one int32 (high a = ceil(t/2) bits, low b = floor(t/2) bits) and is
    updated in place: even rounds XOR F(low) into the high half, odd rounds F(high) into the low
    half. That is the textbook network whose halves swap every round, with only two buffers; each
    round is its own inverse, so the inverse runs the same rounds backwards.
    """
    b, low, *parities = round_shape(t)
    state = torch.empty(torch.broadcast_shapes(x.shape, k1.shape[1:]), dtype=torch.int32, device=x.device)
    state.copy_(x)
    f = torch.empty_like(state)
    for r in reversed(range(ROUNDS)) if inverse else range(ROUNDS):
        if r % 2 == 0:  # high ^= F(low)
            torch.bitwise_and(state, low, out=f)
        else:  # low ^= F(high)
            torch.bitwise_right_shift(state, b, out=f)
        keep, left, right = parities[3 * (r % 2) : 3 * (r % 2) + 3]
        # f < 2**15, k2 < 2**16 and k1 < 2**16: f * k2 + k1 stays below 2**31
        torch.addcmul(k1[r], f, k2[r], out=f)
        f.bitwise_and_(keep)
        f = f.bitwise_left_shift_(left) if left else f.bitwise_right_shift_(right)
        state.bitwise_xor_(f)
    return state


def permuted_rows(m: int, keys: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """P as an int32 tensor (m, c) on keys' device: column c is the permutation keyed by keys[:, :, c].

    With inverse=True, returns the inverse permutations instead (the rounds run backwards).
    """
    t, c = feistel_bits(m), keys.shape[2]
    k1, k2 = keys[0], keys[1]  # (ROUNDS, c)
    p = _feistel(torch.arange(1 << t, dtype=torch.int32, device=keys.device)[:, None], k1, k2, t, inverse)
    if m == 1 << t:
        return p
    # Cycle walking, with the whole domain computed: then[y - m] = p[y] is the value after y on
    # its cycle. The rows that land on some y >= m are found with the inverse permutation (a pass
    # over 2**t - m rows), not by scanning p.
    then = p[m:].reshape(-1).clone()
    ys = torch.arange(m, 1 << t, dtype=torch.int32, device=keys.device)[:, None]
    source = _feistel(ys, k1, k2, t, not inverse)  # (2**t - m, c): the row that maps to y
    # p[source, c] = then; sources >= m write to row y, which is not returned
    index_type = torch.int32 if (1 << t) * c < 2**31 else torch.int64
    columns = torch.arange(c, dtype=index_type, device=keys.device)
    target = torch.where(source < m, source, ys).to(index_type).mul_(c).add_(columns).view(-1).long()
    p.view(-1).scatter_(0, target, then)
    # walk on through `then` (no more Feistel passes) where the value is still >= m and the source
    # row is ours: cycles that never leave m..2**t-1 have no source row, and never end
    pos = ((then >= m) & (source.view(-1) < m)).nonzero().squeeze(1)
    value, col, target = then.index_select(0, pos), pos % c, target.index_select(0, pos)
    while value.numel():
        value = then.index_select(0, (value - m).long().mul_(c).add_(col))
        p.view(-1).index_copy_(0, target, value)
        still = (value >= m).nonzero().squeeze(1)
        value, col, target = value.index_select(0, still), col.index_select(0, still), target.index_select(0, still)
    return p[:m]


def index_dtype(m: int) -> torch.dtype:
    """The smallest integer dtype that holds 0..m-1."""
    for dtype in (torch.uint8, torch.int16, torch.int32):
        if m - 1 <= torch.iinfo(dtype).max:
            return dtype
    raise ValueError(f"m={m} is too large for an int32 index")


def build_index(m: int, n: int, k: int, seed: int, layer: int) -> torch.Tensor:
    """P of one layer, (m, k*n) in the smallest dtype on the CPU: P[i, h*n + j] = P[h, i, j]."""
    return permuted_rows(m, round_keys(seed, layer, k, n)).to(index_dtype(m))


def random_index(m: int, n: int, k: int, seed: int, layer: int) -> torch.Tensor:
    """Truly random P (the ``"random"`` control), (m, k*n) in the smallest dtype on the CPU.

    Column c = h*n + j is torch.randperm(m) drawn in order of c from a CPU torch.Generator seeded by a
    splitmix64 hash of (seed, layer), so it is fixed by those and the shape for a given torch version
    (randperm's algorithm is torch's, not this module's).
    """
    with np.errstate(over="ignore"):
        state = _absorb(_absorb(_absorb(np.zeros(1, dtype=np.uint64), seed), layer), _RANDOM_DOMAIN)
    generator = torch.Generator().manual_seed(int(state[0]))
    dtype = index_dtype(m)
    columns = [torch.randperm(m, generator=generator, dtype=torch.int64).to(dtype) for _ in range(k * n)]
    return torch.stack(columns, dim=1)


_RANDOM_DOMAIN = 0x52414E44  # "RAND": the generator's seed is not the state of the Feistel keys' hash

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
