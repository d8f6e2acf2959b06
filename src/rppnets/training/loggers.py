"""Loggers for a run: the CSV history (rppnets.training.history) always, and W&B (offline unless asked) that never stops a run.

W&B's trouble is said in one line. Its service process (wandb-core) that is gone or silent, whether killed alone or
signalled with the whole job step as SLURM does, left a run's last output as W&B's own: asyncio's ``socket.send()
raised exception.`` lines, and the traceback of W&B's exit hook (``Exception ignored in atexit callback``) after the
run's stop line. Here the run lets go of a service that is gone (it is not finished, nor torn down at exit), and what
W&B's machinery still prints as the process ends (records that reach logging's last resort, errors of its exit hook)
is collapsed into that one line.
"""

import atexit
import logging
import threading
import os
import sys
import warnings
from contextlib import contextmanager

from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import WandbLogger

from rppnets.training.bounded import STOPPING_S, WaitTimeout, call_within
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
# Once a stop signal has come, finishing gets this long at most (bounded.STOPPING_S): a stopped run ends soon; an online
# run's rest is uploaded later with `wandb sync`.
WANDB_STOPPING_FINISH_S = STOPPING_S
_silent_service: str | None = None  # set when W&B's service did not answer or was gone: its run is abandoned
_said = threading.Event()  # set once this job's W&B line is printed: W&B's later noise adds nothing to it
# What W&B's machinery still prints once its service is gone: logging records of these loggers that reach logging's
# last resort (no handler of their own; asyncio's are those of W&B's event loop), and errors of W&B's exit hook.
NOISY_LOGGERS = ("wandb", "asyncio")


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
            self.failed = _one_line(err)
            if isinstance(err, WaitTimeout) or _service_gone(err):
                _silent_service = self.failed
            _print_said(f"W&B stopped logging ({self.failed}); the run goes on, its CSV and checkpoints keep the "
                        "record")

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
    global _online_failed, _silent_service
    _forget_inherited_wandb_service()
    _said.clear()  # this job's W&B line is its own, and so is its service
    _silent_service = None
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
    _quiet_exit_of_wandb()
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


def finish_wandb(exit_code: int | None = None, preempted: bool = False, stopping=None) -> str | None:
    """Close this process's W&B run, if any, so the next job of a multirun starts its own; why its record may be cut
    short (its service gone or silent, its finish failed), or None when it closed whole or there was none.

    A non-zero `exit_code` marks the run failed; `preempted` marks it as stopped to be resumed. `stopping` (a function
    saying whether a stop signal has come) cuts the wait to WANDB_STOPPING_FINISH_S once it says so, as `preempted`
    does from the start. W&B failing to finish (a full disk, its service gone or silent) is said in one line and never
    replaces the run's own outcome: the CSV is the record.
    """
    global _silent_service
    wandb = sys.modules.get("wandb")  # never imported: nothing to close (and W&B need not be installed)
    if wandb is None or wandb.run is None:
        return None
    if _silent_service is not None:  # it did not answer, or was gone, during the run: finishing would wait for it too
        cause = _silent_service
        _abandon_service()
        _say(f"W&B's service did not answer ({cause}); its run is left unfinished, the run's CSV and "
             "results.json are unaffected")
        return f"its service did not answer ({cause})"
    run = wandb.run

    def finish():
        if preempted:
            run.mark_preempting()
        run.finish(exit_code=exit_code)

    online = getattr(run.settings, "mode", "offline") not in ("offline", "dryrun")
    bound = WANDB_ONLINE_FINISH_S if online else WANDB_FINISH_S
    if preempted:
        bound = min(bound, WANDB_STOPPING_FINISH_S)
    try:
        call_within(bound, "W&B's service (finishing the W&B run)", finish, stopping=stopping)
    except Preempted:
        raise
    except Exception as err:
        if isinstance(err, WaitTimeout) or _service_gone(err):
            _abandon_service()  # neither the next job's start nor the process's exit waits for it, or tries it again
        if _service_gone(err):
            _say(f"W&B's service was gone ({_one_line(err)}); its run is left unfinished, the run's CSV and "
                 "checkpoints keep the record")
        else:
            _print_said(f"W&B could not finish its run ({_one_line(err)}); the run's CSV and results.json are "
                        "unaffected")
        return _one_line(err)
    return None


def _one_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}".splitlines()[0]


