"""What a run will ask of the machine: a memory estimate for a model config, memory available, threads per job."""

from __future__ import annotations

import os
from pathlib import Path

FLOAT = 4  # bytes of a float32
FEISTEL_PASS = 4  # bytes per entry of one int32 pass of the Feistel network that builds a stored index
HASH_ENTRY = 16  # bytes per virtual entry of a HashedNets step: two int64 per entry while hashing, then the
                 # int64 buckets with V and dV (float32) in backward


def index_itemsize(m: int) -> int:
    """Bytes per entry of a stored permutation index over m rows (the smallest integer type that holds m - 1)."""
    return 1 if m <= 2**8 else 2 if m <= 2**15 else 4


def index_build_bytes(m: int, columns: int) -> int:
    """Peak bytes of building a stored index over m rows and `columns` columns (rppnets.layers.permutation.build_index),
    the finished index included: the Feistel network runs on the whole domain 0..D-1, D = 2**ceil(log2 m), in two
    int32 buffers (D, columns); cycle walking then holds one of them and, for the d = D - m rows past m, four int32 per
    entry, and for the cycles still walking (about d*(d/D)*(m/D) entries per column) their position, column and target
    (int64) and value (int32). (Its first step, three int32 and an int64 per row past m, never peaks above both:
    20d > 16d + 28d*d*m/D**2 needs m > 0.83 D, where 20d > 4D does not hold.) Measured within 2% over m = 784 to
    24,000."""
    domain = 1 << max(1, (m - 1).bit_length())
    d = domain - m
    per_column = max(2 * domain * FEISTEL_PASS, domain * FEISTEL_PASS + d * 4 * FEISTEL_PASS + d * d * m * 28 // domain**2)
    return per_column * columns


def model_settings(model: dict) -> dict:
    """The MLP's (rppnets.models.MLP) arguments for a model config: the config's values over the MLP's own defaults,
    so that a key left out is estimated as the model is built."""
    import inspect

    from rppnets.models import MLP

    defaults = {name: parameter.default for name, parameter in inspect.signature(MLP).parameters.items()}
    return defaults | {key: value for key, value in model.items() if key in defaults}


def _hidden_layers(model: dict, in_features: int) -> list[tuple[int, int, list[int]]]:
    """(fan_in, fan_out, parameter tensor sizes) of each hidden layer of an MLP config (rppnets.models.MLP)."""
    from rppnets.models import lowrank_rank

    settings = model_settings(model)
    kind, width = settings["kind"], settings["width"]
    bias = {True: "full", False: "none"}.get(settings["bias"], settings["bias"])
    wide = width if kind == "dense" else width * settings["k"]
    layers, fan_in = [], in_features
    for _ in range(settings["depth"]):
        biases = {"full": wide, "reuse": width, "none": 0}[bias]
        if kind == "lowrank":
            rank = lowrank_rank(fan_in, wide, fan_in * width)
            tensors = [fan_in * rank, rank * wide, biases]
        else:  # dense: fan_in * width; rpp, hashed: the RPP layer's budget, fan_in * width trained weights
            tensors = [fan_in * width, biases]
        layers.append((fan_in, wide, [size for size in tensors if size]))
        fan_in = wide
    return layers


def estimate_training_bytes(model: dict, batch_size: int, in_features: int = 784, num_classes: int = 10) -> int:
    """The tensor memory an MLP config (`model`: conf/model keys) needs to train on the CPU, at its peak: the larger
    of building the model and a training step (Adam, float32, the CPU's default kernels: the fused C++ RPP step).

    - Building: the parameters and, for a stored (or shared, once per layer shape) RPP index, each index as it is
      built (index_build_bytes: the Feistel network runs on a domain up to twice m, in int32) after those before it.
    - Training: the state kept between steps (parameters, gradients, Adam's two moments, the stored indices, the
      round or sign keys), plus a step's peak above it, the largest of: the backward of each hidden layer (the
      activations saved by the layers before it, its output gradient, its input gradient: one per thread for the
      fused RPP step, which also holds per thread two blocks of 64 columns of W_p (three, generated P), and for
      HashedNets the hashed virtual matrix, HASH_ENTRY bytes per entry); the ReLUs' backward (every saved ReLU
      output and two gradients of the last); Adam's update (two temporaries the size of the largest parameter).
    Activations are batch_size rows. Not included: the data set, the process itself (torch's libraries, about half a
    GiB here), the allocator's slack. The threads are torch's current number (more threads, more RPP buffers).
    """
    import torch

    from rppnets.layers.backends import FUSED_BLOCK

    settings = model_settings(model)
    kind, permutation = settings["kind"], settings["permutation"]
    threads = torch.get_num_threads()
    layers = _hidden_layers(model, in_features)
    fan_in = layers[-1][1] if layers else in_features
    tensors = [size for *_, sizes in layers for size in sizes] + [fan_in * num_classes, num_classes]
    params = sum(tensors)
    rpp = kind == "rpp"
    indexed = rpp and permutation in ("stored", "shared", "random")
    generated = rpp and permutation == "generated"
    fused = rpp and permutation != "identity"

    kept, build, built, shapes = 0, 0, 0, set()  # build: the peak of building an index, if any
    for m, wide, _ in layers:
        if generated:
            kept += 2 * 8 * wide * 4  # the round keys, int32 (2, rounds, k*n)
        if rpp and settings["signs"] and not generated:
            kept += wide * 4  # sign keys, int32 per column
        if not indexed or (permutation == "shared" and m in shapes):
            continue
        shapes.add(m)
        index = m * wide * index_itemsize(m)
        during = 2 * index if permutation == "random" else index_build_bytes(m, wide)
        build = max(build, params * FLOAT + built + during)
        built += index
    state = 4 * params * FLOAT + built + kept

    saved, peak = 0, 2 * max(tensors) * FLOAT  # Adam: sqrt(v) and its quotient, for one parameter at a time
    for m, wide, _ in layers:
        grad_inputs = threads if fused else 1
        layer = batch_size * (saved + wide + grad_inputs * m) * FLOAT
        if fused:
            layer += threads * (FUSED_BLOCK * (3 if generated else 2) * m + m * settings["width"]) * FLOAT
        if kind == "hashed":
            layer += HASH_ENTRY * m * wide
        peak = max(peak, layer)
        saved += wide
    if layers:
        peak = max(peak, batch_size * (saved + 2 * layers[-1][1]) * FLOAT)  # ReLU backward of the last layer
    return max(build, state + peak)


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


def memory_refusal(model: dict, batch_size: int) -> str | None:
    """Why a model (its config, with the data set's `in_features` and `num_classes` where known) cannot train here:
    its step would not fit in the memory this machine has left; None if it fits or is not one of the MLP's kinds
    (the model's own checks name a bad value)."""
    if model.get("kind") not in ("dense", "rpp", "hashed", "lowrank"):
        return None
    shape = {name: model[name] for name in ("in_features", "num_classes") if name in model}  # else the MLP's own
    needed = estimate_training_bytes(model, batch_size, **shape)
    available = available_memory_bytes()
    if available is None or needed <= available:
        return None
    # name the keys that drive the estimate: the batch when most of it grows with the batch, else the model's
    batch_part = needed - estimate_training_bytes(model, 1, **shape)
    knobs = "model.k / model.width" if model.get("kind") != "dense" else "model.width"
    if batch_part > needed / 2:
        knobs = f"data.batch_size (now {batch_size}; most of the estimate grows with it) or {knobs}"
    return (f"model (kind={model.get('kind')}, width={model.get('width')}, k={model.get('k', 1)}, "
            f"depth={model.get('depth')}) needs about {needed / 2**30:.1f} GiB to train, but this machine has "
            f"{available / 2**30:.1f} GiB available; lower {knobs}")
