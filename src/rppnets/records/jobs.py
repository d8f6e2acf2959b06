"""The jobs of a sweep as their run folders record them: read by the sweep's end (training) and the reports (analysis).

A job is finished or failed by its results.json, unfinished (a folder without one, or stopped by a signal), or missing
(expected by the sweep, with no folder at all).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from rppnets.records.run_folder import RESULTS, RunFolder

# Jobs written before the data configs had a `name` key: their data module's class says which data set it was.
DATA_NAMES_BY_CLASS = {"rppnets.data.FashionMNISTDataModule": "Fashion-MNIST"}
# Epoch-level Lightning CSV columns -> curves.csv columns.
CURVE_COLUMNS = {"train/loss_epoch": "train_loss", "val/loss": "val_loss", "val/acc": "val_acc"}
EPOCH_TIME = {"time/epoch_s": "epoch_s"}  # read per epoch too, for the mean epoch time; not a curve column
STATES = ("finished", "failed", "unfinished", "missing")


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


def state_counts(jobs: list[Job]) -> dict[str, int]:
    return {state: sum(job.state == state for job in jobs) for state in STATES}
