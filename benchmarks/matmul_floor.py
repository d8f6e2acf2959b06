"""An RPP layer's training step against its floor, the three matrix products of its shapes, and against nn.Linear's.

    python benchmarks/matmul_floor.py [--threads 1 2] [--rounds 25] [--wide] [--device cuda]

An RPP layer m -> k*n does the FLOPs of a dense layer of that width; its step's floor is the three products at BLAS
speed: y = x @ W_p, dx = dy @ W_p^T and dW_p = x^T @ dy, timed here on tensors of those shapes (W_p made once). Each
step (forward, the loss y.square().mean(), backward, Adam, zero_grad) is timed in rounds: one block of steps of every
case per round, interleaved, and each case's ratio taken to the block of three products of its own round. Printed:
the median ratio over the rounds and its spread (10th to 90th percentile), so a ratio is never a bare time on a noisy
machine. Shapes: the figure's layers (784 and 1,000 inputs, n = 10, k = 10 and 100); --wide adds the width-limit's
widest layer (784 -> 10 x 2,263 = 22,630). On CUDA (--device cuda; benchmarks/gpu_checks.sh) RPP runs on each of
its backends (triton, the default, and triton-fused), each block synchronised before its clock stops.
"""

import argparse
import itertools
import statistics
import time

import torch
from torch import nn

from rppnets.layers.rpp_linear import RPPLinear

SHAPES = [(784, 10, 10), (784, 10, 100), (1000, 10, 10), (1000, 10, 100)]  # (m, n, k)
WIDE = (784, 10, 2263)
BATCH = 128


BACKENDS = {"cpu": (None,), "cuda": ("triton", "triton-fused")}  # None: the device's default


def matmuls(m: int, columns: int, device: torch.device):
    """The step's floor: x @ W_p, dy @ W_p^T and x^T @ dy, at BLAS speed on tensors of the layer's shapes."""
    x, wp, dy = (torch.randn(shape, device=device) for shape in ((BATCH, m), (m, columns), (BATCH, columns)))
    return lambda: (torch.mm(x, wp), torch.mm(dy, wp.t()), torch.mm(x.t(), dy))


def training_step(layer: nn.Module, m: int):
    """forward, y.square().mean(), backward, Adam's step and zero_grad, as rpp_layer.py times a step."""
    x = torch.randn(BATCH, m, device=next(layer.parameters()).device)
    optimizer = torch.optim.Adam(layer.parameters(), lr=1e-3)

    def step():
        layer(x).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()

    return step


def rpp(m: int, n: int, k: int, permutation: str, device: torch.device, backend: str | None) -> nn.Module:
    layer = RPPLinear(m, n, k, permutation=permutation, device=device)
    if backend is not None:
        layer.backend = backend
    return layer


def cases(m: int, n: int, k: int, device: torch.device, backend: str | None) -> dict:
    return {"matmuls": matmuls(m, k * n, device), "linear": training_step(nn.Linear(m, k * n, device=device), m),
            "stored": training_step(rpp(m, n, k, "stored", device, backend), m),
            "generated": training_step(rpp(m, n, k, "generated", device, backend), m)}


def block_ms(step, steps: int) -> float:
    synchronize = torch.cuda.synchronize if torch.cuda.is_initialized() else (lambda: None)
    synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize()
    return (time.perf_counter() - start) * 1e3 / steps


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(m: int, n: int, k: int, rounds: int, steps: int, device: torch.device,
            backend: str | None = None) -> dict[str, list[float]]:
    """Milliseconds per step of each case, one block per round, the cases interleaved (after a warm-up block each)."""
    steps_of = cases(m, n, k, device, backend)
    for step in steps_of.values():
        block_ms(step, 2)
    times = {name: [] for name in steps_of}
    for _ in range(rounds):
        for name, step in steps_of.items():
            times[name].append(block_ms(step, steps))
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--steps", type=int, default=4, help="steps per block")
    parser.add_argument("--wide", action="store_true", help="also the width-limit's widest layer (slow)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    print(f"device={device} batch={BATCH} rounds={args.rounds} steps/block={args.steps} torch={torch.__version__}; ratios: median "
          "[10th-90th percentile] over the rounds, each to the same round's three products")
    print(f"{'backend':>12} {'threads':>7} {'m':>5} {'n':>3} {'k':>5} {'3 matmuls ms':>12} | {'nn.Linear':>17} | {'RPP stored':>17} | "
          f"{'RPP generated':>17} | {'stored/Linear':>13} {'generated/Linear':>16}")
    for threads, backend in itertools.product(args.threads if device.type == "cpu" else [None],
                                               BACKENDS[device.type]):
        if threads is not None:
            torch.set_num_threads(threads)
        for m, n, k in SHAPES + ([WIDE] if args.wide else []):
            wide = k * n > 5000 and device.type == "cpu"
            times = measure(m, n, k, max(5, args.rounds // 5) if wide else args.rounds, 1 if wide else args.steps,
                            device, backend)

            def ratios(name, to="matmuls"):
                return [a / b for a, b in zip(times[name], times[to])]

            def shown(values):
                return f"{statistics.median(values):5.2f} [{percentile(values, .1):4.2f}-{percentile(values, .9):4.2f}]"

            line = f"{backend or 'default':>12} {threads or '':>7} {m:>5} {n:>3} {k:>5} {statistics.median(times['matmuls']):>12.2f} | "
            line += " | ".join(shown(ratios(name)) for name in ("linear", "stored", "generated"))
            line += f" | {statistics.median(ratios('stored', 'linear')):>13.2f}"
            line += f" {statistics.median(ratios('generated', 'linear')):>16.2f}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
