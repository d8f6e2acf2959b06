"""Reads the finished jobs of a sweep (results.json + Lightning metrics.csv) and summarizes them per network."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

TITLE = "Training loss on Fashion MNIST. m=10, k=100, 2 relu hidden layers, w/ softmax output layer."

# Legend entries of the figure, in its legend order (shared/EXPERIMENT.md).
LEGEND = {
    "rpp": "Permuted, width=m*k, |params|∝m",
    "rpp_nobias": "Permuted w/ no bias, width=m*k, |params|∝m",
    "dense_wide": "Non-permuted, width=m*k, |params|∝m*k",
    "dense_narrow": "Non-permuted, width=m, |params|∝m",
    "softmax": "Only softmax out, no hidden layers",
}

# Epoch-level Lightning CSV columns -> curves.csv columns.
CURVE_COLUMNS = {"train/loss_epoch": "train_loss", "val/loss": "val_loss", "val/acc": "val_acc"}
EPOCH_TIME = {"time/epoch_s": "epoch_s"}  # read per epoch too, for the mean epoch time; not a curve column

# Peak-memory metrics a job may report (GPU or CPU), with the short name of each kind.
MEMORY_KEYS = {"memory/cuda_max_allocated_bytes": "cuda_max_allocated", "memory/peak_rss_bytes": "peak_rss"}

SUMMARY_COLUMNS = [
    "network", "legend", "seeds", "params_trainable", "index_bytes", "final_train_loss",
    "test_acc", "test_acc_min", "test_acc_max", "peak_memory_bytes", "memory_kind", "epoch_s", "wall_s",
]


@dataclass
class Job:
    """One finished training job."""

    folder: Path
    network: str
    seed: int | None
    group: str | None
    experiment_hash: str | None
    metrics: dict[str, float]
    curve: dict[int, dict[str, float]]  # epoch -> {"train_loss": ..., "val_loss": ..., "val_acc": ...}


def legend(network: str) -> str:
    """Legend entry of a network; networks outside the figure are labelled by their key."""
    return LEGEND.get(network, network)


def network_order(network: str) -> tuple[int, str]:
    """Sort key: the figure's legend order, then any other networks by name."""
    keys = list(LEGEND)
    return (keys.index(network), "") if network in keys else (len(keys), network)


def read_curve(csv_path: Path) -> dict[int, dict[str, float]]:
    """Merges Lightning's rows into one set of epoch-level values per epoch.

    CSVLogger writes one row per logging call, so one epoch's values are spread over several rows.
    Rows that hold none of CURVE_COLUMNS (step rows, the test row) add no epoch.
    """
    curve: dict[int, dict[str, float]] = {}
    with open(csv_path, newline="") as file:
        for row in csv.DictReader(file):
            values = {name: float(row[column]) for column, name in (CURVE_COLUMNS | EPOCH_TIME).items()
                      if row.get(column)}
            if values and row.get("epoch"):
                curve.setdefault(int(float(row["epoch"])), {}).update(values)
    return dict(sorted(curve.items()))


def read_job(results_path: Path) -> Job:
    results = json.loads(results_path.read_text())
    csv_path = results_path.parent / results.get("csv", "csv/metrics.csv")
    if not csv_path.is_file():
        raise FileNotFoundError(f"{results_path} names the metrics file {csv_path}, which does not exist")
    return Job(
        folder=results_path.parent,
        network=results["network"],
        seed=results.get("seed"),
        group=results.get("group"),
        experiment_hash=results.get("experiment_hash"),
        metrics=results.get("metrics", {}),
        curve=read_curve(csv_path),
    )


def _require_one(jobs: list[Job], attribute: str, sweep_dir: Path) -> None:
    """Stops when jobs disagree on `attribute`: one report must show one configuration."""
    by_value: dict[str, list[Job]] = {}
    for job in jobs:
        by_value.setdefault(str(getattr(job, attribute)), []).append(job)
    if len(by_value) > 1:
        found = "; ".join(f"{value} ({len(js)} jobs, e.g. {js[0].folder})" for value, js in sorted(by_value.items()))
        raise ValueError(f"{sweep_dir} mixes {len(by_value)} values of {attribute}: {found}. "
                         "Report one configuration at a time (point the report at one sweep).")


