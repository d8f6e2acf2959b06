"""A run's logged history: every logger call recorded, kept in each checkpoint, written as metrics.csv, replayed on resume."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from lightning_fabric.loggers.logger import rank_zero_experiment
from pytorch_lightning.loggers import Logger
from pytorch_lightning.utilities.rank_zero import rank_zero_only
from torch import Tensor

METRICS_FILE = "metrics.csv"
IDENTITY_FILE = "run.json"  # the run's identity beside its CSV


class RunHistory(Logger):
    """The CSV logger of a run, and the record that resuming is built on.

    Every ``log_metrics`` call is kept in `rows` (its metrics and step, in order). The checkpoint stores the rows
    (rppnets.training.checkpointing), so a resumed run starts from exactly the history its checkpoint saw: the CSV is
    rewritten from it whole, and fresh loggers (W&B) are given it again (`replay`), instead of trimming what a killed
    attempt left behind by guesswork. ``save()`` writes ``<save_dir>/<name>/metrics.csv`` (Lightning's CSV layout:
    one row per call, a ``step`` column, sorted header) to a temporary file and renames it into place.

    Args:
        save_dir: the run folder.
        name: the CSV's sub-folder. Default: ``"csv"``.
        identity: written to ``<name>/run.json`` (the run's config hash and name), so the CSV names its run.
    """

    def __init__(self, save_dir: str | Path, name: str = "csv", identity: dict | None = None, **_ignored):
        super().__init__()
        self._dir = Path(save_dir) / name
        self.rows: list[dict] = []
        self.identity = identity
        self._written = 0  # rows on disk

    @property
    def name(self) -> str:
        return self._dir.name

    @property
    def version(self) -> str:
        return ""

    @property
    def log_dir(self) -> str:
        return str(self._dir)

    @property
    def csv_path(self) -> Path:
        return self._dir / METRICS_FILE

    @property
    @rank_zero_experiment
    def experiment(self) -> "RunHistory":
        return self

    @rank_zero_only
    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass  # the config is in .hydra/ and in the W&B run

    @rank_zero_only
    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        row = {key: value.item() if isinstance(value, Tensor) else value for key, value in metrics.items()}
        row["step"] = len(self.rows) if step is None else step
        self.rows.append(row)

    def restore(self, rows: list[dict]) -> None:
        """Start from a checkpoint's rows; the CSV is rewritten from them at the next save."""
        self.rows = [dict(row) for row in rows]
        self._written = -1

    @rank_zero_only
    def save(self) -> None:
        if self._written == len(self.rows):
            return
        self._dir.mkdir(parents=True, exist_ok=True)
        if self.identity is not None and not (self._dir / IDENTITY_FILE).is_file():
            _write_atomic(self._dir / IDENTITY_FILE, json.dumps(self.identity, indent=2) + "\n")
        header = sorted(set().union(*self.rows)) if self.rows else ["step"]
        tmp = self.csv_path.with_name(f".{METRICS_FILE}.tmp")
        with open(tmp, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=header)
            writer.writeheader()
            writer.writerows(self.rows)
        os.replace(tmp, self.csv_path)
        self._written = len(self.rows)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.save()


def replay(rows: list[dict], loggers: list[Logger]) -> None:
    """Give `loggers` the calls of `rows` again, in order, with their steps: a fresh W&B run of a resumed job then
    holds the same records (and the same automatic step numbers) as the uninterrupted run's."""
    for row in rows:
        metrics = {key: value for key, value in row.items() if key != "step"}
        for logger in loggers:
            logger.log_metrics(metrics, step=row["step"])


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
