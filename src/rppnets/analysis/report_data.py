"""Reads a sweep's jobs (results.json, Lightning metrics.csv, Hydra's .hydra/ and multirun.yaml) and summarizes them.

Every job the sweep was asked for is listed in one of four states: finished, failed (with its reason), unfinished
(a folder without results.json: killed or interrupted) or missing (no folder at all). Only finished jobs enter the
curves and the per-network means.
"""

from __future__ import annotations

import csv
import itertools
from pathlib import Path

from rppnets.records.jobs import CURVE_COLUMNS, STATES, Job, job_folders, read_job, state_counts, sweep_grid

# The figure's title; {data} is the data set of the jobs (data.name in their .hydra/config.yaml).
TITLE = "Training loss on {data}. m=10, k=100, 2 relu hidden layers, w/ softmax output layer."
FULL_EPOCHS = 30  # the figure's training (conf/experiment/fashion_mnist_plot.yaml), on all training images

# Legend entries of the figure, in its legend order (described in experiments/fashion_mnist_plot/README.md).
LEGEND = {
    "rpp": "Permuted, width=m*k, |params|∝m",
    "rpp_nobias": "Permuted w/ no bias, width=m*k, |params|∝m",
    "dense_wide": "Non-permuted, width=m*k, |params|∝m*k",
    "dense_narrow": "Non-permuted, width=m, |params|∝m",
    "softmax": "Only softmax out, no hidden layers",
}

# Peak-memory metrics a job may report (GPU or CPU), with the short name of each kind.
MEMORY_KEYS = {"memory/cuda_max_allocated_bytes": "cuda_max_allocated", "memory/peak_rss_bytes": "peak_rss"}

SUMMARY_COLUMNS = [
    "network", "legend", "seeds", "jobs", "failed", "unfinished", "missing", "params_trainable", "index_bytes",
    "state_bytes", "step_peak_bytes", "data_bytes", "final_train_loss", "test_acc", "test_acc_min", "test_acc_max",
    "peak_memory_bytes", "memory_kind", "epoch_s", "wall_s",
]


class NoFinishedJobs(RuntimeError):
    """A sweep with jobs, none of which finished: there is nothing to draw."""


def legend(network: str) -> str:
    """Legend entry of a network; networks outside the figure are labelled by their key."""
    return LEGEND.get(network, network)


def network_order(network: str) -> tuple[int, str]:
    """Sort key: the figure's legend order, then any other networks by name."""
    keys = list(LEGEND)
    return (keys.index(network), "") if network in keys else (len(keys), network)


def job_order(job: Job) -> tuple:
    return network_order(job.network), job.seed is None, job.seed or 0


def expected_jobs(sweep_dir: Path) -> tuple[list[tuple[str, int]] | None, str | None]:
    """The (network, seed) pairs a Hydra multirun was asked for (sweep_grid); or None and why not."""
    grid, note = sweep_grid(sweep_dir)
    if grid is None:
        return None, note
    from omegaconf import OmegaConf

    path = sweep_dir / "multirun.yaml"
    cfg = OmegaConf.load(path)
    default = {"network": cfg.get("network"), "seed": cfg.get("seed")}
    pairs = []
    for values in itertools.product(*grid.values()):
        job = default | dict(zip(grid, values))
        if job["network"] in (None, "null") or job["seed"] is None:
            return None, f"expected jobs unknown: the grid in {path} does not name a network and a seed per job"
        pairs.append((str(job["network"]), int(job["seed"])))
    if len(set(pairs)) < len(pairs):
        return None, f"expected jobs unknown: {path} varies more than network and seed"
    return pairs, None


