"""Loggers for a run: the CSV history (rppnets.training.history) always, and W&B (offline unless asked) that never stops a run."""

import logging
import os
import sys
import warnings
from contextlib import contextmanager

from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import WandbLogger

from rppnets.training.bounded import WaitTimeout, call_within
from rppnets.training.checkpointing import Preempted

# Epoch-level metrics are charted against the epoch, not the global step.
EPOCH_METRICS = ("train/loss_epoch", "train/acc", "val/*", "time/*")


# How long an online W&B start may wait for its server before the run logs offline instead.
ONLINE_TIMEOUT_S = 15
_online_failed = False  # once the server could not be reached, later jobs of this process go offline at once
# W&B's client waits without end on its service process (wandb-core): each call into it gets a bound. Starting a
# run may start the service too (seconds on a loaded machine); an online finish uploads what is left.
WANDB_START_S = 30
WANDB_CALL_S = 10
WANDB_FINISH_S = 20
WANDB_ONLINE_FINISH_S = 300
_silent_service: str | None = None  # set when W&B's service did not answer: its run is then abandoned, not finished


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


class ContainedWandbLogger(WandbLogger):
    """Lightning's W&B logger, whose failure mid-run never fails the run: the first error is said in one line and
    W&B logs nothing more in this attempt. A SLURM signal reaches every process of a job step, W&B's service process
    (wandb-core) too: SIGTERM kills it, and every later `log` raised ConnectionResetError, before the stop's
    checkpoint was saved. The CSV and the checkpoints stay the record; a resumed attempt replays the W&B history."""

    failed: str | None = None

    def _contained(self, method, *args, **kwargs):
        global _silent_service
        if self.failed is not None:
            return None
        try:
            return call_within(WANDB_CALL_S, "W&B's service", method, *args, **kwargs)
        except Preempted:  # a stop signal while waiting: the run's, not W&B's
            raise
        except Exception as err:
            self.failed = f"{type(err).__name__}: {err}".splitlines()[0]
            if isinstance(err, WaitTimeout):
                _silent_service = self.failed
            print(f"W&B stopped logging ({self.failed}); the run goes on, its CSV and checkpoints keep the record",
                  file=sys.stderr, flush=True)

    def log_metrics(self, *args, **kwargs):
        return self._contained(super().log_metrics, *args, **kwargs)

    def log_hyperparams(self, *args, **kwargs):
        return self._contained(super().log_hyperparams, *args, **kwargs)

    def after_save_checkpoint(self, *args, **kwargs):
        return self._contained(super().after_save_checkpoint, *args, **kwargs)

    def finalize(self, *args, **kwargs):
        return self._contained(super().finalize, *args, **kwargs)


def start_wandb(cfg: DictConfig, config: dict, wandb_id: str | None = None, resume: bool = False):
    """Start the W&B run for this job with the resolved `config`; offline if the online start fails."""
    global _online_failed
    _forget_inherited_wandb_service()
    import wandb

    if get_class(cfg._target_) is WandbLogger:  # a config naming Lightning's own logger is contained all the same
        cfg = OmegaConf.merge(cfg, {"_target_": f"{__name__}.{ContainedWandbLogger.__name__}"})

    mode = cfg.get("mode") or os.environ.get("WANDB_MODE") or "offline"
    if mode == "online" and _online_failed:
        mode = "offline"
    # Offline, W&B has nothing to say that the run's own summary (its W&B folder, how to view and sync it) does not;
    # online it prints the run's URL.
    settings = wandb.Settings(init_timeout=ONLINE_TIMEOUT_S, quiet=True, silent=mode == "offline")
    kwargs = {"config": config, "id": wandb_id, "resume": "allow" if resume else None, "settings": settings}
    try:
        logger = _started(cfg, mode, kwargs)
    except Exception as err:  # no account, no network: keep training, upload later with `wandb sync`
        if mode == "offline" or isinstance(err, Preempted):
            if isinstance(err, WaitTimeout):  # its service was started and never answered: not left behind
                _abandon_service()
            raise
        _online_failed = True
        warnings.warn(f"W&B could not start in mode {mode!r} ({err}); logging offline instead "
                      "(for the rest of this process too).")
        _abandon_service()  # the failed start still holds the run id in W&B's service process
        logger = _started(cfg, "offline", kwargs)
    return logger


