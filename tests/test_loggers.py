"""A run's loggers (rppnets.training.loggers), with W&B's run stubbed where it starts: which loggers are built, the mode
W&B runs in and its fallback to offline, the run's id and resume, epoch charts, a W&B failure that never stops the run,
and closing W&B between the jobs of a multirun."""

import logging
import os
import sys
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf
from pytorch_lightning.loggers import WandbLogger

from rppnets.training import loggers
from rppnets.training.history import RunHistory
from rppnets.training.loggers import (EPOCH_METRICS, ContainedWandbLogger, build_loggers, finish_wandb,
                                      library_logging_errors_collapsed, start_wandb)


class FakeRun:
    def __init__(self):
        self.defined = []

    def define_metric(self, name, **kwargs):
        self.defined.append((name, kwargs))


class FakeLogger:
    """A W&B-like logger (`_target_` ending in WandbLogger) that records how it was made; `fail_modes` fail to start."""

    fail_modes: tuple = ()
    made: list = []

    def __init__(self, mode=None, **kwargs):
        self.mode, self.kwargs = mode, kwargs
        self._wandb_init = {"anonymous": None, "mode": mode}
        FakeLogger.made.append(self)

    @property
    def experiment(self):
        if self.mode in self.fail_modes:
            raise ConnectionError("no network")
        self.run = FakeRun()
        return self.run


class FakeWandbLogger(FakeLogger):
    pass


TARGET = f"{__name__}.FakeWandbLogger"


