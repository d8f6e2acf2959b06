"""A job's run folder: one writer at a time, its results.json and run state, and what resuming keeps of it."""

from __future__ import annotations

import csv
import fcntl
import json
import math
import os
import socket
import time
from pathlib import Path

RESULTS = "results.json"
STATE = "run_state.json"  # config hash and W&B run id, kept across resumes
CHECKPOINT = "checkpoints/last.ckpt"
METRICS_CSV = "csv/metrics.csv"


class FolderBusyError(RuntimeError):
    """Another live process holds the run folder."""


class FolderNotWritableError(OSError):
    """The run folder (or its checkpoints/) cannot be written."""


class RunFolder:
    """The files of one job's run folder; `lock()` makes this process its only writer."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock_file = None

    @property
    def results_path(self) -> Path:
        return self.path / RESULTS

    @property
    def checkpoint_path(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def csv_path(self) -> Path:
        return self.path / METRICS_CSV

    def check_writable(self) -> None:
        """Create the folder and checkpoints/ and write a probe file in each, or say which cannot be written."""
        for folder in (self.path, self.checkpoint_path.parent):
            try:
                folder.mkdir(parents=True, exist_ok=True)
                probe = folder / f".write-probe-{os.getpid()}"
                probe.write_text("")
                probe.unlink()
            except OSError as err:
                raise FolderNotWritableError(f"run folder {folder} is not writable ({err.strerror or err}); "
                                             "choose another with hydra.run.dir=... or fix its permissions") from err

    def lock(self) -> None:
        """Take the folder's lock or raise FolderBusyError naming the process that holds it.

        An flock dies with its process, so a lock left by a killed run never blocks the rerun.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        handle = open(self.path / ".lock", "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown process"
            handle.close()
            raise FolderBusyError(f"run folder {self.path} is in use by another process ({holder}); "
                                  "wait for it to finish, or run elsewhere with hydra.run.dir=...") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        handle.flush()
        self._lock_file = handle

    def unlock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # closing releases the flock
            self._lock_file = None

    def read_json(self, name: str) -> dict | None:
        path = self.path / name
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def write_json(self, name: str, content: dict) -> None:
        """Strict JSON (non-finite numbers become null), written to a temporary file and renamed into place."""
        path = self.path / name
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_text(json.dumps(finite_or_none(content), indent=2, allow_nan=False))
        os.replace(tmp, path)

    def finished_results(self, config_hash: str) -> dict | None:
        """results.json if it records a finished job of this very config, else None."""
        results = self.read_json(RESULTS)
        if results and results.get("status", "finished") == "finished" and results.get("config_hash") == config_hash:
            return results
        return None

    def set_aside(self, reason: str) -> Path | None:
        """Move the previous attempt's files (checkpoint, CSV, results, state) into replaced-<time>/; nothing is deleted."""
        names = [CHECKPOINT, METRICS_CSV, RESULTS, STATE]
        present = [name for name in names if (self.path / name).exists()]
        if not present:
            return None
        dest = self.path / f"replaced-{time.strftime('%Y%m%d-%H%M%S')}"
        for name in present:
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.path / name, dest / name)
        (dest / "REASON").write_text(reason + "\n")
        return dest

    def truncate_csv(self, epochs_done: int, global_step: int) -> int:
        """Keep the metrics rows of what the checkpoint holds: finished epochs and steps before `global_step`.

        Rows written after the checkpoint (a killed run flushes some) would otherwise appear twice. Returns the
        number of rows dropped.
        """
        if not self.csv_path.is_file():
            return 0
        with open(self.csv_path, newline="") as file:
            reader = csv.DictReader(file)
            header, rows = reader.fieldnames or [], list(reader)
        def kept(row: dict) -> bool:
            epoch = int(float(row["epoch"])) if row.get("epoch") else None
            step = int(float(row["step"])) if row.get("step") else 0
            if epoch is not None and epoch < epochs_done:
                return True
            return epoch == epochs_done and step < global_step and not _is_epoch_row(row)
        keep = [row for row in rows if kept(row)]
        tmp = self.csv_path.with_suffix(".tmp")
        with open(tmp, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=header)
            writer.writeheader()
            writer.writerows(keep)
        os.replace(tmp, self.csv_path)
        return len(rows) - len(keep)


def _is_epoch_row(row: dict) -> bool:
    """A row of epoch-end values (anything but a step loss): it belongs to a finished epoch only."""
    return any(value for key, value in row.items() if key not in ("epoch", "step", "train/loss_step"))


def finite_or_none(value):
    """A copy of a JSON-like value with NaN and infinities replaced by None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(item) for item in value]
    return value
