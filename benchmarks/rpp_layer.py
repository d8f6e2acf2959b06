"""Training-step time and memory of RPPLinear against an nn.Linear of the same output width."""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from rppnets.hashed_linear import HashedLinear  # noqa: E402
from rppnets.low_rank_linear import LowRankLinear  # noqa: E402
from rppnets.models import lowrank_rank  # noqa: E402
from rppnets.rpp_linear import PERMUTATIONS, RPPLinear  # noqa: E402

SHAPES = [(784, 10, 100), (1000, 10, 100)]  # (m, n, k)
BATCH = 128


# The frontier's other ways to be k*n wide on the RPP layer's budget (m*n weights), timed and measured beside it.
BUDGET_MATCHED = ("hashed", "lowrank")


def budget_matched_layers(m: int, n: int, k: int, device: torch.device) -> dict[str, nn.Module]:
    """A HashedLinear with m*n buckets and a LowRankLinear of the largest rank within m*n weights, both k*n wide."""
    return {"hashed": HashedLinear(m, k * n, buckets=m * n, device=device),
            "lowrank": LowRankLinear(m, k * n, rank=lowrank_rank(m, k * n, m * n), device=device)}


def make_step(layer: nn.Module, x: torch.Tensor):
    """One training step: forward, backward, Adam step, zero_grad."""
    optimizer = torch.optim.Adam(layer.parameters(), lr=1e-3)

    def step():
        loss = layer(x).square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    return step, optimizer


def time_block(step, steps: int, device: torch.device) -> float:
    """Milliseconds per step over one block of steps."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) * 1e3 / steps


def device_work(step, steps: int = 5) -> tuple[float, float]:
    """CUDA kernels (and copies) launched per step, and their summed time on the GPU per step (us), by the profiler."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return len(events) / steps, sum(e.time_range.elapsed_us() for e in events) / steps


def persistent_bytes(layer: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Parameters, gradients, Adam state, buffers and kept permutation indices, each storage once."""
    tensors = list(layer.parameters()) + [p.grad for p in layer.parameters()] + list(layer.buffers())
    tensors += [t for state in optimizer.state.values() for t in state.values() if torch.is_tensor(t)]
    tensors += [m.index_tensor() for m in layer.modules() if isinstance(m, RPPLinear)]
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors if t is not None}
    return sum(storages.values())


def saved_bytes(layer: nn.Module, x: torch.Tensor) -> int:
    """Bytes autograd saves for backward during one forward, not counting parameters and buffers."""
    owned = {t.untyped_storage().data_ptr() for t in list(layer.parameters()) + list(layer.buffers())}
    saved = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in owned:
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x)
    return sum(saved.values())


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=15, help="blocks per layer, interleaved")
    parser.add_argument("--steps", type=int, default=10, help="steps per block")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)

    print(f"device={device} threads={torch.get_num_threads()} batch={BATCH} torch={torch.__version__}")
    header = (
        f"{'m':>5} {'n':>3} {'k':>4} {'permutation':>11} | {'dense ms':>8} {'rpp ms':>7} {'time':>5} | "
        f"{'persist':>7} {'saved':>5} | {'dense MB':>8} {'rpp MB':>7} {'saved kB':>8}"
    )
    print(header)
    for m, n, k in SHAPES:
        x = torch.randn(BATCH, m, device=device)  # no grad: a first layer
        layers = {"dense": nn.Linear(m, k * n, device=device)}
        layers.update({p: RPPLinear(m, n, k, permutation=p, device=device) for p in PERMUTATIONS})
        layers.update(budget_matched_layers(m, n, k, device))
        steps = {name: make_step(layer, x) for name, layer in layers.items()}
        for step, _ in steps.values():  # warm up, and create the Adam state and gradients
            for _ in range(3):
                step()
        for layer in layers.values():  # persistent bytes are counted with the gradients present
            layer(x).square().mean().backward()
        memory = {name: persistent_bytes(layers[name], opt) for name, (_, opt) in steps.items()}
        saved = {name: saved_bytes(layer, x) for name, layer in layers.items()}

        if device.type == "cuda":
            # the wall-clock step of a small layer is bound by launching kernels; this is the GPU's own share
            work = {name: device_work(step) for name, (step, _) in steps.items()}
            print("per step, kernels and their GPU time: " + ", ".join(
                f"{name} {count:.0f} / {us:.0f} us ({us / work['dense'][1]:.2f}x)" for name, (count, us) in work.items()
            ))  # fmt: skip
        times = {name: [] for name in layers}
        for _ in range(args.repeats):  # interleaved blocks: the machine's noise hits all alike
            for name, (step, _) in steps.items():
                times[name].append(time_block(step, args.steps, device))
        dense_ms = statistics.median(times["dense"])
        for name in (*PERMUTATIONS, *BUDGET_MATCHED):
            rpp_ms = statistics.median(times[name])
            # the ratio of each repeat's two neighbouring blocks, then the median: robust to slow drifts
            ratio = statistics.median(r / d for r, d in zip(times[name], times["dense"]))
            print(
                f"{m:>5} {n:>3} {k:>4} {name:>11} | {dense_ms:>8.2f} {rpp_ms:>7.2f} {ratio:>5.2f} | "
                f"{memory[name] / memory['dense']:>7.3f} {saved[name] / saved['dense']:>5.2f} | "
                f"{memory['dense'] / 1e6:>8.2f} {memory[name] / 1e6:>7.2f} {saved[name] / 1e3:>8.1f}"
            )

if __name__ == "__main__":
    main()
