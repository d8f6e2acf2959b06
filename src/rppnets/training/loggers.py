"""Loggers for a run: a CSV in the run folder always, and W&B (offline unless asked) that never stops a run."""

import csv
import os
import sys
import warnings

from hydra.utils import instantiate
from lightning_fabric.loggers.logger import rank_zero_experiment
from omegaconf import DictConfig
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter

# Epoch-level metrics are charted against the epoch, not the global step.
EPOCH_METRICS = ("train/loss_epoch", "train/acc", "val/*", "time/*")


# How long an online W&B start may wait for its server before the run logs offline instead.
ONLINE_TIMEOUT_S = 15
_online_failed = False  # once the server could not be reached, later jobs of this process go offline at once


def build_loggers(logger_cfg: DictConfig, config: dict, wandb_id: str | None = None, resume: bool = False) -> list:
    """Instantiate each logger in `logger_cfg`; a W&B logger is started now so a failure falls back to offline.

    `wandb_id` names the W&B run; with `resume` the job continues that run (a resumed job).
    """
    loggers = []
    for name, cfg in (logger_cfg or {}).items():
        if cfg is None:
            continue
        if cfg.get("_target_", "").endswith("WandbLogger"):
            loggers.append(start_wandb(cfg, config, wandb_id, resume))
        else:
            loggers.append(instantiate(cfg))
    return loggers


def start_wandb(cfg: DictConfig, config: dict, wandb_id: str | None = None, resume: bool = False):
    """Start the W&B run for this job with the resolved `config`; offline if the online start fails."""
    global _online_failed
    import wandb

    mode = cfg.get("mode") or os.environ.get("WANDB_MODE") or "offline"
    if mode == "online" and _online_failed:
        mode = "offline"
    # Offline, W&B has nothing to say that the run's own summary (its W&B folder, how to view and sync it) does not;
    # online it prints the run's URL.
    settings = wandb.Settings(init_timeout=ONLINE_TIMEOUT_S, quiet=True, silent=mode == "offline")
    kwargs = {"config": config, "id": wandb_id, "resume": "allow" if resume else None, "settings": settings}
    try:
        logger = _without_anonymous(instantiate(cfg, mode=mode, _partial_=True)(**kwargs))
        run = logger.experiment
    except Exception as err:  # no account, no network: keep training, upload later with `wandb sync`
        if mode == "offline":
            raise
        _online_failed = True
        warnings.warn(f"W&B could not start in mode {mode!r} ({err}); logging offline instead "
                      "(for the rest of this process too).")
        wandb.teardown()  # the failed start still holds the run id in W&B's service process
        logger = _without_anonymous(instantiate(cfg, mode="offline", _partial_=True)(**kwargs))
        run = logger.experiment
    run.define_metric("epoch")
    for pattern in EPOCH_METRICS:
        run.define_metric(pattern, step_metric="epoch")
    return logger


def _without_anonymous(logger):
    """Lightning passes W&B `anonymous=None`, which W&B 0.31 ignores with a warning on every run; leave it out."""
    logger._wandb_init.pop("anonymous", None)
    return logger


def finish_wandb(exit_code: int | None = None, preempted: bool = False) -> None:
    """Close this process's W&B run, if any, so the next job of a multirun starts its own.

    A non-zero `exit_code` marks the run failed; `preempted` marks it as stopped to be resumed.
    """
    wandb = sys.modules.get("wandb")  # never imported: nothing to close (and W&B need not be installed)
    if wandb is not None and wandb.run is not None:
        if preempted:
            wandb.run.mark_preempting()
        wandb.finish(exit_code=exit_code)


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer, except that an existing metrics.csv is continued (a resumed run), not deleted."""

    def _check_log_dir_exists(self) -> None:
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as file:
                self.metrics_keys = sorted(csv.DictReader(file).fieldnames or [])


class ResumableCSVLogger(CSVLogger):
    """CSVLogger that appends to the run folder's metrics.csv, whose rows past the checkpoint train() has dropped."""

    @property
    @rank_zero_experiment
    def experiment(self) -> _AppendingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment
