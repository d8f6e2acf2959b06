"""Reads a sweep's jobs (results.json, Lightning metrics.csv, Hydra's .hydra/ and multirun.yaml) and summarizes them.

Every job the sweep was asked for is listed in one of four states: finished, failed (with its reason), unfinished
(a folder without results.json: killed or interrupted) or missing (no folder at all). Only finished jobs enter the
curves and the per-network means.
"""

from __future__ import annotations

import csv
import itertools
from dataclasses import dataclass, field
from pathlib import Path

from rppnets.training.run_folder import RESULTS, RunFolder

# The figure's title; {data} is the data set of the jobs (data.name in their .hydra/config.yaml).
TITLE = "Training loss on {data}. m=10, k=100, 2 relu hidden layers, w/ softmax output layer."
# Jobs written before the data configs had a `name` key: their data module's class says which data set it was.
DATA_NAMES_BY_CLASS = {"rppnets.data.FashionMNISTDataModule": "Fashion-MNIST"}
FULL_EPOCHS = 30  # the figure's training (conf/experiment/fashion_mnist_plot.yaml), on all training images

# Legend entries of the figure, in its legend order (described in experiments/fashion_mnist_plot/README.md).
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

STATES = ("finished", "failed", "unfinished", "missing")
SUMMARY_COLUMNS = [
    "network", "legend", "seeds", "jobs", "failed", "unfinished", "missing", "params_trainable", "index_bytes",
    "state_bytes", "step_peak_bytes", "data_bytes", "final_train_loss", "test_acc", "test_acc_min", "test_acc_max",
    "peak_memory_bytes", "memory_kind", "epoch_s", "wall_s",
]


class NoFinishedJobs(RuntimeError):
    """A sweep with jobs, none of which finished: there is nothing to draw."""


@dataclass
class Job:
    """One job of a sweep: found in a folder (finished, failed, unfinished) or expected and missing."""

    network: str
    seed: int | None
    state: str = "finished"
    folder: Path | None = None
    reason: str | None = None  # why it failed, or what an unfinished job left
    group: str | None = None
    experiment_hash: str | None = None
    metrics: dict[str, float | None] = field(default_factory=dict)
    curve: dict[int, dict[str, float]] = field(default_factory=dict)  # epoch -> {"train_loss": ..., ...}
    settings: dict = field(default_factory=dict)  # from .hydra/config.yaml: max_epochs, train_size, permutation

    @property
    def finished(self) -> bool:
        return self.state == "finished"

    def describe(self) -> str:
        """The state as the report prints it: ``failed: <reason>``, ``unfinished (<what is left>)``, ..."""
        if self.state == "failed":
            return f"failed: {self.reason}"
        return f"unfinished ({self.reason})" if self.state == "unfinished" else self.state


def legend(network: str) -> str:
    """Legend entry of a network; networks outside the figure are labelled by their key."""
    return LEGEND.get(network, network)


def network_order(network: str) -> tuple[int, str]:
    """Sort key: the figure's legend order, then any other networks by name."""
    keys = list(LEGEND)
    return (keys.index(network), "") if network in keys else (len(keys), network)


def job_order(job: Job) -> tuple:
    return network_order(job.network), job.seed is None, job.seed or 0


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


def read_settings(folder: Path) -> dict:
    """What the report needs of a job's Hydra config: network, seed, epochs, training images, how P is held."""
    path = folder / ".hydra" / "config.yaml"
    if not path.is_file():
        return {}
    from omegaconf import OmegaConf

    try:
        cfg = OmegaConf.load(path)
    except Exception:  # a damaged config: the job is still listed, by its results or its folder's name
        return {}
    settings = {"network": cfg.get("network"), "seed": cfg.get("seed"),
                "max_epochs": OmegaConf.select(cfg, "trainer.max_epochs"),
                "train_size": OmegaConf.select(cfg, "data.train_size"),
                "data": OmegaConf.select(cfg, "data.name")
                or DATA_NAMES_BY_CLASS.get(OmegaConf.select(cfg, "data._target_"))}
    if OmegaConf.select(cfg, "model.kind") == "rpp":
        settings["permutation"] = OmegaConf.select(cfg, "model.permutation")
    return settings


def read_job(folder: Path) -> Job:
    """The job of one folder: finished or failed by its results.json (no "status": finished), else unfinished."""
    settings = read_settings(folder)
    results, damaged = RunFolder(folder).read_json_or_reason(RESULTS)
    damaged = damaged and f"{damaged}; rerun the job to rebuild it"
    job = Job(network=(results or {}).get("network") or settings.get("network") or folder.name,
              seed=(results or {}).get("seed", settings.get("seed")), folder=folder, settings=settings)
    left = "last.ckpt kept" if (folder / "checkpoints" / "last.ckpt").is_file() else "no checkpoint"
    if results is None or results.get("status") == "stopped":  # killed, interrupted, stopped by a signal, damaged
        job.state, job.reason = "unfinished", "; ".join(filter(None, [damaged, (results or {}).get("error"), left]))
        return job
    job.group, job.experiment_hash = results.get("group"), results.get("experiment_hash")
    job.metrics = results.get("metrics") or {}
    if results.get("status", "finished") != "finished":
        job.state, job.reason = "failed", results.get("error") or "no reason recorded"
        return job
    csv_path = folder / results.get("csv", "csv/metrics.csv")
    try:
        job.curve = read_curve(csv_path)
    except (OSError, ValueError, KeyError, csv.Error) as err:
        job.state, job.reason = "unfinished", f"{csv_path} cannot be read ({type(err).__name__}: {err}); {left}"
        job.metrics = {}
    return job



def job_folders(sweep_dir: Path) -> list[Path]:
    """Folders holding .hydra/ or results.json, except those inside another (a job's set-aside earlier attempts)."""
    found = {path.parent for path in sweep_dir.rglob(".hydra") if path.is_dir()}
    found |= {path.parent for path in sweep_dir.rglob("results.json")}
    return sorted(folder for folder in found if not any(parent in found for parent in folder.parents))


def sweep_grid(sweep_dir: Path) -> tuple[dict[str, list[str]] | None, str | None]:
    """The values of each swept key of a Hydra multirun, from its multirun.yaml; or None and why not.

    The grid is the one Hydra's basic sweeper runs: the sweeper's params, then the command line's task
    overrides (a later value of a key replaces an earlier one), each sweep expanded; its jobs are the product.
    """
    path = sweep_dir / "multirun.yaml"
    if not path.is_file():
        return None, None
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(path)
    sweeper = str(OmegaConf.select(cfg, "hydra.sweeper._target_") or "")
    if not sweeper.endswith("BasicSweeper"):
        return None, f"expected jobs unknown: {sweeper or 'the sweeper'} does not sweep a fixed grid"
    params = OmegaConf.select(cfg, "hydra.sweeper.params") or {}
    arguments = [f"{key}={value}" for key, value in params.items()]
    arguments += list(OmegaConf.select(cfg, "hydra.overrides.task") or [])
    grid: dict[str, list[str]] = {}
    for override in OverridesParser.create().parse_overrides(arguments):
        values = (list(override.sweep_string_iterator()) if override.is_sweep_override()
                  else [override.get_value_element_as_str()])
        grid[override.get_key_element()] = values
    return grid, None


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


def state_counts(jobs: list[Job]) -> dict[str, int]:
    return {state: sum(job.state == state for job in jobs) for state in STATES}


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
