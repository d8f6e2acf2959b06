"""`evaluate(cfg)`: a finished run's checkpoint, checked to be that run's, tested on its own data set or another of the
same input size and classes; the metrics go to <run folder>/eval.json and to a W&B run of job type eval."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf, open_dict

from rppnets.console import silence_known_noise
from rppnets.records.run_folder import RESULTS, RunFolder
from rppnets.training.checkpointing import AtomicCheckpointIO, read_checkpoint
from rppnets.training.classifier import Classifier
from rppnets.training.loggers import build_loggers, finish_wandb
from rppnets.training.pipeline import ConfigError, _build, _download, _resolved_anywhere, data_sizes, run_hash
from rppnets.training.resume import find_resume_point

EVAL = "eval.json"
CHECKPOINTS = {"last": "checkpoints/last.ckpt", "best": "checkpoints/best.ckpt"}
RUN_CONFIG = ".hydra/config.yaml"  # the run's config as Hydra composed it (its hash is results.json's)


class EvalRefused(ConfigError):
    """The run folder, its checkpoint or the data set asked for cannot be evaluated; nothing was evaluated."""


def evaluate(cfg: DictConfig) -> dict:
    """Test the checkpoint `cfg.checkpoint` of the finished run in `cfg.run` on the test set of its own data set, or of
    `cfg.data` if set; write eval.json beside results.json and return what it holds. Raises EvalRefused, before
    anything is evaluated or written, for a folder without a finished run or its checkpoint, a checkpoint of another
    config, and a data set of another input size or number of classes."""
    silence_known_noise()
    folder = RunFolder(Path(str(cfg.run)))
    results = _finished_results(folder)
    if cfg.checkpoint not in CHECKPOINTS:
        raise EvalRefused(f"checkpoint={cfg.checkpoint!r} is invalid; allowed: {', '.join(CHECKPOINTS)}")
    checkpoint = folder.path / CHECKPOINTS[cfg.checkpoint]
    if not checkpoint.is_file():
        how = " (train with callbacks/best_checkpoint=val_loss to keep one)" if cfg.checkpoint == "best" else ""
        raise EvalRefused(f"{folder.path} holds no checkpoint {CHECKPOINTS[cfg.checkpoint]}{how}")

    # The run's own config, as Hydra saved it: it must be the one results.json records (the same hash).
    run_cfg = _run_config(folder, results)
    this_hash = run_hash(run_cfg)
    if this_hash != results["config_hash"]:
        raise EvalRefused(f"{folder.path / RUN_CONFIG} is not the config of the run in {folder.results_path} (config "
                          f"hash {this_hash}, results.json {results['config_hash']})")
    identity = {"config_hash": this_hash, "config": _resolved_anywhere(run_cfg)}
    with open_dict(run_cfg):
        run_cfg.run_name = results.get("run_name") or run_cfg.get("run_name")

    pl.seed_everything(run_cfg.seed, workers=True, verbose=False)
    own_data = _build(run_cfg, "data")
    sizes = data_sizes(run_cfg.model, own_data)
    module = Classifier(_build(run_cfg, "model", **sizes), optimizer=_build(run_cfg, "optimizer"),
                        num_classes=getattr(own_data, "num_classes", run_cfg.model.get("num_classes", 10)))
    # The checkpoint must hold this run (its stamped config hash) and fit its model: resuming's own checks.
    point, refused = find_resume_point([checkpoint], identity, module)
    if point is None:
        raise EvalRefused(f"cannot evaluate: {refused.get(checkpoint, 'the checkpoint cannot be read')}")

    datamodule = own_data
    if cfg.get("data") is not None:  # another data set: it is built into the run's config (its ${seed} is the run's)
        with open_dict(run_cfg):
            run_cfg.data = OmegaConf.to_container(cfg.data)
        datamodule = _build(run_cfg, "data")
    _check_same_shape(own_data, datamodule, cfg)
    _download(datamodule)

    module.load_state_dict(read_checkpoint(checkpoint)["state_dict"])
    record = {"run_name": run_cfg.run_name, "config_hash": this_hash, "checkpoint": CHECKPOINTS[cfg.checkpoint],
              "epochs_done": point.progress["epochs_done"], "global_step": point.progress["global_step"],
              "data": {"name": getattr(datamodule, "name", None) or run_cfg.data.get("name"),
                       "own": cfg.get("data") is None, "config": OmegaConf.to_container(run_cfg.data, resolve=True)},
              "evaluated_at": time.strftime("%Y-%m-%d %H:%M:%S")}
    loggers = _wandb(cfg, run_cfg, record, results)
    try:
        trainer = pl.Trainer(accelerator=cfg.accelerator, devices=1, logger=loggers or False, deterministic=True,
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                             plugins=[AtomicCheckpointIO()], default_root_dir=str(folder.path / "eval"))
        trainer.test(module, datamodule=datamodule, verbose=False)
        metrics = {key: float(value) for key, value in trainer.callback_metrics.items() if key.startswith("test/")}
    finally:
        finish_wandb()
    record["metrics"] = metrics
    wandb_dir = next((Path(lg.experiment.dir).parent for lg in loggers if hasattr(lg, "experiment")), None)
    if wandb_dir is not None and wandb_dir.is_dir():
        record["wandb"] = str(wandb_dir.relative_to(folder.path)) if wandb_dir.is_relative_to(folder.path) \
            else str(wandb_dir)
    folder.write_json(EVAL, record)
    return record


def _finished_results(folder: RunFolder) -> dict:
    if not folder.path.is_dir():
        raise EvalRefused(f"run={folder.path} is not a folder; allowed: a run folder (outputs/runs/<date>_<time>, or "
                          "a sweep's job folder)")
    results, damaged = folder.read_json_or_reason(RESULTS)
    if results is None:
        raise EvalRefused(damaged or f"{folder.path} holds no finished run (no {RESULTS})")
    if results.get("status", "finished") != "finished":
        raise EvalRefused(f"{folder.path} holds no finished run ({RESULTS}: status {results.get('status')!r}); "
                          "run its training command again to finish it")
    if not results.get("config_hash"):
        raise EvalRefused(f"{folder.results_path} records no config hash: whose run it holds cannot be checked")
    return results


def _run_config(folder: RunFolder, results: dict) -> DictConfig:
    path = folder.path / RUN_CONFIG
    if not path.is_file():
        raise EvalRefused(f"{folder.path} has no {RUN_CONFIG}: the run's config cannot be rebuilt")
    run_cfg = OmegaConf.load(path)
    with open_dict(run_cfg):
        run_cfg.paths = {"output_dir": str(folder.path)}  # Hydra's ${hydra:runtime.output_dir}, as the run had it
    return run_cfg


def _check_same_shape(own, other, cfg: DictConfig) -> None:
    """The model takes the inputs and gives the classes of the data set it was trained on: another data set must have
    the same (e.g. MNIST for a Fashion-MNIST run; not CIFAR-10's 3x32x32 colour images)."""
    ours = (tuple(getattr(own, "input_shape", ())), getattr(own, "num_classes", None))
    theirs = (tuple(getattr(other, "input_shape", ())), getattr(other, "num_classes", None))
    if ours != theirs:
        name = getattr(other, "name", "the data set")
        raise EvalRefused(f"data: {name} has inputs of shape {list(theirs[0])} and {theirs[1]} classes; the run's "
                          f"model takes {list(ours[0])} and {ours[1]} (a data set of the same input size and classes "
                          "is allowed, e.g. data=mnist for a Fashion-MNIST run)")


def _wandb(cfg: DictConfig, run_cfg: DictConfig, record: dict, results: dict) -> list:
    """The W&B run of this evaluation (job type eval, the run's group, named after it), or none. Only W&B loggers:
    eval.json is the record, and the run's own CSV is left as it is. A W&B that cannot start never stops the eval."""
    logger_cfg = cfg.get("logger") or {}
    wanted = {name: c for name, c in logger_cfg.items() if c is not None and "Wandb" in str(c.get("_target_", ""))}
    if not wanted:
        return []
    with open_dict(cfg):
        cfg.run_name, cfg.group = run_cfg.run_name, results.get("group") or run_cfg.get("group")
    config = {"eval": record, "run": OmegaConf.to_container(run_cfg, resolve=True)}
    save_dir = Path(str(wanted[next(iter(wanted))].get("save_dir") or "."))
    try:
        save_dir.mkdir(exist_ok=True)  # before W&B starts: it looks for a git root there
        resolved = OmegaConf.create({name: OmegaConf.to_container(c, resolve=True) for name, c in wanted.items()})
        return build_loggers(resolved, config, wandb_id=uuid.uuid4().hex[:12])
    except Exception as err:  # no network, a broken W&B: eval.json is written all the same
        print(f"W&B could not start ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); the "
              "evaluation goes on without it, eval.json keeps the record")
        return []
