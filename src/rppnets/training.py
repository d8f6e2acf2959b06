"""`train(cfg)`: one run from a composed config to a trained, tested, logged model and its results.json."""

import gc
import hashlib
import json
import os
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from rppnets.checks import check_int
from rppnets.classifier import Classifier
from rppnets.loggers import build_loggers, finish_wandb


class ConfigError(ValueError):
    """A config value that cannot work; raised before any training starts."""


def config_hash(config: dict, exclude=("paths", "hydra", "skip_finished")) -> str:
    kept = {key: value for key, value in config.items() if key not in exclude}
    return hashlib.sha1(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:10]


def experiment_hash(cfg: DictConfig) -> str:
    """What must match across the jobs of one figure: the config apart from network, seed and run folder."""
    neutral = cfg.copy()
    with open_dict(neutral):
        neutral.seed, neutral.run_name, neutral.paths.output_dir = 0, "", ""  # also where they are interpolated
    return config_hash(OmegaConf.to_container(neutral, resolve=True),
                       exclude=("model", "network", "paths", "hydra", "skip_finished"))


def run_name(cfg: DictConfig) -> str:
    """A short name for the run from its model: ``dense-w1000``, ``rpp-w10-k100-nobias``, ``softmax``."""
    model = cfg.model
    if model.depth == 0:
        name = "softmax"
    elif model.kind == "rpp":
        name = f"rpp-w{model.width}-k{model.k}" + ("-nobias" if model.bias == "none" else "")
    else:
        name = f"dense-w{model.width}" + ("" if model.bias else "-nobias")
    if model.depth not in (0, 2):
        name += f"-d{model.depth}"
    return f"{name}-s{cfg.seed}"


def _build(cfg: DictConfig, key: str, **kwargs):
    """Instantiate `cfg[key]`; a bad value becomes a ConfigError that names the key."""
    try:
        return instantiate(cfg[key], **kwargs)
    except InstantiationException as err:
        cause = err.__cause__ if isinstance(err.__cause__, ValueError) else err
        raise ConfigError(f"{key}.{cause}") from err
    except ValueError as err:
        raise ConfigError(f"{key}.{err}") from err


def check_config(cfg: DictConfig) -> None:
    """Checks that need no object built; each failure names the key, the value and what is allowed."""
    try:
        check_int("trainer.max_epochs", cfg.trainer.get("max_epochs"), 1)
        check_int("seed", cfg.get("seed"), 0)
    except ValueError as err:
        raise ConfigError(str(err)) from err


def train(cfg: DictConfig) -> dict:
    """Train, validate and test one network; return its final metrics. Writes results.json into the run folder."""
    check_config(cfg)
    output_dir = Path(cfg.paths.output_dir)
    config = OmegaConf.to_container(cfg, resolve=True)
    this_hash = config_hash(config)
    results_path = output_dir / "results.json"
    if cfg.get("skip_finished") and results_path.exists():
        results = json.loads(results_path.read_text())
        if results.get("config_hash") == this_hash:
            print(f"{results['run_name']}: already finished in {output_dir}, skipping (delete results.json to rerun)")
            return results["metrics"]

    with open_dict(cfg):
        cfg.run_name = cfg.get("run_name") or run_name(cfg)
    config["run_name"] = cfg.run_name
    # Seed before anything draws a random number: the model's initial weights come next.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    # Build everything that can reject a value before the first batch.
    datamodule = _build(cfg, "data")
    net = _build(cfg, "model")
    module = Classifier(net, optimizer=_build(cfg, "optimizer"))

    # The previous job of a multirun leaves its trainer, data and model in reference cycles: free them now, so
    # this job's peak memory is its own.
    gc.collect()
    started = time.perf_counter()
    try:
        loggers = build_loggers(cfg.get("logger"), config)
        callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
        trainer = _build(cfg, "trainer", logger=loggers or False, callbacks=callbacks)
        trainer.fit(module, datamodule=datamodule)
        metrics = dict(trainer.callback_metrics)  # testing replaces callback_metrics: keep fit's
        trainer.test(module, datamodule=datamodule, verbose=False)
        metrics.update(trainer.callback_metrics)
        for callback in callbacks:
            metrics.update(getattr(callback, "metrics", {}))  # run-level numbers (RunMetrics)
        metrics = {key: value.item() if torch.is_tensor(value) else value for key, value in metrics.items()}
        metrics["train/loss"] = metrics.get("train/loss_epoch")
        metrics["time/wall_s"] = time.perf_counter() - started
        wandb_dir = next((lg.experiment.dir for lg in loggers if type(lg).__name__ == "WandbLogger"), None)
    finally:
        finish_wandb()

    results = {
        "network": cfg.get("network") or cfg.run_name.rsplit("-s", 1)[0],
        "seed": cfg.seed,
        "run_name": cfg.run_name,
        "group": cfg.get("group"),
        "config_hash": this_hash,
        "experiment_hash": experiment_hash(cfg),
        "csv": "csv/metrics.csv",
        "metrics": metrics,
    }
    results_path.write_text(json.dumps(results, indent=2))  # last: its presence marks the job finished
    print_summary(results, output_dir, wandb_dir)
    return metrics


def print_summary(results: dict, output_dir: Path, wandb_dir: str | None) -> None:
    """The few lines a researcher reads when a run ends."""
    m = results["metrics"]
    shown = ("train/loss", "val/loss", "val/acc", "test/loss", "test/acc", "model/params_trainable")
    print(f"\n{results['run_name']} finished in {m['time/wall_s']:.1f} s")
    print("  " + "  ".join(f"{key} {m[key]:.4g}" for key in shown if m.get(key) is not None))
    print(f"  run folder: {output_dir}")
    print(f"  metrics CSV: {output_dir / results['csv']}")
    if wandb_dir:
        run_dir = Path(wandb_dir).parent
        print(f"  W&B run: {run_dir}  (upload with: wandb sync {run_dir})")
