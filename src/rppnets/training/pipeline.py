"""`train(cfg)`: one run from a composed config to a trained, tested, logged model and its results.json."""

import gc
import hashlib
import inspect
import json
import math
import os
import signal
import sys
import uuid
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.callbacks import ProgressBar
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities.exceptions import SIGTERMException
from pytorch_lightning.utilities.rank_zero import rank_zero_only
from torch.nn.parallel import DistributedDataParallel

from rppnets.training.checkpointing import AtomicCheckpointIO, Attempts, LastCheckpoint, Preempted, RandomStates, \
    StopSignals
from rppnets.training.callbacks import RunMetrics
from rppnets.checks import check_int
from rppnets.data import DataNotFoundError
from rppnets.console import file_named, program, shell_word, silence_known_noise
from rppnets.training.bounded import MemoryReserve, bounded_thread_starts, failure_text
from rppnets.training.classifier import Classifier
from rppnets.training.cluster import cluster_environment
from rppnets.training.loggers import ContainedWandbLogger, build_loggers, finish_wandb, \
    library_logging_errors_collapsed
from rppnets.records.jobs import sweep_grid
from rppnets.resources import memory_refusal, threads_per_job
from rppnets.training.history import RunHistory, replay
from rppnets.training.resume import ResumePoint, find_resume_point
from rppnets.records.run_folder import CHECKPOINT, METRICS_CSV, RESULTS, STATE, WANDB, FolderNotWritableError, \
    RunFolder


class ConfigError(ValueError):
    """A config value that cannot work; raised before any training starts."""


# torch.compile's modes, for the `compile` key (null: eager)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

# Keys that decide where things are, or what the console shows, never what a run computes (the data is checked by
# MD5 wherever it lies): left out of the config hash along with `paths` and `hydra`.
NEUTRAL_KEYS = {"data": ("root", "system_dir", "download", "verify_md5", "name"), "callbacks": ("progress_bar",),
                "trainer": ("enable_progress_bar",)}


