"""The end of a sweep: which jobs finished, which failed and why, which did not finish; a non-zero exit if any."""

from __future__ import annotations

import json
import re
import sys
from hashlib import sha1
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

MAX_DIRNAME = 60  # characters of the overrides kept in a job folder's name


def job_dirname(override_dirname: str) -> str:
    """A job folder name from its overrides that is always short and one path component."""
    name = re.sub(r"[/\\]", "_", override_dirname)
    if len(name) <= MAX_DIRNAME:
        return name
    return f"{name[:MAX_DIRNAME - 9]}-{sha1(name.encode()).hexdigest()[:8]}"


def job_states(sweep_dir: Path) -> dict[str, tuple[str, str]]:
    """Job folder name -> (state, detail) for every job folder (one with .hydra/) of a sweep."""
    states = {}
    for hydra_dir in sorted(sweep_dir.glob("*/.hydra")):
        folder = hydra_dir.parent
        try:
            results = json.loads((folder / "results.json").read_text())
        except (OSError, ValueError):
            checkpoint = folder / "checkpoints" / "last.ckpt"
            states[folder.name] = ("unfinished", "checkpoint kept: rerun to resume" if checkpoint.is_file() else "")
            continue
        status = results.get("status", "finished")
        states[folder.name] = (status, results.get("error", "") if status != "finished" else "")
    return states


class SweepOutcome(Callback):
    """Hydra callback: after a multirun, print every job's state and exit with status 1 unless all finished."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(OmegaConf.select(config, "hydra.sweep.dir"))
        states = job_states(sweep_dir)
        if not states:
            return
        counts: dict[str, int] = {}
        for state, _ in states.values():
            counts[state] = counts.get(state, 0) + 1
        print(f"\nsweep {sweep_dir}: " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items())))
        for name, (state, detail) in states.items():
            if state != "finished":
                print(f"  {state}: {name}" + (f" ({detail})" if detail else ""))
        if set(counts) != {"finished"}:
            sys.exit(1)


OmegaConf.register_new_resolver("job_dirname", job_dirname, replace=True)