@pytest.fixture()
def fresh(monkeypatch):
    FakeLogger.made, FakeLogger.fail_modes = [], ()
    monkeypatch.setattr(loggers, "_online_failed", False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    torn = []
    import wandb
    monkeypatch.setattr(wandb, "teardown", lambda: torn.append(True))
    return torn


def test_the_mode_is_the_configs_then_the_environments_then_offline(fresh, monkeypatch):
    logger = start_wandb(OmegaConf.create({"_target_": TARGET, "mode": "disabled"}), {"a": 1}, "id1")
    assert logger.mode == "disabled" and "anonymous" not in logger._wandb_init
    monkeypatch.setenv("WANDB_MODE", "online")
    assert start_wandb(OmegaConf.create({"_target_": TARGET}), {}).mode == "online"
    monkeypatch.delenv("WANDB_MODE")
    assert start_wandb(OmegaConf.create({"_target_": TARGET, "mode": None}), {}).mode == "offline"


def test_the_run_gets_the_config_its_id_and_resume_and_charts_epoch_metrics_by_epoch(fresh):
    logger = start_wandb(OmegaConf.create({"_target_": TARGET, "project": "p"}), {"seed": 3}, "abc", resume=True)
    kwargs = logger.kwargs
    assert (kwargs["project"], kwargs["config"], kwargs["id"], kwargs["resume"]) == ("p", {"seed": 3}, "abc", "allow")
    settings = kwargs["settings"]
    assert (settings.init_timeout, settings.quiet, settings.silent) == (15, True, True)
    assert logger.run.defined == [("epoch", {})] + [(pattern, {"step_metric": "epoch"}) for pattern in EPOCH_METRICS]
    again = start_wandb(OmegaConf.create({"_target_": TARGET, "mode": "online"}), {}, None)
    assert again.kwargs["resume"] is None and again.kwargs["id"] is None and again.kwargs["settings"].silent is False


def test_an_online_start_that_fails_goes_offline_for_the_rest_of_the_process(fresh):
    FakeLogger.fail_modes = ("online",)
    with pytest.warns(UserWarning) as warned:
        logger = start_wandb(OmegaConf.create({"_target_": TARGET, "mode": "online"}), {"a": 1}, "id1", resume=True)
    assert str(warned[0].message) == ("W&B could not start in mode 'online' (no network); logging offline instead "
                                      "(for the rest of this process too).")
    assert logger.mode == "offline" and logger.kwargs["id"] == "id1" and logger.kwargs["resume"] == "allow"
    assert "anonymous" not in logger._wandb_init and logger.run.defined[0] == ("epoch", {})
    assert fresh == [True] and loggers._online_failed is True
    later = start_wandb(OmegaConf.create({"_target_": TARGET, "mode": "online"}), {})
    assert later.mode == "offline" and [made.mode for made in FakeLogger.made] == ["online", "offline", "offline"]


def test_an_offline_start_that_fails_fails_the_run(fresh):
    FakeLogger.fail_modes = ("offline",)
    with pytest.raises(ConnectionError):
        start_wandb(OmegaConf.create({"_target_": TARGET}), {})
    assert fresh == [] and loggers._online_failed is False


def test_lightnings_own_wandb_logger_is_contained_all_the_same(fresh, monkeypatch):
    monkeypatch.setattr(ContainedWandbLogger, "experiment", property(lambda self: FakeRun()))
    logger = start_wandb(OmegaConf.create({"_target_": "pytorch_lightning.loggers.WandbLogger", "project": "p"}), {})
    assert type(logger) is ContainedWandbLogger and logger._wandb_init["mode"] == "offline"
    assert "anonymous" not in logger._wandb_init


def test_build_loggers_builds_each_one_and_skips_those_turned_off(fresh, tmp_path):
    cfg = OmegaConf.create({"csv": {"_target_": "rppnets.training.history.RunHistory", "save_dir": str(tmp_path)},
                            "off": None, "wandb": {"_target_": TARGET}})
    built = build_loggers(cfg, {"a": 1}, wandb_id="w", resume=True)
    assert [type(logger) for logger in built] == [RunHistory, FakeWandbLogger]
    assert (built[1].kwargs["id"], built[1].kwargs["resume"], built[1].kwargs["config"]) == ("w", "allow", {"a": 1})
    assert build_loggers(None, {}) == [] and build_loggers(OmegaConf.create({}), {}) == []


def test_a_wandb_failure_mid_run_is_said_once_and_the_run_goes_on(monkeypatch, capsys):
    calls = []

    def broken(self, *args, **kwargs):
        calls.append(args)
        raise ConnectionResetError("[Errno 104] Connection reset by peer\nmore")

    for name in ("log_metrics", "log_hyperparams", "after_save_checkpoint", "finalize"):
        monkeypatch.setattr(WandbLogger, name, broken)
    logger = ContainedWandbLogger(mode="disabled")
    assert logger.log_metrics({"a": 1.0}, step=1) is None
    assert capsys.readouterr().err == ("W&B stopped logging (ConnectionResetError: [Errno 104] Connection reset by "
                                       "peer); the run goes on, its CSV and checkpoints keep the record\n")
    assert logger.failed == "ConnectionResetError: [Errno 104] Connection reset by peer"
    logger.log_hyperparams({"b": 2})
    logger.after_save_checkpoint(None)
    logger.finalize("success")
    assert len(calls) == 1 and capsys.readouterr().err == ""  # nothing more is tried after the first failure


def test_a_working_wandb_logger_passes_every_call_through(monkeypatch):
    calls = []
    for name in ("log_metrics", "log_hyperparams", "after_save_checkpoint", "finalize"):
        monkeypatch.setattr(WandbLogger, name, lambda self, *args, _name=name, **kwargs: calls.append((_name, args,
                                                                                                       kwargs)) or 7)
    logger = ContainedWandbLogger(mode="disabled")
    assert logger.log_metrics({"a": 1.0}, step=3) == 7
    logger.log_hyperparams({"b": 2})
    logger.after_save_checkpoint("cb")
    logger.finalize("success")
    assert calls == [("log_metrics", ({"a": 1.0},), {"step": 3}), ("log_hyperparams", ({"b": 2},), {}),
                     ("after_save_checkpoint", ("cb",), {}), ("finalize", ("success",), {})]
    assert logger.failed is None


@pytest.mark.parametrize("service, kept", [("v1-{pid}-unix-/tmp/s", True), ("v1-1-unix-/tmp/s", False),
                                           ("plain", True)])
def test_a_wandb_service_inherited_from_another_process_is_forgotten(monkeypatch, fresh, service, kept):
    service = service.format(pid=os.getpid())  # this process's own service is kept
    monkeypatch.setenv("WANDB_SERVICE", service)
    start_wandb(OmegaConf.create({"_target_": TARGET}), {})
    assert (os.environ.get("WANDB_SERVICE") == service) is kept


class FakeWandb:
    def __init__(self, fail=None):
        self.calls, self.fail = [], fail
        self.run = SimpleNamespace(mark_preempting=lambda: self.calls.append("preempting"), finish=self.finish,
                                   settings=SimpleNamespace(mode="offline"))

    def finish(self, exit_code=None):
        self.calls.append(("finish", exit_code))
        if self.fail:
            raise self.fail


def test_finish_closes_the_run_marking_a_stop_or_a_failure(monkeypatch, capsys):
    monkeypatch.setattr(loggers, "_silent_service", None)
    monkeypatch.setattr(loggers, "_service_process", lambda: None)  # not an earlier test's service, ended since
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    finish_wandb(exit_code=1)
    finish_wandb(preempted=True)
    assert fake.calls == [("finish", 1), "preempting", ("finish", None)]
    fake.run = None
    finish_wandb()
    assert len(fake.calls) == 3
    monkeypatch.delitem(sys.modules, "wandb")
    finish_wandb()  # W&B never imported: nothing to do
    failing = FakeWandb(fail=OSError("No space left on device\nmore"))
    monkeypatch.setitem(sys.modules, "wandb", failing)
    finish_wandb(exit_code=0)
    assert capsys.readouterr().err == ("W&B could not finish its run (OSError: No space left on device); the run's CSV "
                                       "and results.json are unaffected\n")
    monkeypatch.setitem(sys.modules, "wandb", FakeWandb(fail=RuntimeError()))
    finish_wandb()
    assert "(RuntimeError: )" in capsys.readouterr().err


class Failing(logging.Handler):
    def emit(self, record):
        try:
            raise OSError(f"disk full {record.getMessage()}")
        except OSError:
            self.handleError(record)


def test_a_library_logger_that_cannot_write_is_counted_in_one_line(capsys):
    handler = Failing()
    ours, other = logging.getLogger("wandb.sdk.test"), logging.getLogger("someone.else")
    for logger in (ours, other):
        logger.addHandler(handler)
        logger.propagate = False
    original = logging.Handler.handleError
    try:
        with library_logging_errors_collapsed():
            ours.error("a")
            ours.error("b")
            assert logging.Handler.handleError is not original
        assert capsys.readouterr().err == "wandb could not write its own log 2 times (disk full b)\n"
        assert logging.Handler.handleError is original
        with library_logging_errors_collapsed(prefixes=("someone",)):
            ours.error("c")  # not collapsed: Python's own report
        err = capsys.readouterr().err
        assert "--- Logging error ---" in err and "disk full c" in err and "could not write" not in err
        with library_logging_errors_collapsed():
            pass
        assert capsys.readouterr().err == ""
    finally:
        for logger in (ours, other):
            logger.removeHandler(handler)
