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
    assert logger._wandb_init["project"] == "p"  # the rest of its config kept
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


# --- what the mutation run of 2026-12-08 found untested ----------------------------------------------------------


def test_build_loggers_starts_a_fresh_wandb_run_unless_told_to_resume(fresh):
    (logger,) = build_loggers(OmegaConf.create({"wandb": {"_target_": TARGET}}), {}, wandb_id="w")
    assert logger.kwargs["id"] == "w" and logger.kwargs["resume"] is None


@pytest.fixture()
def finishing(monkeypatch):
    """finish_wandb with W&B stubbed: `bounds` what each bounded wait was given, `abandoned` each abandoned service."""
    bounds, abandoned = [], []

    def call_within(seconds, what, fn, *args, stopping=None, **kwargs):
        bounds.append((seconds, what, stopping))
        return fn(*args, **kwargs)

    monkeypatch.setattr(loggers, "call_within", call_within)
    monkeypatch.setattr(loggers, "_abandon_service", lambda: abandoned.append(True))
    monkeypatch.setattr(loggers, "_silent_service", None)
    monkeypatch.setattr(loggers, "_said", loggers.threading.Event())
    monkeypatch.setattr(loggers, "_service_process", lambda: None)  # not an earlier test's service, ended since
    return bounds, abandoned


@pytest.mark.parametrize("settings, preempted, bound", [
    (SimpleNamespace(mode="online"), False, 300), (SimpleNamespace(mode="offline"), False, 20),
    (SimpleNamespace(mode="dryrun"), False, 20), (SimpleNamespace(), False, 20),  # no mode: offline
    (SimpleNamespace(mode="online"), True, 5), (SimpleNamespace(mode="offline"), True, 5)])
def test_finishing_waits_for_an_online_upload_and_a_stopped_run_not_long(finishing, monkeypatch, settings, preempted,
                                                                         bound):
    bounds, _ = finishing
    fake = FakeWandb()
    fake.run.settings = settings
    monkeypatch.setitem(sys.modules, "wandb", fake)

    def stopping():
        return False

    assert finish_wandb(preempted=preempted, stopping=stopping) is None
    assert bounds == [(bound, "W&B's service (finishing the W&B run)", stopping)]


def test_a_service_that_did_not_answer_during_the_run_is_not_waited_for_at_its_end(finishing, monkeypatch, capsys):
    _, abandoned = finishing
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setattr(loggers, "_silent_service", "WaitTimeout: no answer in 10 s")
    assert finish_wandb() == "its service did not answer (WaitTimeout: no answer in 10 s)"
    assert fake.calls == [] and abandoned == [True]  # never asked to finish: let go of at once
    assert capsys.readouterr().err == ("W&B's service did not answer (WaitTimeout: no answer in 10 s); its run is left "
                                       "unfinished, the run's CSV and results.json are unaffected\n")


def test_a_service_gone_or_silent_at_the_finish_is_let_go_and_said_once(finishing, monkeypatch, capsys):
    _, abandoned = finishing
    monkeypatch.setitem(sys.modules, "wandb", FakeWandb(fail=ConnectionResetError("Connection reset by peer\nmore")))
    assert finish_wandb() == "ConnectionResetError: Connection reset by peer"
    assert abandoned == [True]
    assert capsys.readouterr().err == ("W&B's service was gone (ConnectionResetError: Connection reset by peer); its run "
                                       "is left unfinished, the run's CSV and checkpoints keep the record\n")
    finish_wandb()  # gone again: this job's line about W&B was said already
    assert capsys.readouterr().err == "" and abandoned == [True, True]
    monkeypatch.setitem(sys.modules, "wandb", FakeWandb(fail=loggers.WaitTimeout("no answer in 20 s")))
    assert finish_wandb() == "WaitTimeout: no answer in 20 s"  # silent, not gone: let go of, said as a failure
    assert abandoned == [True, True, True]
    assert capsys.readouterr().err == ("W&B could not finish its run (WaitTimeout: no answer in 20 s); the run's CSV "
                                       "and results.json are unaffected\n")
    monkeypatch.setitem(sys.modules, "wandb", FakeWandb(fail=OSError("No space left on device")))
    finish_wandb()  # neither gone nor silent: the service is kept
    assert abandoned == [True, True, True]


