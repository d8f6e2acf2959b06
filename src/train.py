"""Hydra entry point: `python src/train.py model=rpp model.k=100` trains one network (add -m to sweep)."""

import shutil
import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from rppnets.checkpointing import Preempted, requeue_slurm_job
from rppnets.console import silence_known_noise
from rppnets.run_folder import RESULTS, RunFolder
from rppnets.sweep import job_dirname  # noqa: F401  (registers the job folder name resolver)
from rppnets.training import ConfigError, train

# Exit statuses: 1 a job failed, 2 bad input (a single run), 128 + signal number when stopped by a signal.
FAILED, INVALID = 1, 2


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    silence_known_noise()  # here, not at import: a launcher's worker process runs only this function
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        metrics = train(cfg)
    except Preempted as stop:  # a checkpoint is saved; stop this process (a sweep too), requeue under SLURM
        requeue_slurm_job()
        sys.exit(128 + stop.signum)
    except ConfigError as err:
        print(f"Invalid config: {err}", file=sys.stderr)
        if multirun:  # the job's folder records why; the other jobs go on
            record = {"status": "failed", "error": f"invalid config: {err}", "network": cfg.get("network"),
                      "seed": cfg.get("seed")}
            try:
                RunFolder(cfg.paths.output_dir).write_json(RESULTS, record)
            except OSError:
                pass  # an unwritable folder is the error itself
            return None
        remove_if_only_hydra_files(Path(cfg.paths.output_dir))
        sys.exit(INVALID)
    except Exception as err:  # the failure is recorded in results.json by train()
        expected = type(err).__module__.startswith("rppnets")
        print(f"Job failed: {err}" if expected else traceback.format_exc(), file=sys.stderr)
        if multirun:
            return None
        sys.exit(FAILED)
    return metrics.get("val/loss", metrics.get("train/loss"))  # for Hydra sweepers that optimise


def remove_if_only_hydra_files(folder: Path) -> None:
    """A single run refused before it started leaves no folder behind (Hydra made it and its .hydra/)."""
    if folder.is_dir() and {p.name for p in folder.iterdir()} <= {".hydra", "train.log"}:
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
