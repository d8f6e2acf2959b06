"""The end of a sweep: which jobs finished, which failed and why, which did not finish; a non-zero exit if any."""

from __future__ import annotations

import re
import sys
from hashlib import sha1
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from rppnets.records.jobs import job_folders, read_job, state_counts

MAX_DIRNAME = 60  # characters of the overrides kept in a job folder's name


def job_dirname(override_dirname: str) -> str:
    """A job folder name from its overrides that is always short and one path component."""
    name = re.sub(r"[/\\]", "_", override_dirname)
    if len(name) <= MAX_DIRNAME:
        return name
    return f"{name[:MAX_DIRNAME - 9]}-{sha1(name.encode()).hexdigest()[:8]}"


class SweepOutcome(Callback):
    """Hydra callback: after a multirun, print every job's state and exit with status 1 unless all finished."""

    started = False  # set in the process that launches the sweep: src/train.py tells status 1 from a config error

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        SweepOutcome.started = True

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(OmegaConf.select(config, "hydra.sweep.dir"))
        jobs = [read_job(folder) for folder in job_folders(sweep_dir)]
        if not jobs:
            return
        counts = {state: n for state, n in state_counts(jobs).items() if n}
        print(f"\nsweep {sweep_dir}: " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items())))
        for job in jobs:
            if not job.finished:
                print(f"  {job.folder.name}: {job.describe()}")
        if set(counts) != {"finished"}:
            sys.exit(1)


OmegaConf.register_new_resolver("job_dirname", job_dirname, replace=True)