class Process:
    """A stand-in for W&B's service process: `code` is None while it runs, its exit status once it has ended."""

    def __init__(self, code=None):
        self.code = code

    def poll(self):
        return self.code


def test_a_service_is_gone_when_its_connection_is_lost_or_its_process_has_ended(monkeypatch):
    class MailboxClosedError(Exception):  # W&B's own, named as W&B names it
        pass

    monkeypatch.setattr(loggers, "_service_process", lambda: None)
    for err in (ConnectionResetError("reset"), BrokenPipeError("pipe"), EOFError(), MailboxClosedError()):
        assert loggers._service_gone(err), err
    import wandb  # noqa: F401  (imported: its process is asked)
    assert not loggers._service_gone(OSError("disk full")) and not loggers._service_gone()
    monkeypatch.setattr(loggers, "_service_process", lambda: Process(code=None))
    assert not loggers._service_gone(OSError("disk full"))  # still running
    monkeypatch.setattr(loggers, "_service_process", lambda: Process(code=-9))
    assert loggers._service_gone(OSError("disk full")) and loggers._service_gone()  # killed
    monkeypatch.delitem(sys.modules, "wandb")
    assert not loggers._service_gone()  # W&B never imported: no service of it


def test_the_service_process_is_this_processs_own_only(monkeypatch):
    from wandb.sdk import wandb_setup

    process = Process()
    setup = SimpleNamespace(_connection=SimpleNamespace(_proc=SimpleNamespace(_process=process)), _pid=os.getpid())
    monkeypatch.setattr(wandb_setup, "_singleton", setup)
    assert loggers._service_process() is process
    setup._pid = os.getpid() + 1  # inherited from the parent (a fork): not ours to kill
    assert loggers._service_process() is None
    monkeypatch.setattr(wandb_setup, "_singleton", None)
    assert loggers._service_process() is None
    del setup._pid  # a setup that never recorded its owner
    monkeypatch.setattr(wandb_setup, "_singleton", setup)
    assert loggers._service_process() is None


def test_a_call_into_wandb_is_bounded_and_a_silent_or_gone_service_is_remembered(monkeypatch, capsys):
    asked = []

    def call_within(seconds, what, fn, *args, **kwargs):
        asked.append((seconds, what))
        raise failure

    monkeypatch.setattr(loggers, "call_within", call_within)
    monkeypatch.setattr(loggers, "_service_process", lambda: None)
    for failure, remembered in ((loggers.WaitTimeout("W&B's service did not answer within 10 s"), True),
                                (ConnectionResetError("Connection reset by peer"), True),
                                (OSError("No space left on device"), False)):
        monkeypatch.setattr(loggers, "_silent_service", None)
        logger = ContainedWandbLogger(mode="disabled")
        assert logger.log_metrics({"a": 1.0}) is None
        assert loggers._silent_service == (f"{type(failure).__name__}: {failure}" if remembered else None)
    assert asked == [(10, "W&B's service")] * 3
    capsys.readouterr()


def test_the_line_about_wandb_failing_is_flushed_at_once(monkeypatch):
    written = []

    class Stderr:
        def write(self, text):
            written.append(text)

        def flush(self):
            written.append("flush")

    monkeypatch.setattr(sys, "stderr", Stderr())
    monkeypatch.setattr(loggers, "_said", loggers.threading.Event())
    loggers._print_said("W&B stopped logging")
    assert "".join(w for w in written if w != "flush") == "W&B stopped logging\n" and written[-1] == "flush"


def test_keyword_arguments_pass_through_too(monkeypatch):
    calls = []
    for name in ("log_hyperparams", "after_save_checkpoint", "finalize"):
        monkeypatch.setattr(WandbLogger, name, lambda self, *args, _name=name, **kwargs: calls.append((_name, kwargs)))
    logger = ContainedWandbLogger(mode="disabled")
    logger.log_hyperparams(params={"b": 2})
    logger.after_save_checkpoint(checkpoint_callback="cb")
    logger.finalize(status="success")
    assert calls == [("log_hyperparams", {"params": {"b": 2}}), ("after_save_checkpoint", {"checkpoint_callback": "cb"}),
                     ("finalize", {"status": "success"})]