def load_jobs(sweep_dir: str | Path) -> list[Job]:
    """All finished jobs below sweep_dir, sorted by legend order and seed; checks they form one experiment."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep folder {sweep_dir} does not exist")
    paths = sorted(sweep_dir.rglob("results.json"))
    if not paths:
        raise FileNotFoundError(f"no finished jobs below {sweep_dir}: no results.json found (did the sweep run?)")
    jobs = [read_job(path) for path in paths]
    _require_one(jobs, "experiment_hash", sweep_dir)
    _require_one(jobs, "group", sweep_dir)
    seen: dict[tuple, Path] = {}
    for job in jobs:
        key = (job.network, job.seed)
        if key in seen:
            raise ValueError(f"two jobs for network={job.network} seed={job.seed}: {seen[key]} and {job.folder}")
        seen[key] = job.folder
    return sorted(jobs, key=lambda job: (network_order(job.network), str(job.seed)))


def by_network(jobs: list[Job]) -> dict[str, list[Job]]:
    """Jobs grouped by network, keeping the order of `jobs`."""
    groups: dict[str, list[Job]] = {}
    for job in jobs:
        groups.setdefault(job.network, []).append(job)
    return groups


def loss_band(jobs: list[Job]) -> tuple[list[int], list[float], list[float], list[float]]:
    """Training loss per epoch over seeds: epochs, mean, min, max (seeds missing an epoch are left out)."""
    per_epoch: dict[int, list[float]] = {}
    for job in jobs:
        for epoch, values in job.curve.items():
            if "train_loss" in values:
                per_epoch.setdefault(epoch, []).append(values["train_loss"])
    epochs = sorted(per_epoch)
    return (epochs, [_mean(per_epoch[e]) for e in epochs],
            [min(per_epoch[e]) for e in epochs], [max(per_epoch[e]) for e in epochs])


def curve_rows(jobs: list[Job]) -> list[dict]:
    """One row per (network, seed, epoch) for curves.csv; missing values stay None."""
    return [{"network": job.network, "seed": job.seed, "epoch": epoch,
             **{name: values.get(name) for name in CURVE_COLUMNS.values()}}
            for job in jobs for epoch, values in job.curve.items()]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _present(values: list) -> list:
    return [value for value in values if value is not None]


def final_train_loss(job: Job) -> float | None:
    """The last epoch's training loss from the curve the figure shows; results.json as a fallback."""
    losses = [values["train_loss"] for values in job.curve.values() if "train_loss" in values]
    return losses[-1] if losses else job.metrics.get("train/loss")


def mean_epoch_s(job: Job) -> float | None:
    times = _present([values.get("epoch_s") for values in job.curve.values()])
    return _mean(times) if times else None


def summary_row(network: str, jobs: list[Job]) -> dict:
    """Summary of one network over its seeds: means, except the peak memory (max) and its kind."""
    def metric(key: str) -> list:
        return _present([job.metrics.get(key) for job in jobs])

    def mean(values: list) -> float | None:
        return _mean(values) if values else None

    test_acc = metric("test/acc")
    memory = [(job.metrics[key], kind) for job in jobs for key, kind in MEMORY_KEYS.items() if key in job.metrics]
    return {
        "network": network,
        "legend": legend(network),
        "seeds": len(jobs),
        # Parameter and index counts are fixed by the configuration, so every seed has the same.
        "params_trainable": next(iter(metric("model/params_trainable")), None),
        "index_bytes": next(iter(metric("model/index_bytes")), None),
        "final_train_loss": mean(_present([final_train_loss(job) for job in jobs])),
        "test_acc": mean(test_acc),
        "test_acc_min": min(test_acc, default=None),
        "test_acc_max": max(test_acc, default=None),
        "peak_memory_bytes": max((value for value, _ in memory), default=None),
        "memory_kind": "+".join(sorted({kind for _, kind in memory})) or None,
        # Mean over the epochs of each job (the run's own time/epoch_s is its last epoch's), then over seeds.
        "epoch_s": mean(_present([mean_epoch_s(job) for job in jobs])) or mean(metric("time/epoch_s")),
        "wall_s": mean(metric("time/wall_s")),
    }


def summarize(jobs: list[Job]) -> list[dict]:
    """One summary row per network, in legend order."""
    return [summary_row(network, group) for network, group in by_network(jobs).items()]