def _print_said(line: str) -> None:
    """Print a line about W&B that is news whatever was said before (its first failure mid-run, a failure to finish
    that is not its service gone); W&B's noise after it adds nothing."""
    _said.set()
    print(line, file=sys.stderr, flush=True)


def _say(line: str) -> None:
    """Print this job's one line about W&B's service gone or silent, unless a line about W&B was printed already."""
    with _say_lock:
        if _said.is_set():
            return
        _said.set()
    print(line, file=sys.stderr, flush=True)


_say_lock = threading.Lock()


def _service_process():
    """This process's own W&B service process (wandb-core, a ``subprocess.Popen``), or None."""
    try:
        from wandb.sdk import wandb_setup
    except ImportError:  # a stand-in for W&B (tests)
        return None
    setup = wandb_setup._singleton
    process = getattr(getattr(getattr(setup, "_connection", None), "_proc", None), "_process", None)
    return process if process is not None and getattr(setup, "_pid", None) == os.getpid() else None


def _service_gone(err: BaseException | None = None) -> bool:
    """Whether W&B's service has ended: `err` is a lost connection to it, or its process has exited."""
    if isinstance(err, (ConnectionError, EOFError)) or type(err).__name__ == "MailboxClosedError":
        return True
    if "wandb" not in sys.modules:
        return False
    process = _service_process()
    return process is not None and process.poll() is not None


def _abandon_service() -> None:
    """End this process's own W&B service, which does not answer (or holds a failed start, or is gone), and W&B's side
    of it, so that neither this run's end, the next job's start nor the process's exit waits for it."""
    global _silent_service
    _silent_service = None
    import wandb
    from wandb.sdk.lib import module

    process = _service_process()
    if process is not None:  # our own child, never another's
        process.kill()
    try:  # W&B's teardown, its exit hook unregistered first: the process's exit does not try it again
        call_within(WANDB_CALL_S, "W&B's teardown", wandb.teardown)
    except (Exception, SystemExit):  # W&B exits with the killed service's status; the service is gone
        pass
    module.unset_globals()  # its run never finished: the next job starts its own


class _QuietLastResort(logging.Handler):
    """Logging's last resort (records of a logger with no handler: a bare line on stderr), through which W&B's
    records (NOISY_LOGGERS) become the job's one W&B line; any other logger's record prints as before."""

    def __init__(self, original: logging.Handler):
        super().__init__(original.level)
        self.original = original

    def handle(self, record: logging.LogRecord) -> bool:
        if record.name.split(".")[0] not in NOISY_LOGGERS:
            return self.original.handle(record)
        _say(f"W&B's service went away ({record.getMessage().splitlines()[0]}); its run may be left unfinished, the "
             "run's CSV and checkpoints keep the record")
        return True

    def emit(self, record: logging.LogRecord) -> None:  # handle() decides
        self.original.emit(record)


def _quiet_exit_of_wandb() -> None:
    """Where a process that runs W&B produces its last output: logging's last resort collapses W&B's records (from now
    on), and the exit hook `_at_exit` runs before W&B's own (registered after it, atexit runs the last first)."""
    if not isinstance(logging.lastResort, _QuietLastResort):
        logging.lastResort = _QuietLastResort(logging.lastResort or logging.StreamHandler())
    atexit.unregister(_at_exit)
    atexit.register(_at_exit)


def _at_exit() -> None:
    """At the process's exit, before W&B's own exit hook: a service that is gone is let go of (W&B's hook would send it
    a teardown and print the ConnectionResetError's traceback); whatever W&B's hook raises all the same (its service
    ended during it) is the one W&B line."""
    original = sys.unraisablehook

    def hook(unraisable):
        if _from_wandb(unraisable):
            error = unraisable.exc_value or unraisable.exc_type()
            _say(f"W&B's service was gone at exit ({_one_line(error)}); the run's CSV and checkpoints keep the "
                 "record")
        else:
            original(unraisable)

    sys.unraisablehook = hook
    if "wandb" in sys.modules and _service_gone():
        _abandon_service()
        _say("W&B's service was gone at exit; the run's CSV and checkpoints keep the record")


def _from_wandb(unraisable) -> bool:
    """Whether an error Python could only print ("Exception ignored in ...") was raised by W&B or its event loop."""
    if str(getattr(unraisable.object, "__module__", "") or "").split(".")[0] in ("wandb", "asyncio"):
        return True
    tb = unraisable.exc_traceback
    while tb is not None:
        if tb.tb_frame.f_globals.get("__name__", "").split(".")[0] == "wandb":
            return True
        tb = tb.tb_next
    return False


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