def test_a_new_run_starts_with_no_silent_service_of_an_earlier_job(fresh, monkeypatch):
    monkeypatch.setattr(loggers, "_silent_service", "WaitTimeout: an earlier job's")
    start_wandb(OmegaConf.create({"_target_": TARGET}), {})
    assert loggers._silent_service is None


def test_abandoning_the_service_kills_our_process_and_tears_wandb_down_within_a_bound(monkeypatch):
    import wandb
    from wandb.sdk.lib import module

    killed, asked, unset = [], [], []
    process = SimpleNamespace(kill=lambda: killed.append(True))
    monkeypatch.setattr(loggers, "_service_process", lambda: process)
    monkeypatch.setattr(loggers, "call_within", lambda seconds, what, fn: asked.append((seconds, what, fn)))
    monkeypatch.setattr(module, "unset_globals", lambda: unset.append(True))
    monkeypatch.setattr(loggers, "_silent_service", "WaitTimeout: no answer")
    loggers._abandon_service()
    assert killed == [True] and asked == [(10, "W&B's teardown", wandb.teardown)] and unset == [True]
    assert loggers._silent_service is None  # a later finish does not take it for silent


def test_the_quiet_exit_wraps_logging_last_resort_once_and_runs_before_wandbs_exit_hook(monkeypatch):
    import atexit
    import logging

    original = logging.StreamHandler()
    monkeypatch.setattr(logging, "lastResort", original)
    hooks = []
    monkeypatch.setattr(atexit, "unregister", lambda fn: hooks.append(("unregister", fn)))
    monkeypatch.setattr(atexit, "register", lambda fn: hooks.append(("register", fn)))
    loggers._quiet_exit_of_wandb()
    loggers._quiet_exit_of_wandb()  # a second job of the process: not wrapped twice
    assert isinstance(logging.lastResort, loggers._QuietLastResort) and logging.lastResort.original is original
    assert hooks == [("unregister", loggers._at_exit), ("register", loggers._at_exit)] * 2
    monkeypatch.setattr(logging, "lastResort", None)  # none at all: a plain stderr handler stands in
    loggers._quiet_exit_of_wandb()
    assert type(logging.lastResort.original) is logging.StreamHandler


def raised_in(module_name):
    """An error raised in a function of the module named `module_name`, with its traceback."""
    namespace = {"__name__": module_name}
    exec("def fail():\n    raise ConnectionResetError('Connection lost')", namespace)
    try:
        namespace["fail"]()
    except ConnectionResetError as err:
        return namespace["fail"], err


@pytest.mark.parametrize("module_name, ours", [("wandb.sdk.lib.service.service_connection", True), ("wandb", True),
                                               ("asyncio.selector_events", True), ("wandbx.other", False),
                                               ("torch.utils", False)])
def test_an_unraisable_error_is_wandbs_by_its_object_or_any_frame_of_its_traceback(module_name, ours):
    function, err = raised_in(module_name)
    by_object = SimpleNamespace(object=function, exc_traceback=None)
    assert loggers._from_wandb(by_object) is ours
    if not module_name.startswith("asyncio"):  # raised in W&B's code, reported for another object
        by_frame = SimpleNamespace(object=None, exc_traceback=err.__traceback__)
        assert loggers._from_wandb(by_frame) is ours
    assert loggers._from_wandb(SimpleNamespace(object=SimpleNamespace(__module__=None), exc_traceback=None)) is False


def test_at_exit_a_gone_service_is_let_go_and_said_once_and_other_errors_print_as_before(monkeypatch, capsys):
    seen, abandoned = [], []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    monkeypatch.setattr(loggers, "_said", loggers.threading.Event())
    monkeypatch.setattr(loggers, "_service_process", lambda: Process(code=-15))  # ended with the job step
    monkeypatch.setattr(loggers, "_abandon_service", lambda: abandoned.append(True))
    import wandb  # noqa: F401
    loggers._at_exit()
    assert abandoned == [True]
    assert capsys.readouterr().err == ("W&B's service was gone at exit; the run's CSV and checkpoints keep the "
                                       "record\n")
    function, err = raised_in("wandb.sdk.lib.service.service_connection")
    ours = SimpleNamespace(exc_type=type(err), exc_value=err, exc_traceback=err.__traceback__, object=function)
    sys.unraisablehook(ours)  # said already: nothing more
    _, other_err = raised_in("elsewhere")
    other = SimpleNamespace(exc_type=type(other_err), exc_value=other_err, exc_traceback=None, object=None)
    sys.unraisablehook(other)
    assert seen == [other] and capsys.readouterr().err == ""


