"""Training-step time and memory of RPPLinear (unsigned and signed) against an nn.Linear of the same output width,
eager and compiled."""

import argparse
import statistics
import time

import torch
from torch import nn

from rppnets.layers.backends import default_backend
from rppnets.layers.hashed_linear import HashedLinear
from rppnets.layers.low_rank_linear import LowRankLinear
from rppnets.models import lowrank_rank
from rppnets.layers.rpp_linear import PERMUTATIONS, RPPLinear

SHAPES = [(784, 10, 100), (1000, 10, 100)]  # (m, n, k)
BATCH = 128


# The frontier's other ways to be k*n wide on the RPP layer's budget (m*n weights), timed and measured beside it.
BUDGET_MATCHED = ("hashed", "lowrank")


def budget_matched_layers(m: int, n: int, k: int, device: torch.device) -> dict[str, nn.Module]:
    """A HashedLinear with m*n buckets and a LowRankLinear of the largest rank within m*n weights, both k*n wide."""
    return {"hashed": HashedLinear(m, k * n, buckets=m * n, device=device),
            "lowrank": LowRankLinear(m, k * n, rank=lowrank_rank(m, k * n, m * n), device=device)}


# Where RPP's step has more than one backend on a device, each is measured; the first is the default. On CUDA the
# fused Triton step is unmeasured so far: these rows decide between it and the materialising default.
BACKENDS = {"cpu": ("cpu-fused", "cpu"), "cuda": ("triton", "triton-fused")}
# Those also timed through torch.compile: on the CPU the default only, on CUDA both Triton steps (under CUDA graphs
# launches cost little, which is where the materialising step's extra kernels matter least)
COMPILED_BACKENDS = {"cpu": ("cpu-fused",), "cuda": ("triton", "triton-fused")}


def measured_backends(device: torch.device, table: dict = BACKENDS) -> tuple[str, ...]:
    """The RPP backends of `table` for the device, or eager alone where its kernels are missing."""
    return table.get(device.type, ()) if default_backend(device) != "eager" else ("eager",)


SIGNED = "+signs"  # the name's suffix of a signed RPP layer (signs=True), timed beside its unsigned twin


def rpp_layers(m: int, n: int, k: int, device: torch.device, signs: bool = True) -> dict[str, nn.Module]:
    """An RPPLinear per permutation mode and backend, named "mode/backend", and with `signs` its signed twin
    "mode/backend+signs" (the same P, each entry of W_p with its sign)."""
    layers = {}
    for permutation in PERMUTATIONS:
        for backend in measured_backends(device):
            for signed in (False, True) if signs else (False,):
                name = f"{permutation}/{backend}" + (SIGNED if signed else "")
                layers[name] = RPPLinear(m, n, k, permutation=permutation, device=device, signs=signed)
                layers[name].backend = backend
    return layers


def make_step(layer: nn.Module, x: torch.Tensor, loss=lambda y: y.square().mean(), compile_mode=None,
              compile_optimizer=False):
    """One training step: forward, backward, Adam step, zero_grad; with compile_mode, the layer (forward and
    backward) through torch.compile in that mode, and with compile_optimizer the Adam step too."""
    optimizer = torch.optim.Adam(layer.parameters(), lr=1e-3)
    model = layer if compile_mode is None else torch.compile(layer, mode=compile_mode)
    update = torch.compile(optimizer.step, mode=compile_mode) if compile_optimizer else optimizer.step
    graphs = compile_mode is not None and "reduce-overhead" in compile_mode  # CUDA graphs: a step per replay

    def step():
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        loss(model(x)).backward()
        update()
        optimizer.zero_grad()

    return step, optimizer


