"""A job's run folder: one writer at a time, its results.json and run state, and what resuming keeps of it."""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import socket
import time
from pathlib import Path

RESULTS = "results.json"
STATE = "run_state.json"  # config hash and W&B run id, kept across resumes
CHECKPOINT = "checkpoints/last.ckpt"
PREVIOUS_CHECKPOINT = "checkpoints/previous.ckpt"  # the one before last.ckpt (checkpointing.AtomicCheckpointIO)
BEST_CHECKPOINT = "checkpoints/best.ckpt"  # callbacks/best_checkpoint=...: the best epoch's, kept across resumes
METRICS_CSV = "csv/metrics.csv"
CSV_IDENTITY = "csv/run.json"
WANDB = "wandb"
# Everything an attempt writes; a run started afresh sets all of it aside.
RUN_FILES = (CHECKPOINT, PREVIOUS_CHECKPOINT, BEST_CHECKPOINT, METRICS_CSV, CSV_IDENTITY, RESULTS, STATE, WANDB)


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
    def previous_checkpoint_path(self) -> Path:
        return self.path / PREVIOUS_CHECKPOINT

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
        """The file's JSON object, or None if it is missing, unreadable or damaged (read_json_or_reason says which)."""
        return self.read_json_or_reason(name)[0]

    def read_json_or_reason(self, name: str) -> tuple[dict | None, str | None]:
        """(content, None), or (None, why not): None, None when the file does not exist."""
        path = self.path / name
        try:
            content = json.loads(path.read_text())
        except FileNotFoundError:
            return None, None
        except (OSError, ValueError) as err:
            return None, f"{path} is damaged ({type(err).__name__}: {err})"
        if not isinstance(content, dict):
            return None, f"{path} is damaged (not a JSON object)"
        return content, None

    def write_json(self, name: str, content: dict) -> None:
        """Strict JSON (non-finite numbers become null), written to a temporary file and renamed into place."""
        path = self.path / name
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_text(json.dumps(finite_or_none(content), indent=2, allow_nan=False))
        os.replace(tmp, path)

    def finished_results(self, config_hash: str) -> dict | None:
        """results.json if it records a finished job of this very config whose files are as it left them, else None.

        results.json vouches for the files it lists (their SHA-1): a metrics CSV or checkpoint changed since (damaged,
        or another run's copied in) makes the job unfinished again, to be rebuilt from its newest good checkpoint.
        A checkpoint deleted after the run finished is fine (space is often freed that way); a missing CSV is not.
        A run whose offline W&B history was cut short (W&B's service gone before it closed) is not finished while its
        checkpoint is there to resume from: the rerun tests it again and replays its history into W&B.
        """
        results = self.read_json(RESULTS)
        if not (results and results.get("status", "finished") == "finished" and results.get("config_hash") == config_hash):
            return None
        if results.get("wandb_cut_short") and self.checkpoint_path.is_file():
            return None  # its offline W&B history was cut short: resumed from its last checkpoint, it is replayed whole
        for name, digest in (results.get("files") or {}).items():
            path = self.path / name
            if not path.is_file() and name.endswith(".ckpt"):
                continue
            if not path.is_file() or file_digest(path) != digest:
                return None
        return results

    def digests(self, names=(CHECKPOINT, METRICS_CSV)) -> dict[str, str]:
        """SHA-1 of each of `names` that exists, for results.json to vouch for."""
        return {name: file_digest(self.path / name) for name in names if (self.path / name).is_file()}

    def set_aside(self, reason: str, names=RUN_FILES) -> Path | None:
        """Move `names` (paths in the folder; by default every file of an attempt) into replaced-<time>/, with a
        REASON file; nothing is deleted. Returns that folder, or None if none of them existed."""
        present = [name for name in names if (self.path / name).exists() or (self.path / name).is_symlink()]
        if not present:
            return None
        stamp = time.strftime('%Y%m%d-%H%M%S')
        dest = self.path / f"replaced-{stamp}"
        for n in range(1, 1000):  # two set-asides in one second keep both
            if not dest.exists():
                break
            dest = self.path / f"replaced-{stamp}-{n}"
        for name in present:
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.path / name, dest / name)
        (dest / "REASON").write_text(reason + "\n")
        return dest


def file_digest(path: Path) -> str:
    """The SHA-1 of a file's bytes, read in blocks."""
    digest = hashlib.sha1()
    with open(path, "rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def finite_or_none(value):
    """A copy of a JSON-like value with NaN and infinities replaced by None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(item) for item in value]
    return value