def _started(cfg: DictConfig, mode: str, kwargs: dict):
    """The W&B logger of `cfg` in `mode` with its run started, within WANDB_START_S (ONLINE_TIMEOUT_S more online)."""
    logger = _without_anonymous(instantiate(cfg, mode=mode, _partial_=True)(**kwargs))

    def start():
        run = logger.experiment
        run.define_metric("epoch")
        for pattern in EPOCH_METRICS:
            run.define_metric(pattern, step_metric="epoch")

    bound = WANDB_START_S + (ONLINE_TIMEOUT_S if mode == "online" else 0)
    call_within(bound, "W&B's service (starting the W&B run)", start)
    return logger


def _forget_inherited_wandb_service() -> None:
    """Each run talks to a W&B service of its own. W&B hands its service's address to child processes through
    WANDB_SERVICE ("<version>-<pid of its owner>-unix-<socket>"); a run started from a process that had W&B running (a
    notebook, a test, the shell sbatch exported) would write into that process's service, or, with that one gone or
    on another node, fail to start W&B at all."""
    owner = os.environ.get("WANDB_SERVICE", "").split("-")
    if len(owner) > 1 and owner[1] != str(os.getpid()):
        del os.environ["WANDB_SERVICE"]


def _without_anonymous(logger):
    """Lightning passes W&B `anonymous=None`, which W&B 0.31 ignores with a warning on every run; leave it out."""
    logger._wandb_init.pop("anonymous", None)
    return logger


def finish_wandb(exit_code: int | None = None, preempted: bool = False) -> None:
    """Close this process's W&B run, if any, so the next job of a multirun starts its own.

    A non-zero `exit_code` marks the run failed; `preempted` marks it as stopped to be resumed. W&B failing to
    finish (a full disk) is said in one line and never replaces the run's own outcome: the CSV is the record.
    """
    global _silent_service
    wandb = sys.modules.get("wandb")  # never imported: nothing to close (and W&B need not be installed)
    if wandb is None or wandb.run is None:
        return
    if _silent_service is not None:  # it did not answer during the run: finishing would wait for it too
        _abandon_service()
        print(f"W&B's service did not answer ({_silent_service}); its run is left unfinished, the run's CSV and "
              "results.json are unaffected", file=sys.stderr)
        return
    run = wandb.run

    def finish():
        if preempted:
            run.mark_preempting()
        run.finish(exit_code=exit_code)

    online = getattr(run.settings, "mode", "offline") not in ("offline", "dryrun")
    try:
        call_within(WANDB_ONLINE_FINISH_S if online else WANDB_FINISH_S, "W&B's service (finishing the W&B run)", finish)
    except Preempted:
        raise
    except Exception as err:
        if isinstance(err, WaitTimeout):
            _abandon_service()
        print(f"W&B could not finish its run ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
              "the run's CSV and results.json are unaffected", file=sys.stderr)


def _abandon_service() -> None:
    """End this process's own W&B service, which does not answer (or holds a failed start), and W&B's side of it, so
    that neither this run's end, the next job's start nor the process's exit waits for it."""
    global _silent_service
    _silent_service = None
    import wandb
    from wandb.sdk import wandb_setup
    from wandb.sdk.lib import module

    setup = wandb_setup._singleton
    process = getattr(getattr(getattr(setup, "_connection", None), "_proc", None), "_process", None)
    if process is not None and getattr(setup, "_pid", None) == os.getpid():  # our own child, never another's
        process.kill()
    try:
        call_within(WANDB_CALL_S, "W&B's teardown", wandb.teardown)
    except (Exception, SystemExit):  # W&B exits with the killed service's status; the service is gone
        pass
    module.unset_globals()  # its run never finished: the next job starts its own


@contextmanager
def library_logging_errors_collapsed(prefixes=("wandb",)):
    """While open, a library logger (named by `prefixes`) that cannot write its own log file (a full disk) does not
    print Python's traceback block each time: the failures are counted and said in one line at the end, so the
    error that ended the run stays visible and last."""
    original = logging.Handler.handleError
    failures: list[str] = []

    def handle_error(handler, record):
        if record.name.startswith(prefixes):
            failures.append(str(sys.exc_info()[1]))
        else:
            original(handler, record)

    logging.Handler.handleError = handle_error
    try:
        yield
    finally:
        logging.Handler.handleError = original
        if failures:
            print(f"{', '.join(prefixes)} could not write its own log {len(failures)} times ({failures[-1]})",
                  file=sys.stderr)