def _require_one(jobs: list[Job], attribute: str, sweep_dir: Path) -> None:
    """Stops when jobs disagree on `attribute`: one report must show one configuration."""
    by_value: dict[str, list[Job]] = {}
    for job in jobs:
        by_value.setdefault(str(getattr(job, attribute)), []).append(job)
    if len(by_value) > 1:
        found = "; ".join(f"{value} ({len(js)} jobs, e.g. {js[0].folder})" for value, js in sorted(by_value.items()))
        raise ValueError(f"{sweep_dir} mixes {len(by_value)} values of {attribute}: {found}. "
                         "Report one configuration at a time (point the report at one sweep).")


def load_sweep(sweep_dir: str | Path) -> tuple[list[Job], str | None]:
    """Every job of a sweep in legend and seed order, missing ones included; and a note when they are not known.

    Finished jobs must form one experiment (one experiment hash and W&B group); two folders for one
    (network, seed) are refused.
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep folder {sweep_dir} does not exist")
    jobs = [read_job(folder) for folder in job_folders(sweep_dir)]
    expected, note = expected_jobs(sweep_dir)
    if not jobs and expected is None:
        raise FileNotFoundError(f"no jobs below {sweep_dir}: no results.json or .hydra/ found (did the sweep run?)")
    finished = [job for job in jobs if job.finished]
    _require_one(finished, "experiment_hash", sweep_dir)
    _require_one(finished, "group", sweep_dir)
    seen: dict[tuple, Path] = {}
    for job in jobs:
        key = (job.network, job.seed)
        if key in seen:
            raise ValueError(f"two jobs for network={job.network} seed={job.seed}: {seen[key]} and {job.folder}")
        seen[key] = job.folder
    jobs += [Job(network, seed, state="missing") for network, seed in expected or [] if (network, seed) not in seen]
    return sorted(jobs, key=job_order), note


def load_jobs(sweep_dir: str | Path) -> list[Job]:
    """The finished jobs of a sweep; NoFinishedJobs when it has jobs but none finished."""
    jobs = [job for job in load_sweep(sweep_dir)[0] if job.finished]
    if not jobs:
        raise NoFinishedJobs(f"no job of {sweep_dir} finished")
    return jobs


def by_network(jobs: list[Job]) -> dict[str, list[Job]]:
    """Jobs grouped by network, keeping the order of `jobs`."""
    groups: dict[str, list[Job]] = {}
    for job in jobs:
        groups.setdefault(job.network, []).append(job)
    return groups


def job_legend(network: str, jobs: list[Job]) -> str:
    """The network's legend entry, with how many of its jobs the curve holds when not all of them finished."""
    counts = state_counts(jobs)
    if counts["finished"] == len(jobs):
        return legend(network)
    others = ", ".join(f"{counts[state]} {state}" for state in STATES[1:] if counts[state])
    return f"{legend(network)} ({counts['finished']} of {len(jobs)} seeds; {others})"


def run_settings(jobs: list[Job]) -> str | None:
    """How the finished jobs differ from the figure's full run, e.g. "2 epochs, 5,000 training images"; else None."""
    finished = [job.settings for job in jobs if job.finished and job.settings]
    epochs = sorted({s["max_epochs"] for s in finished if s.get("max_epochs") not in (None, FULL_EPOCHS)})
    sizes = sorted({s["train_size"] for s in finished if s.get("train_size") is not None})
    parts = [f"{'/'.join(map(str, epochs))} epochs"] if epochs else []
    parts += [f"{'/'.join(f'{size:,}' for size in sizes)} training images"] if sizes else []
    return ", ".join(parts) or None


def data_name(jobs: list[Job]) -> str:
    """The data set the finished jobs trained on, from their configs ("a data set not recorded" without one)."""
    names = sorted({job.settings["data"] for job in jobs if job.finished and job.settings.get("data")})
    return " / ".join(names) or "a data set not recorded"


def title(jobs: list[Job]) -> str:
    """The figure's title, naming the data set, marked when the jobs ran shorter or on fewer images than the full
    reproduction."""
    marking = run_settings(jobs)
    text = TITLE.format(data=data_name(jobs))
    return f"{text}\n({marking})" if marking else text


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
    """One row per (network, seed, epoch) of the finished jobs for curves.csv; missing values stay None."""
    return [{"network": job.network, "seed": job.seed, "epoch": epoch,
             **{name: values.get(name) for name in CURVE_COLUMNS.values()}}
            for job in jobs if job.finished for epoch, values in job.curve.items()]


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
    """Summary of one network over its finished seeds: means, except maxima for memory; and its job states."""
    counts = state_counts(jobs)
    done = [job for job in jobs if job.finished]

    def metric(key: str) -> list:
        return _present([job.metrics.get(key) for job in done])

    def mean(values: list) -> float | None:
        return _mean(values) if values else None

    test_acc = metric("test/acc")
    memory = [(job.metrics[key], kind) for job in done for key, kind in MEMORY_KEYS.items()
              if job.metrics.get(key) is not None]
    return {
        "network": network,
        "legend": legend(network),
        "seeds": len(done),
        "jobs": len(jobs),
        **{state: counts[state] for state in STATES[1:]},
        # Parameter and index counts are fixed by the configuration, so every seed has the same.
        "params_trainable": next(iter(metric("model/params_trainable")), None),
        "index_bytes": next(iter(metric("model/index_bytes")), None),
        # Memory is measured per run; seeds can differ by a few bytes of allocator bookkeeping: the largest.
        "state_bytes": max(metric("memory/state_bytes"), default=None),
        "step_peak_bytes": max(metric("memory/step_peak_bytes"), default=None),
        "data_bytes": max(metric("memory/data_bytes"), default=None),
        "final_train_loss": mean(_present([final_train_loss(job) for job in done])),
        "test_acc": mean(test_acc),
        "test_acc_min": min(test_acc, default=None),
        "test_acc_max": max(test_acc, default=None),
        "peak_memory_bytes": max((value for value, _ in memory), default=None),
        "memory_kind": "+".join(sorted({kind for _, kind in memory})) or None,
        # Mean over the epochs of each job (the run's own time/epoch_s is its last epoch's), then over seeds.
        "epoch_s": mean(_present([mean_epoch_s(job) for job in done])) or mean(metric("time/epoch_s")),
        "wall_s": mean(metric("time/wall_s")),
    }


def summarize(jobs: list[Job]) -> list[dict]:
    """One summary row per network, in legend order; networks with no finished job keep a row of counts."""
    return [summary_row(network, group) for network, group in by_network(jobs).items()]


def read_memory_csv(path: Path) -> list[dict]:
    """Rows of a memory CSV written by `python -m rppnets.analysis.memory`, in legend order (bytes as int); [] if none."""
    if not path.is_file():
        return []
    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))
    for row in rows:
        for key in ("state_bytes", "step_peak_bytes", "batch_size"):
            row[key] = int(row[key]) if row.get(key) else None
        row["loss"] = float(row["loss"]) if row.get("loss") else None
    return sorted(rows, key=lambda row: network_order(row["network"]))


def memory_points(rows: list[dict], measured: list[dict]) -> list[dict]:
    """One point per network and way of holding P: its bytes of state and step peak, its loss and test accuracy.

    Bytes come from `measured` (memory.csv: every mode of RPP) when it has the network, else from the runs
    (summary rows); loss and accuracy always from the finished runs, since the modes hold the same P.
    """
    points = []
    for row in rows:
        if not row["seeds"]:
            continue
        quality = {"final_train_loss": row["final_train_loss"], "test_acc": row["test_acc"]}
        mine = [m for m in measured if m["network"] == row["network"]]
        if not mine and row["state_bytes"] is not None and row["step_peak_bytes"] is not None:
            mine = [{"permutation": "", "state_bytes": row["state_bytes"], "step_peak_bytes": row["step_peak_bytes"]}]
        points += [{"network": row["network"], "permutation": m["permutation"], "state_bytes": m["state_bytes"],
                    "step_peak_bytes": m["step_peak_bytes"], **quality} for m in mine]
    return points
