"""Spread of memory/step_peak_bytes: the same training step measured many times, with and without other work running.

    python benchmarks/step_peak_spread.py [--repeats 6] [--threads 1 2] [--permutation stored generated] [--k 10]

Each measurement is what a run logs (rppnets.training.callbacks.MemoryStats, rppnets.meters.StepPeakMeter): the
figure's RPP network (784 -> RPP(10, k=100) -> RPP(10, k=100) -> 10, batch 128, Adam), one step, then a warm-up step
and 3 measured steps with torch.profiler on, the highest peak above what each step began with. Each repeat is its own
process (a run's step), half of them while a busy process per core competes for the CPU. Printed per (threads,
permutation): the distinct figures and how often each came; a figure that holds still has one.
"""

import argparse
import collections
import json
import multiprocessing
import subprocess
import sys

MEASURE = """
import json, sys, torch
from rppnets.models import MLP
from rppnets.meters import StepPeakMeter
torch.set_num_threads({threads})
torch.manual_seed(0)
net = MLP(kind="rpp", width=10, k={k}, permutation="{permutation}")
optimizer = torch.optim.Adam(net.parameters())
x, y = torch.randn(128, 784), torch.randint(0, 10, (128,))
def step():
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(net(x), y).backward()
    optimizer.step()
step()
meter = StepPeakMeter("cpu")
meter.open()
step()  # the warm-up step, measured by no range
for _ in range(3):
    meter.begin_step(); step(); meter.end_step()
print(json.dumps(meter.close()))
"""


def measure(threads: int, permutation: str, k: int) -> int:
    done = subprocess.run([sys.executable, "-c", MEASURE.format(threads=threads, permutation=permutation, k=k)],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def busy() -> None:
    while True:
        pass


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--permutation", nargs="+", default=["stored", "generated"])
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args(argv)
    for threads in args.threads:
        for permutation in args.permutation:
            seen = collections.Counter()
            for repeat in range(args.repeats):
                load = [multiprocessing.Process(target=busy, daemon=True) for _ in range(multiprocessing.cpu_count())] \
                    if repeat % 2 else []
                for process in load:
                    process.start()
                try:
                    seen[measure(threads, permutation, args.k)] += 1
                finally:
                    for process in load:
                        process.terminate()
            figures = ", ".join(f"{bytes_:,} ({n}x)" for bytes_, n in sorted(seen.items()))
            print(f"threads {threads}, {permutation:9s}: {len(seen)} distinct step peak(s) in {args.repeats}: {figures}",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