def config_hash(config: dict, exclude=("paths", "hydra", "skip_finished", "resume")) -> str:
    """A short hash of what decides a run's results: the resolved config minus `exclude` and NEUTRAL_KEYS."""
    kept = {key: value for key, value in config.items() if key not in exclude}
    for group, keys in NEUTRAL_KEYS.items():
        if isinstance(kept.get(group), dict):
            kept[group] = {key: value for key, value in kept[group].items() if key not in keys}
    return hashlib.sha1(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _resolved_anywhere(cfg: DictConfig, **values) -> dict:
    """The resolved config as if the run folder were "" (it is interpolated into the loggers' and checkpoint's
    folders), with `values` set first: a job keeps its hash when its folder or sweep is moved."""
    neutral = cfg.copy()
    with open_dict(neutral):
        neutral.paths.output_dir = ""
        for key, value in values.items():
            neutral[key] = value
    return OmegaConf.to_container(neutral, resolve=True)


def run_hash(cfg: DictConfig) -> str:
    """What makes two runs the same run: compared by resume and skip_finished, wherever the run folder lies."""
    return config_hash(_resolved_anywhere(cfg))


def experiment_hash(cfg: DictConfig) -> str:
    """What must match across the jobs of one figure: the config apart from network, seed and run folder."""
    return config_hash(_resolved_anywhere(cfg, seed=0, run_name=""),
                       exclude=("model", "network", "paths", "hydra", "skip_finished", "resume"))


def model_name(cfg: DictConfig) -> str:
    """A short name for the model: ``dense-w1000``, ``rpp-w10-k100-nobias``, ``softmax``; a model of your own is named
    by its class (``model._target_: mymodels.TinyNet`` gives ``tinynet``)."""
    model = cfg.model
    if "kind" not in model or "depth" not in model:
        return str(model.get("_target_", "model")).rsplit(".", 1)[-1].lower()
    if model.depth == 0:
        name = "softmax"
    elif model.kind != "dense":  # rpp, hashed, lowrank: virtual width k * width
        name = f"{model.kind}-w{model.width}-k{model.k}" + ("-signed" if model.get("signs") else "")
    else:
        name = f"dense-w{model.width}"
    if model.depth and model.get("bias") in (False, "none"):
        name += "-nobias"
    if model.depth not in (0, 2):
        name += f"-d{model.depth}"
    return name


# ${model_name:${model}} in a config: the model's short name (hparams_search= names its study by it)
OmegaConf.register_new_resolver("model_name", lambda model: model_name(OmegaConf.create({"model": model})),
                                replace=True)

# Keys a model's name already says (model_name), or that the run name adds itself (the seed).
NAMED_KEYS = ("seed", "network", "model", "model.kind", "model.width", "model.k", "model.bias", "model.depth",
              "model.signs")


def swept_name(cfg: DictConfig) -> str:
    """What tells this job from the other jobs of its sweep beyond its model's name and seed: ``-lr0.01-k10`` for a
    sweep over optimizer.lr and (a model of your own's) model.k; ``-kmnist`` for one over data=...; '' outside a sweep
    or where the sweep varies only what the name already says. A grid that Hydra's basic sweeper runs."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return ""
    try:
        grid, _ = sweep_grid(Path(HydraConfig.get().sweep.dir))
    except Exception:  # a grid Hydra's parser cannot read back (an interpolation in a value): the name goes without
        return ""
    named = NAMED_KEYS if "kind" in cfg.model and "depth" in cfg.model else ("seed", "network")
    this_job = {override.split("=", 1)[0].lstrip("+~"): override.split("=", 1)[1]
                for override in HydraConfig.get().overrides.task if "=" in override}
    swept = [key.lstrip("+~") for key, values in (grid or {}).items() if len(values) > 1]
    parts = [this_job[key] if "." not in key else key.rsplit(".", 1)[1] + this_job[key]
             for key in swept if key not in named and key in this_job]
    return "".join(f"-{part}" for part in parts)


def run_name(cfg: DictConfig) -> str:
    """The run's name: its model, what its sweep varies beyond that (swept_name) and its seed, ``dense-w1000-s0``,
    ``tinynet-k10-s0``."""
    return f"{model_name(cfg)}{swept_name(cfg)}-s{cfg.seed}"


def _build(cfg: DictConfig, key: str, **kwargs):
    """Instantiate `cfg[key]`; a bad value becomes a ConfigError that names the key."""
    try:
        return instantiate(cfg[key], **kwargs)
    except InstantiationException as err:
        cause = err.__cause__ if isinstance(err.__cause__, ValueError) else err
        raise ConfigError(f"{key}.{cause}") from err
    except ValueError as err:
        raise ConfigError(f"{key}.{err}") from err


def _download(datamodule: pl.LightningDataModule) -> None:
    """The data's download (prepare_data) before the run folder is touched, in the process that writes it: files that
    cannot be had (no network) end the run as bad input does, one line and no folder. Lightning's own call in `fit`
    then finds them (and, under DDP on several nodes, downloads them on the other nodes)."""
    if rank_zero_only.rank != 0:
        return
    try:
        datamodule.prepare_data()
    except DataNotFoundError as err:
        raise ConfigError(f"data.{err}") from err


def data_sizes(model_cfg: DictConfig, datamodule) -> dict:
    """What the data set tells the model, for each of `in_features` and `num_classes` that the model's class takes
    and its config does not set: the data module knows them before reading any file. A size the model takes, its
    config leaves unset and the data module does not have is refused (ConfigError): the model's default (784 inputs,
    10 classes for the built-in MLP) would fail at the first batch, or train on the wrong number of classes."""
    try:
        parameters = inspect.signature(get_class(model_cfg._target_)).parameters
    except Exception:  # not importable: instantiating it names the error
        return {}
    wanted = [name for name in ("in_features", "num_classes") if name in parameters and name not in model_cfg]
    if missing := [name for name in wanted if not hasattr(datamodule, name)]:
        data = f"{type(datamodule).__module__}.{type(datamodule).__qualname__}"
        raise ConfigError(f"model: {model_cfg._target_} takes {' and '.join(missing)}, which the data module {data} "
                          f"does not give; allowed: an attribute of the data module, set in its __init__ (as "
                          f"self.{missing[0]} = ...), or the value in the model's config: "
                          + " ".join(f"model.{name}=<n>" for name in missing))
    return {name: getattr(datamodule, name) for name in wanted}


def check_config(cfg: DictConfig) -> None:
    """Checks that need no object built; each failure names the key, the value and what is allowed."""
    try:
        check_int("trainer.max_epochs", cfg.trainer.get("max_epochs"), 1)
        check_int("seed", cfg.get("seed"), 0, 2**32 - 1)  # Lightning's seeding takes 32 bits
        lr = cfg.get("optimizer", {}).get("lr")
        if lr is not None and not (isinstance(lr, (int, float)) and not isinstance(lr, bool)
                                   and math.isfinite(lr) and lr > 0):
            raise ValueError(f"optimizer.lr={lr!r} is invalid; allowed: a finite number > 0")
        if (mode := cfg.get("compile")) is not None and mode not in COMPILE_MODES:
            raise ValueError(f"compile={mode!r} is invalid; allowed: null (eager), {', '.join(map(repr, COMPILE_MODES))}")
    except ValueError as err:
        raise ConfigError(str(err)) from err


def check_memory(cfg: DictConfig, sizes: dict) -> None:
    """Refuses a model whose training step would not fit in the memory this machine has left, for the model as it
    is built: its config and `sizes`, what the data set tells it (data_sizes)."""
    model = OmegaConf.to_container(cfg.model, resolve=True) | sizes
    if (refusal := memory_refusal(model, cfg.data.get("batch_size", 128))) is not None:
        raise ConfigError(refusal)


def configure_threads() -> int | None:
    """Jobs of a sweep that share a machine share its cores; returns the threads set, or None if left as they were.

    joblib launcher: cores / n_jobs threads each, or cores / jobs where the sweep has fewer jobs than n_jobs (in its
    worker processes, where Hydra's config is set; an OMP_NUM_THREADS in the environment does not override it). submitit launchers: `cpus_per_task` threads if set.
    """
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None  # a single run is alone on the machine, even with a launcher chosen
    from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher

    launcher = HydraConfig.get().launcher
    kind = get_class(launcher._target_)
    if launcher_is(kind, JoblibLauncher):
        grid, _ = sweep_grid(Path(HydraConfig.get().sweep.dir))
        threads = threads_per_job(launcher.get("n_jobs"), math.prod(map(len, grid.values())) if grid else None)
    elif launcher_is(kind, BaseSubmititLauncher) and launcher.get("cpus_per_task"):
        threads = launcher.cpus_per_task
    else:
        return None
    torch.set_num_threads(threads)
    return threads


def launcher_is(kind: type, base: type) -> bool:
    """Whether the launcher class `kind` is a `base`, by name: Hydra's plugin discovery executes the modules under
    hydra_plugins again (imp's load_module), so a launcher may subclass an earlier class object of the same name than
    the one imported here, and issubclass says no (a SLURM job then took itself for no submitit job)."""
    return any((c.__module__, c.__qualname__) == (base.__module__, base.__qualname__) for c in kind.__mro__)


def train(cfg: DictConfig) -> dict:
    """Train, validate and test one network; return its final metrics. Writes results.json into the run folder.

    A finished run of this config is left as it is (`skip_finished=false` trains it again, afresh). An unfinished
    one resumes from the newest checkpoint in its folder that loads and holds this very run (checked by its config
    hash and tensor shapes); its CSV and W&B history are rebuilt from that checkpoint. Otherwise, or with
    `resume=false`, the run starts afresh and the previous attempt's files are set aside, never deleted. Raises
    ConfigError before anything is written for bad input, Preempted when a signal stopped the run (a checkpoint kept,
    results.json "stopped"), and re-raises any failure of training after recording it in results.json ("failed").
    """
    silence_known_noise()  # library use too, not only src/train.py
    check_config(cfg)
    folder = RunFolder(cfg.paths.output_dir)
    config = OmegaConf.to_container(cfg, resolve=True)
    this_hash = run_hash(cfg)
    if cfg.get("resume", True) and cfg.get("skip_finished", True) and (results := folder.finished_results(this_hash)):
        print(f"{results['run_name']}: already finished in {shell_word(folder.path)}; left as it is "
              "(skip_finished=false trains it again, afresh)")
        return results["metrics"]
    # every stop signal ends at a safe point; no wait on a thread that could not start goes on without end
    with StopSignals() as signals, library_logging_errors_collapsed(), bounded_thread_starts():
        return _build_and_train(cfg, folder, config, this_hash, signals)


def _build_and_train(cfg: DictConfig, folder: RunFolder, config: dict, this_hash: str, signals: StopSignals) -> dict:
    # Seed before anything draws a random number: the model's initial weights come next.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    # Build everything that can reject a value before the run folder is touched.
    datamodule = _build(cfg, "data")
    _download(datamodule)
    sizes = data_sizes(cfg.model, datamodule)
    check_memory(cfg, sizes)  # before the model takes any memory
    module = Classifier(_build(cfg, "model", **sizes), optimizer=_build(cfg, "optimizer"),
                        num_classes=getattr(datamodule, "num_classes", cfg.model.get("num_classes", 10)))
    if cfg.get("compile"):  # in place: the checkpoint's state_dict keys stay those of the eager network
        module.net.compile(mode=cfg.compile, fullgraph=True)
    # Under DDP the permutation indices are not broadcast from rank 0: each rank builds the same ones from the seed,
    # and neither gloo nor NCCL can send their int16.
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
        module, [name for name, buffer in module.named_buffers() if not buffer.is_floating_point()])
    with open_dict(cfg):
        cfg.run_name = cfg.get("run_name") or run_name(cfg)
    config["run_name"] = cfg.run_name
    writer = rank_zero_only.rank == 0  # under DDP, the other processes write nothing to the folder
    if writer:
        try:
            folder.check_writable()
        except FolderNotWritableError as err:
            raise ConfigError(str(err)) from err
        folder.lock()
    try:
        return _train(cfg, folder, config, this_hash, writer, datamodule, module, signals)
    finally:
        folder.unlock()


def _resume_point(cfg: DictConfig, folder: RunFolder, identity: dict, module: Classifier, writer: bool,
                  uses_wandb: bool) -> ResumePoint | None:
    """The checkpoint to resume from, or None to start afresh; what it replaces is set aside only after it checked."""
    finished = folder.finished_results(identity["config_hash"])
    if not cfg.get("resume", True) or finished:
        point, refused = None, {}
        reason = "resume=false" if not cfg.get("resume", True) else "skip_finished=false: a finished run trained again"
    else:
        point, refused = find_resume_point([folder.checkpoint_path, folder.previous_checkpoint_path], identity, module)
        reason = "; ".join(refused.values()) or "no checkpoint yet"
    for why in refused.values():
        print(f"{identity['run_name']}: cannot resume: {why}")
    if not writer:
        return point
    if point is None:
        if (moved := folder.set_aside(f"started afresh: {reason}")) is not None:
            print(f"{identity['run_name']}: starting afresh; the previous attempt's files are in {file_named(moved)}")
        return None
    # Rebuilt from the checkpoint: the CSV and (offline) W&B history; an unfinished results.json goes too.
    names = [METRICS_CSV, RESULTS] + [str(path.relative_to(folder.path)) for path in refused]
    names += [WANDB] if uses_wandb else []
    if point.path != folder.checkpoint_path and folder.checkpoint_path in refused:
        names.remove(str(folder.checkpoint_path.relative_to(folder.path)))
        names.append(CHECKPOINT)
    why = f"resumed from {point.path.name}" + (f"; refused: {reason}" if refused else "")
    folder.set_aside(why, names)
    return point


def _train(cfg: DictConfig, folder: RunFolder, config: dict, this_hash: str, writer: bool,
           datamodule: pl.LightningDataModule, module: Classifier, signals: StopSignals) -> dict:
    state = folder.read_json(STATE) or {}
    identity = {"config_hash": this_hash, "run_name": cfg.run_name, "config": _resolved_anywhere(cfg),
                "wandb_id": state.get("wandb_id") if state.get("config_hash") == this_hash else None}
    uses_wandb = any(str(c.get("_target_", "")).endswith("WandbLogger") for c in (cfg.get("logger") or {}).values()
                     if c is not None)
    point = _resume_point(cfg, folder, identity, module, writer, uses_wandb)
    if point is not None:
        identity["wandb_id"] = point.identity.get("wandb_id") or identity["wandb_id"]
    identity["wandb_id"] = identity["wandb_id"] or uuid.uuid4().hex[:12]
    if writer:
        folder.write_json(STATE, {"config_hash": this_hash, "run_name": cfg.run_name, "wandb_id": identity["wandb_id"]})
    if (threads := configure_threads()) is not None:
        print(f"{cfg.run_name}: {threads} threads (jobs of this sweep share the machine)")
    # The previous job of a multirun leaves its trainer, data and model in reference cycles: free them now, so
    # this job's peak memory is its own.
    gc.collect()
    results = {"status": "failed", "network": cfg.get("network") or model_name(cfg) + swept_name(cfg),
               "seed": cfg.seed, "run_name": cfg.run_name, "group": cfg.get("group"), "config_hash": this_hash,
               "experiment_hash": experiment_hash(cfg), "csv": METRICS_CSV,
               "torch_threads": torch.get_num_threads(), "metrics": {}}
    if point is not None:
        print(resume_line(cfg.run_name, point.progress, cfg.trainer.max_epochs, point.path))
    config["config_hash"] = this_hash  # the W&B run carries the run's identity too
    failure: BaseException | None = None
    wandb_dir = None
    attempts = None
    offline_wandb: list[WandbLogger] = []  # W&B runs whose history is on disk only: replayed, repaired
    phase = "starting"  # named in a failure's record: starting, training, testing, finishing
    reserve = MemoryReserve()  # given back when the run ends: recording an out-of-memory failure needs memory
    try:
        loggers = build_loggers(cfg.get("logger"), config, wandb_id=identity["wandb_id"], resume=point is not None)
        history = next((lg for lg in loggers if isinstance(lg, RunHistory)), None)
        if history is None:  # every run keeps its history: checkpoints carry it, the CSV is written from it
            history = RunHistory(folder.path)
            loggers.append(history)
        history.identity = {key: identity[key] for key in ("config_hash", "run_name", "wandb_id")}
        offline_wandb = [lg for lg in loggers if isinstance(lg, WandbLogger) and _offline(lg)]
        if point is not None and writer:
            history.restore(point.history)
            history.save()
            replay(point.history, offline_wandb)
        # after logging is up: a slow W&B start is not training time
        attempts = Attempts(point.attempts if point else [], torch.get_num_threads(),
                            point.progress["global_step"] if point else None)
        if writer and (change := attempts.thread_change()):
            print(f"{cfg.run_name}: {change}")
        signals.check()
        callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
        callbacks.append(RandomStates())
        # last.ckpt saved after every other checkpoint callback's epoch end (a best checkpoint's): it holds their state
        callbacks.sort(key=lambda callback: isinstance(callback, LastCheckpoint))
        last = next((c for c in callbacks if isinstance(c, LastCheckpoint)), None)
        if last is not None:
            last.signals, last.identity, last.attempts = signals, identity, attempts
        # Without a bar callback (`~callbacks.progress_bar`), no bar: Lightning would otherwise add its own.
        bar = cfg.trainer.get("enable_progress_bar")
        bar = any(isinstance(c, ProgressBar) for c in callbacks) if bar is None else bar
        trainer = _build(cfg, "trainer", logger=loggers, callbacks=callbacks,
                         plugins=[AtomicCheckpointIO(), cluster_environment()], enable_progress_bar=bar)
        phase = "training"
        trainer.fit(module, datamodule=datamodule, ckpt_path=point.path if point else None, weights_only=True)
        signals.check()
        phase = "testing"
        # testing replaces callback_metrics: keep fit's (or, when training had ended, the checkpoint's)
        metrics = dict(trainer.callback_metrics) or dict(last.fit_metrics if last else {})
        trainer.test(module, datamodule=datamodule, verbose=False)
        metrics.update(trainer.callback_metrics)
        phase = "finishing"
        for callback in callbacks:
            if isinstance(callback, RunMetrics):
                metrics.update(callback.metrics)  # run-level numbers
        metrics = {key: value.item() if torch.is_tensor(value) else value for key, value in metrics.items()}
        metrics["train/loss"] = metrics.get("train/loss_epoch")
        results["attempts"] = attempts.up_to_now()  # the run's wall time: every attempt's
        metrics["time/wall_s"] = sum(attempt["wall_s"] for attempt in results["attempts"])
        wandb_dir = next((lg.experiment.dir for lg in loggers if isinstance(lg, WandbLogger)), None)
        history.save()
        results.update(status="finished", metrics=metrics, files=folder.digests() if writer else {})
    except SIGTERMException as err:
        # Lightning's own stop on SIGTERM where its handler was in (between stages): a stop like ours
        failure = Preempted(signal.SIGTERM)
        raise failure from err
    except BaseException as err:
        failure = err
        raise
    finally:
        signals.settle()  # the run reached its end: no stop may cut its records short now
        reserve.release()
        stopped = isinstance(failure, (Preempted, KeyboardInterrupt))
        cut_short = finish_wandb(exit_code=None if failure is None else 1, preempted=stopped,
                                 stopping=lambda: signals.received is not None)  # a stop now: less time for W&B
        cut_short = cut_short or next((lg.failed for lg in offline_wandb if isinstance(lg, ContainedWandbLogger)
                                       and lg.failed), None)
        if failure is None and offline_wandb and cut_short:
            # its offline history lacks what was logged after: the same command repairs it (RunFolder.finished_results)
            results["wandb_cut_short"] = cut_short
        if failure is not None and writer:
            if stopped:
                signum = getattr(failure, "signum", signal.SIGINT)
                results.update(status="stopped", signal=signal.Signals(signum).name,
                               error=f"stopped by {signal.Signals(signum).name}; resumes from the last checkpoint")
            else:
                results["error"] = failure_text(failure, phase)
            results["attempts"] = attempts.up_to_now() if attempts is not None else []
            _write_quietly(folder, results)  # a failed or stopped job: never counted as finished
    if writer:
        folder.write_json(RESULTS, results)  # last: its presence with status finished marks the job done
        print_summary(results, folder.path, wandb_dir)
    if signals.received is not None:  # finished anyway; still stop the sweep, as asked
        raise Preempted(signals.received)
    return metrics


def _offline(logger: WandbLogger) -> bool:
    """Whether a W&B run writes its history to local files only (replayed on resume; online, the server has it)."""
    return getattr(logger.experiment.settings, "mode", "offline") in ("offline", "dryrun")


def _write_quietly(folder: RunFolder, results: dict) -> None:
    """Record a failed or stopped run; a folder that cannot be written (a full disk) must not hide why it ended."""
    try:
        folder.write_json(RESULTS, results)
    except OSError as err:
        print(f"could not record the run's end in {folder.results_path} ({err.strerror or err})", file=sys.stderr)


def resume_line(run_name: str, progress: dict, max_epochs: int, checkpoint: Path) -> str:
    """The line a resumed run prints, its epochs counted from 1 as the progress bar counts them ("Epoch 2/4" during
    the second): "resuming in epoch 2 of 4 (mid-epoch, step 10)" inside it, "resuming after epoch 1 of 4 (step 7)" at
    its start."""
    done, step = progress["epochs_done"], progress["global_step"]
    if progress["mid_epoch"]:
        where = f"in epoch {done + 1} of {max_epochs} (mid-epoch, step {step})"
    elif done == 0:
        where = f"before epoch 1 of {max_epochs} (step {step})"
    else:
        where = f"after epoch {done} of {max_epochs} (step {step})"
    return f"{run_name}: resuming {where} with {file_named(checkpoint)}"


SUMMARY_WIDTH = 120  # a summary line's most characters where its paths allow: no line a terminal or log wraps


def print_summary(results: dict, output_dir: Path, wandb_dir: str | None) -> None:
    """The few lines a researcher reads when a run ends: its metrics, its folder and files, and the commands that show
    its W&B run, each line within SUMMARY_WIDTH for a run folder of ordinary length. Each line's text after its label
    runs in a shell as printed, pasted in order: ``r=<run folder>`` first."""
    m = results["metrics"]
    shown = ("train/loss", "val/loss", "val/acc", "test/loss", "test/acc", "model/params_trainable")
    values = [f"{key} {m[key]:,}" if isinstance(m[key], int) else f"{key} {m[key]:.4g}"
              for key in shown if m.get(key) is not None]
    lines = [f"\n{results['run_name']} finished in {m['time/wall_s']:.1f} s"]
    for value in values:  # as many to a line as fit
        if len(lines) > 1 and len(lines[-1]) + 2 + len(value) <= SUMMARY_WIDTH:
            lines[-1] += "  " + value
        else:
            lines.append("  " + value)
    # the run folder as a shell variable, r: the paths in it are named relative to it, short whatever its length
    csv = output_dir / results["csv"]
    lines += [f"  run folder: r={shell_word(output_dir)}",
              f'  metrics CSV: "$r"/{shell_word(results["csv"])}' + ("" if csv.exists() else " (missing)")]
    lines += wandb_lines(Path(wandb_dir).parent, output_dir) if wandb_dir else []
    print("\n".join(lines))


def wandb_lines(run_dir: Path, output_dir: Path) -> list[str]:
    """The summary's W&B lines: the run's folder, named once as a shell variable (relative to the run folder's, r),
    and the commands that show it and (offline) upload it; pasted in order, each runs as printed.

    W&B makes its run folder when it starts, online or offline; a disabled W&B names one that it never makes.
    """
    if not run_dir.is_dir():
        return ["  W&B run: none on disk (W&B was disabled)"]
    try:
        named = '"$r"/' + shell_word(run_dir.relative_to(output_dir))
    except ValueError:  # W&B's folder outside the run folder (WANDB_DIR)
        named = shell_word(run_dir)
    wandb = shell_word(program("wandb"))
    lines = [f"  W&B run: w={named}", f'  look: {wandb} leet "$w"']
    if run_dir.name.startswith("offline-run-"):  # an online run is uploaded as it goes
        lines.append(f'  upload: {wandb} sync "$w"')
    return lines
