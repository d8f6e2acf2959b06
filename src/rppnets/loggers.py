"""Loggers for a run: a CSV in the run folder always, and W&B (offline unless asked) that never stops a run."""

import os
import sys
import warnings

from hydra.utils import instantiate
from omegaconf import DictConfig

# Epoch-level metrics are charted against the epoch, not the global step.
EPOCH_METRICS = ("train/loss_epoch", "train/acc", "val/*", "time/*")


def build_loggers(logger_cfg: DictConfig, config: dict) -> list:
    """Instantiate each logger in `logger_cfg`; a W&B logger is started now so a failure falls back to offline."""
    loggers = []
    for name, cfg in (logger_cfg or {}).items():
        if cfg is None:
            continue
        if cfg.get("_target_", "").endswith("WandbLogger"):
            loggers.append(start_wandb(cfg, config))
        else:
            loggers.append(instantiate(cfg))
    return loggers


def start_wandb(cfg: DictConfig, config: dict):
    """Start the W&B run for this job with the resolved `config`; offline if the online start fails."""
    mode = cfg.get("mode") or os.environ.get("WANDB_MODE") or "offline"
    try:
        logger = instantiate(cfg, mode=mode, _partial_=True)(config=config)
        run = logger.experiment
    except Exception as err:  # no account, no network: keep training, upload later with `wandb sync`
        if mode == "offline":
            raise
        warnings.warn(f"W&B could not start in mode {mode!r} ({err}); logging offline instead.")
        logger = instantiate(cfg, mode="offline", _partial_=True)(config=config)
        run = logger.experiment
    run.define_metric("epoch")
    for pattern in EPOCH_METRICS:
        run.define_metric(pattern, step_metric="epoch")
    return logger


def finish_wandb() -> None:
    """Close this process's W&B run, if any, so the next job of a multirun starts its own."""
    wandb = sys.modules.get("wandb")  # never imported: nothing to close (and W&B need not be installed)
    if wandb is not None and wandb.run is not None:
        wandb.finish()