def step_peak_bytes(step, device: torch.device) -> int:
    """The step's peak memory above its start on the device: the running sum of the profiler's memory events
    (every allocation and free, in order), at its highest."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, profile_memory=True) as prof:
        step()
    kind = torch.autograd.DeviceType.CUDA if device.type == "cuda" else torch.autograd.DeviceType.CPU
    # the raw records: prof.events() folds those made inside an op into that op's totals
    records = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]" and e.device_type() == kind]
    running = peak = 0
    for record in sorted(records, key=lambda e: e.start_ns()):
        running += record.nbytes()
        peak = max(peak, running)
    return peak


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
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile'd layers")
    parser.add_argument("--compile-mode", default="default", help="torch.compile's mode, e.g. reduce-overhead (CUDA "
                        "graphs)")
    parser.add_argument("--compile-optimizer", action="store_true", help="compile the Adam step too")
    parser.add_argument("--threads", type=int, help="CPU threads (torch.set_num_threads); default: torch's")
    parser.add_argument("--shapes", nargs="+", help="m,n,k of each layer shape (default: " +
                        " ".join(",".join(map(str, shape)) for shape in SHAPES) + ")")
    parser.add_argument("--no-signs", action="store_true", help="skip the signed RPP layers")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = [tuple(map(int, shape.split(","))) for shape in args.shapes] if args.shapes else SHAPES
    device = torch.device(args.device)
    torch.manual_seed(0)

    print(f"device={device} threads={torch.get_num_threads()} batch={BATCH} torch={torch.__version__}")
    compiled_what = f"mode {args.compile_mode}" + (", the Adam step too" if args.compile_optimizer else "")
    print(f"RPP backends: {', '.join(BACKENDS.get(device.type, ('eager',)))} (the first is the default, "
          f"{default_backend(device)!r} here). time: RPP / dense, median of paired blocks; compiled: both through "
          f"torch.compile ({compiled_what}); '{SIGNED}': signed RPP, with 'signed': its step time / its unsigned "
          "twin's, paired the same way; peak: the step's peak bytes above its start (profiler), with the loss "
          "y.square().mean() and, 'sum', y.sum() (whose backward allocates nothing)")
    times_header = (f"{'m':>5} {'n':>3} {'k':>4} {'layer':>28} | {'dense ms':>8} {'ms':>6} {'time':>5} {'signed':>6} | "
                    f"compiled: {'dense ms':>8} {'ms':>6} {'time':>5} {'signed':>6}")
    memory_header = (f"{'m':>5} {'n':>3} {'k':>4} {'layer':>28} | {'peak':>5} {'sum':>5} {'persist':>7} {'saved':>5} | "
                     f"{'peak MB':>7} {'sum MB':>6} | {'dense MB':>8} {'MB':>6} {'saved kB':>8}")
    rows = {"times": [], "memory": []}
    for m, n, k in shapes:
        x = torch.randn(BATCH, m, device=device)  # no grad: a first layer
        layers = {"dense": nn.Linear(m, k * n, device=device)}
        layers.update(rpp_layers(m, n, k, device, signs=not args.no_signs))
        layers.update(budget_matched_layers(m, n, k, device))
        steps = {name: make_step(layer, x) for name, layer in layers.items()}
        compiled_backends = measured_backends(device, COMPILED_BACKENDS)
        compiled = {} if args.no_compile else {
            name: make_step(layer, x, compile_mode=args.compile_mode, compile_optimizer=args.compile_optimizer)
            for name, layer in layers.items()
            if name == "dense" or name in BUDGET_MATCHED
            or name.split("/")[-1].removesuffix(SIGNED) in compiled_backends
        }  # fmt: skip
        sum_steps = {name: make_step(layer, x, loss=lambda y: y.sum()) for name, layer in layers.items()}
        for step, _ in (*steps.values(), *compiled.values(), *sum_steps.values()):  # warm up, compile, Adam state
            for _ in range(3):
                step()
        # peaks first, from steps that start, as in training, with no gradients (zero_grad sets them to None)
        peak = {name: step_peak_bytes(step, device) for name, (step, _) in steps.items()}
        peak_sum = {name: step_peak_bytes(step, device) for name, (step, _) in sum_steps.items()}
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
        timed = {**steps, **{f"compiled {name}": step for name, step in compiled.items()}}
        times = {name: [] for name in timed}
        for _ in range(args.repeats):  # interleaved blocks: the machine's noise hits all alike
            for name, (step, _) in timed.items():
                times[name].append(time_block(step, args.steps, device))

        def ratio(name: str, reference: str) -> tuple[float, float]:
            # the ratio of each repeat's two neighbouring blocks, then the median: robust to slow drifts
            paired = statistics.median(r / d for r, d in zip(times[name], times[reference]))
            return statistics.median(times[reference]), statistics.median(times[name]), paired

        def signed_ratio(name: str) -> str:
            # a signed layer against its unsigned twin, from the same interleaved blocks
            return f" {ratio(name, name.removesuffix(SIGNED))[2]:>6.2f}" if name.endswith(SIGNED) else " " * 7

        for name in layers:
            if name == "dense":
                continue
            line = f"{m:>5} {n:>3} {k:>4} {name:>28} | " + "{:>8.2f} {:>6.2f} {:>5.2f}".format(*ratio(name, "dense"))
            line += signed_ratio(name)
            if f"compiled {name}" in times:
                line += " |           {:>8.2f} {:>6.2f} {:>5.2f}".format(*ratio(f"compiled {name}", "compiled dense"))
                line += signed_ratio(f"compiled {name}")
            rows["times"].append(line)
            rows["memory"].append(
                f"{m:>5} {n:>3} {k:>4} {name:>28} | {peak[name] / peak['dense']:>5.2f} "
                f"{peak_sum[name] / peak_sum['dense']:>5.2f} {memory[name] / memory['dense']:>7.3f} "
                f"{saved[name] / saved['dense']:>5.2f} | {peak[name] / 1e6:>7.2f} {peak_sum[name] / 1e6:>6.2f} | "
                f"{memory['dense'] / 1e6:>8.2f} {memory[name] / 1e6:>6.2f} {saved[name] / 1e3:>8.1f}"
            )
        print(f"dense step peak {peak['dense'] / 1e6:.2f} MB, with the sum loss {peak_sum['dense'] / 1e6:.2f} MB")
    print("\n".join([times_header, *rows["times"], "", memory_header, *rows["memory"]]))


if __name__ == "__main__":
    main()
