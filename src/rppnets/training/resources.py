"""What a run will ask of the machine: a memory estimate for a model config, memory available, threads per job."""

from __future__ import annotations

import os
from pathlib import Path

FLOAT = 4  # bytes of a float32


def index_itemsize(m: int) -> int:
    """Bytes per entry of a stored permutation index over m rows (the smallest integer type that holds m - 1)."""
    return 1 if m <= 2**8 else 2 if m <= 2**15 else 4


def estimate_training_bytes(model: dict, batch_size: int, in_features: int = 784, num_classes: int = 10) -> int:
    """A rough upper estimate of the memory one training step of an MLP config needs (`model`: conf/model keys).

    Per hidden layer, dense: weight, gradient and two Adam moments; RPP and HashedNets: the wide weight they
    build in a step (forward, and again with its gradient in backward) plus, for a stored RPP index, the index;
    low-rank: its factors. Activations: a few copies of (batch, width). It errs high, to refuse before allocating.
    """
    kind, depth, width = model.get("kind", "dense"), model.get("depth", 2), model.get("width", 1)
    wide = width * model.get("k", 1) if kind != "dense" else width
    total, fan_in = 0, in_features
    for _ in range(depth):
        virtual = fan_in * wide
        if kind == "dense":
            total += 4 * virtual * FLOAT
        elif kind == "lowrank":
            total += 4 * (fan_in + wide) * width * FLOAT
        else:
            total += 3 * virtual * FLOAT  # W_p, and in backward W_p again with dW_p
            if kind == "rpp" and model.get("permutation", "stored") in ("stored", "shared", "random"):
                total += virtual * index_itemsize(fan_in)
            if kind == "hashed":
                total += virtual * 8  # int64 bucket index of the virtual matrix
        total += 4 * batch_size * wide * FLOAT
        fan_in = wide
    return total + 4 * (fan_in * num_classes + num_classes) * FLOAT


def available_memory_bytes() -> int | None:
    """Memory this process may still use: the smaller of Linux's MemAvailable and a cgroup limit, if any."""
    limits = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                limits.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    try:  # cgroup v2 (containers, SLURM with cgroups)
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            limits.append(int(limit) - used)
    except (OSError, ValueError):
        pass
    return min(limits) if limits else None


def threads_per_job(n_jobs: int | None, jobs_in_sweep: int | None = None) -> int:
    """Threads for each of the jobs joblib runs at once, so that they share the cores: `n_jobs` of them (-1 means
    one per core), or all `jobs_in_sweep` where the sweep has fewer."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if not n_jobs:
        return cores
    jobs = n_jobs if n_jobs > 0 else max(1, cores + 1 + n_jobs)
    if jobs_in_sweep:
        jobs = min(jobs, jobs_in_sweep)
    return max(1, cores // jobs)