def test_at_exit_a_running_service_is_left_alone(monkeypatch, capsys):
    import wandb  # noqa: F401  (imported, its service running)

    abandoned = []
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)
    monkeypatch.setattr(loggers, "_said", loggers.threading.Event())
    monkeypatch.setattr(loggers, "_service_process", lambda: Process(code=None))
    monkeypatch.setattr(loggers, "_abandon_service", lambda: abandoned.append(True))
    loggers._at_exit()
    assert abandoned == [] and capsys.readouterr().err == ""
    function, err = raised_in("wandb.sdk.lib.service.service_connection")  # its exit hook fails all the same
    sys.unraisablehook(SimpleNamespace(exc_type=type(err), exc_value=None, exc_traceback=None, object=function))
    assert capsys.readouterr().err == ("W&B's service was gone at exit (ConnectionResetError: ); the run's CSV and "
                                       "checkpoints keep the record\n")


def test_the_quiet_last_resort_says_wandbs_records_once_and_passes_others_on(monkeypatch, capsys):
    import logging

    handled, emitted = [], []
    original = SimpleNamespace(level=logging.WARNING, handle=lambda record: handled.append(record) or "handled",
                               emit=emitted.append)
    monkeypatch.setattr(loggers, "_said", loggers.threading.Event())
    quiet = loggers._QuietLastResort(original)
    assert quiet.level == logging.WARNING
    other = logging.LogRecord("torch.x", logging.WARNING, "f", 1, "a warning", None, None)
    assert quiet.handle(other) == "handled" and handled == [other]
    for name in ("wandb.sdk", "asyncio"):
        record = logging.LogRecord(name, logging.ERROR, "f", 1, "socket.send() raised exception.\nmore", None, None)
        assert quiet.handle(record) is True
    assert handled == [other] and capsys.readouterr().err == (
        "W&B's service went away (socket.send() raised exception.); its run may be left unfinished, the run's CSV "
        "and checkpoints keep the record\n")
    quiet.emit(other)
    assert emitted == [other]


@pytest.mark.parametrize("mode, bound", [("offline", 30), ("disabled", 30), ("online", 45)])
def test_starting_a_run_waits_for_wandbs_service_longer_online(fresh, monkeypatch, mode, bound):
    asked = []

    def call_within(seconds, what, fn):
        asked.append((seconds, what))
        return fn()

    monkeypatch.setattr(loggers, "call_within", call_within)
    logger = start_wandb(OmegaConf.create({"_target_": TARGET, "mode": mode}), {})
    assert asked == [(bound, "W&B's service (starting the W&B run)")] and logger.run.defined[0] == ("epoch", {})


def test_a_logger_without_the_anonymous_setting_is_taken_as_it_is():
    logger = SimpleNamespace(_wandb_init={"mode": "offline"})  # a Lightning that no longer passes it
    assert loggers._without_anonymous(logger) is logger and logger._wandb_init == {"mode": "offline"}


def test_a_traceback_through_code_without_a_module_name_is_not_wandbs():
    namespace = {}  # exec'd code with bare globals: its frames have no __name__
    exec("def fail():\n    raise ValueError('x')", namespace)
    try:
        namespace["fail"]()
    except ValueError as err:
        assert loggers._from_wandb(SimpleNamespace(object=None, exc_traceback=err.__traceback__)) is False


def test_the_one_line_about_wandbs_service_is_flushed_at_once(monkeypatch):
    written = []
    monkeypatch.setattr(sys, "stderr", SimpleNamespace(write=written.append, flush=lambda: written.append("flush")))
    monkeypatch.setattr(loggers, "_said", loggers.threading.Event())
    loggers._say("W&B's service was gone")
    assert "".join(w for w in written if w != "flush") == "W&B's service was gone\n" and written[-1] == "flush"
