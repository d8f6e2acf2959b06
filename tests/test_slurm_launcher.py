"""hydra/launcher=slurm (hydra_plugins.rppnets_slurm.slurm_launcher) with the scheduler stubbed where it is called:
job states from sacct, or squeue where sacct has no accounting; a job that ends without a result listed, not fatal;
sbatch options passed as the plugin names them. A wrong state waits forever for a dead job or abandons a live one."""

import json
import logging
import os
import subprocess
from types import SimpleNamespace

import pytest
import submitit
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf
from submitit.core.utils import UncompletedJobError

from hydra_plugins.rppnets_slurm import slurm_launcher
from hydra_plugins.rppnets_slurm.slurm_launcher import QueueWatcher, SlurmLauncher


@pytest.fixture()
def scheduler(monkeypatch):
    """sacct and squeue stubbed: `answers[program]` is (exit status, stdout, stderr); `calls` what was run."""
    calls, answers = [], {"sacct": (0, "JobID|State|NodeList\n", ""), "squeue": (0, "", "")}

    def run(command, **kwargs):
        calls.append(command)
        assert kwargs == {"capture_output": True}
        code, out, err = answers[command[0]]
        return subprocess.CompletedProcess(command, code, out.encode(), err.encode())

    monkeypatch.setattr(slurm_launcher.subprocess, "run", run)
    return calls, answers


def watcher_of(*jobs) -> QueueWatcher:
    watcher = QueueWatcher()
    for job in jobs:
        watcher.register_job(job)
    return watcher


def test_states_come_from_sacct_while_it_answers(scheduler):
    calls, answers = scheduler
    answers["sacct"] = (0, "JobID|State|NodeList\n12|COMPLETED|n1\n13|RUNNING|n2\n", "")
    watcher = watcher_of("12", "13")
    assert watcher._delay_s == 60 and watcher.source == "sacct"  # a poll a minute at most
    watcher.update()
    assert not watcher.is_done("13")  # just polled: the next poll waits
    assert [command[0] for command in calls] == ["sacct"] and sorted(calls[0][5::2]) == ["12", "13"]
    assert watcher.is_done("12", mode="cache") and not watcher.is_done("13", mode="cache")
    assert watcher._finished == {"12"} and watcher.get_state("13", mode="cache") == "RUNNING"


def test_without_accounting_states_come_from_squeue_said_once(scheduler, caplog):
    calls, answers = scheduler
    answers["sacct"] = (1, "", "sacct: error: Slurm accounting storage is disabled\n")
    answers["squeue"] = (0, "12|CANCELLED|n1\n13|RUNNING|n2\n", "")
    watcher = watcher_of("12", "13", "14")
    with caplog.at_level(logging.INFO, logger=slurm_launcher.__name__):
        watcher.update()
        watcher.update()
    assert [command[0] for command in calls] == ["sacct", "squeue", "squeue"]
    assert calls[1][:4] == ["squeue", "--noheader", "--states=all", "--format=%i|%T|%N"]
    assert calls[1][4].startswith("--jobs=") and sorted(calls[1][4][len("--jobs="):].split(",")) == ["12", "13", "14"]
    assert calls[2][4] == "--jobs=13"  # the jobs still to watch
    assert [r.getMessage() for r in caplog.records] == [
        "sacct: sacct: error: Slurm accounting storage is disabled; job states come from squeue instead"]
    # 12 cancelled, 14 no longer listed (ended long ago): both done; 13 still runs
    assert watcher._finished == {"12", "14"} and watcher.get_state("14", mode="cache") == "GONE"
    assert watcher.get_state("13", mode="cache") == "RUNNING"


def test_a_sacct_failure_without_a_message_is_named_failed(scheduler, caplog):
    _, answers = scheduler
    answers["sacct"] = (1, "", "  ")
    answers["squeue"] = (0, "12|RUNNING|n1\n", "")
    with caplog.at_level(logging.INFO, logger=slurm_launcher.__name__):
        watcher_of("12").update()
    assert caplog.records[0].getMessage() == "sacct: failed; job states come from squeue instead"


def test_a_failed_squeue_changes_no_state(scheduler):
    calls, answers = scheduler
    answers["sacct"] = (1, "", "no accounting")
    answers["squeue"] = (1, "", "slurm_load_jobs error")
    watcher = watcher_of("12")
    watcher.update()
    watcher.update()
    assert [command[0] for command in calls] == ["sacct", "squeue", "squeue"]
    assert watcher._finished == set() and watcher.get_state("12", mode="cache") == "UNKNOWN"
    assert watcher._num_calls == 3


def test_nothing_is_asked_when_no_job_is_left(scheduler):
    calls, answers = scheduler
    answers["sacct"] = (0, "JobID|State|NodeList\n12|COMPLETED|n1\n", "")
    watcher = watcher_of("12")
    watcher.update()
    watcher.update()
    assert len(calls) == 1 and watcher._num_calls == 1
    assert QueueWatcher()._make_command() is None
    squeue = QueueWatcher()
    squeue.source = "squeue"
    assert squeue._make_command() is None


@pytest.mark.parametrize("state, done", [("CANCELLED by 0", True), ("completed", True), ("OUT_OF_MEMORY", True),
                                         ("TIMEOUT", True), ("GONE", True), ("PENDING", False),
                                         ("REQUEUED", False), ("PREEMPTED", False), ("RUNNING", False)])
def test_a_job_is_done_only_in_a_state_it_never_leaves(state, done):
    watcher = watcher_of("7")
    watcher._info_dict["7"] = {"State": state}
    assert watcher.is_done("7", mode="cache") is done


class FakeJob:
    def __init__(self, job_id, result=None, parts=0):
        self.job_id, self.state, self._result = job_id, "CANCELLED", result
        self._sub_jobs = [SimpleNamespace() for _ in range(parts)]
        self.paths = SimpleNamespace(stderr=f"/sweep/.submitit/{job_id}/{job_id}_0_log.err")

    def results(self):
        if self._result is None:
            raise UncompletedJobError(f"Job {self.job_id} has no result")
        return [self._result]


def test_a_job_without_a_result_returns_none_and_is_logged(caplog):
    watcher, job = QueueWatcher(), FakeJob("41", parts=2)
    with caplog.at_level(logging.WARNING, logger=slurm_launcher.__name__):
        returned = SlurmLauncher.result(job, watcher)
    assert returned.status == JobStatus.COMPLETED and returned.return_value is None
    assert [r.getMessage() for r in caplog.records] == [
        "SLURM job 41 ended CANCELLED without a result; its log: /sweep/.submitit/41/41_0_log.err"]
    assert job.watcher is watcher and all(part.watcher is watcher for part in job._sub_jobs)


def test_a_job_with_a_result_returns_it():
    done = JobReturn(status=JobStatus.COMPLETED, _return_value={"test/acc": 0.5})
    assert SlurmLauncher.result(FakeJob("42", result=done), QueueWatcher()) is done


def test_launch_submits_one_array_with_the_plugins_options_and_waits_for_every_job(tmp_path, monkeypatch):
    seen = {}

    class Executor:
        def __init__(self, **kwargs):
            seen["init"] = kwargs

        def update_parameters(self, **kwargs):
            seen["parameters"] = kwargs

        def map_array(self, function, *arguments):
            seen["function"], seen["arguments"] = function, arguments
            return [FakeJob("50_0"), FakeJob("50_1", result=JobReturn(status=JobStatus.COMPLETED,
                                                                      _return_value=1.0))]

    monkeypatch.setattr(submitit, "AutoExecutor", Executor)
    launcher = SlurmLauncher(submitit_folder=str(tmp_path / ".submitit"), max_num_timeout=3, timeout_min=60,
                             partition="gpu", cpus_per_task=4, additional_parameters={"mail": "x"})
    launcher.config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "sweep"), "mode": "750"}}})
    monkeypatch.setattr(launcher, "finished_job", lambda overrides, idx: None)  # nothing finished yet
    returns = launcher.launch([["seed=0"], ["seed=1"]], initial_job_idx=5)
    assert seen["init"] == {"cluster": "slurm", "folder": str(tmp_path / ".submitit"), "slurm_max_num_timeout": 3}
    assert seen["parameters"] == {"timeout_min": 60, "slurm_partition": "gpu", "cpus_per_task": 4,
                                  "slurm_additional_parameters": {"mail": "x"}}
    assert seen["function"] is launcher
    overrides, keys, numbers, ids, states = seen["arguments"]
    assert (overrides, keys, numbers, ids) == ([["seed=0"], ["seed=1"]], ["hydra.sweep.dir"] * 2, [5, 6],
                                               ["job_id_for_5", "job_id_for_6"])
    assert len(states) == 2
    assert [r.return_value for r in returns] == [None, 1.0]
    assert (tmp_path / "sweep").is_dir() and (os.stat(tmp_path / "sweep").st_mode & 0o777) == 0o750
    assert launcher.params["submitit_folder"] == str(tmp_path / ".submitit")  # the launcher's own are left as given


def test_finished_jobs_are_not_submitted_and_the_returns_keep_the_sweeps_order(tmp_path, monkeypatch):
    submitted = {}

    class Executor:
        def __init__(self, **kwargs):
            pass

        def update_parameters(self, **kwargs):
            pass

        def map_array(self, function, overrides, keys, numbers, ids, states):
            submitted.update(overrides=overrides, numbers=numbers, ids=ids)
            return [FakeJob(f"60_{i}", result=JobReturn(status=JobStatus.COMPLETED, _return_value=float(n)))
                    for i, n in enumerate(numbers)]

    monkeypatch.setattr(submitit, "AutoExecutor", Executor)
    launcher = SlurmLauncher(submitit_folder=str(tmp_path / ".submitit"), max_num_timeout=3)
    launcher.config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "sweep")}}})
    finished = {0: 0.25, 2: 0.5}  # jobs 0 and 2 finished in an earlier run of the sweep
    monkeypatch.setattr(launcher, "finished_job", lambda overrides, idx: (tmp_path / str(idx), finished[idx])
                        if idx in finished else None)
    returns = launcher.launch([["seed=0"], ["seed=1"], ["seed=2"], ["seed=3"]], initial_job_idx=0)
    assert submitted == {"overrides": [["seed=1"], ["seed=3"]], "numbers": [1, 3], "ids": ["job_id_for_1",
                                                                                            "job_id_for_3"]}
    assert [r.return_value for r in returns] == [0.25, 1.0, 0.5, 3.0]

    submitted.clear()  # every job finished: nothing is submitted at all
    monkeypatch.setattr(launcher, "finished_job", lambda overrides, idx: (tmp_path, 0.0))
    assert [r.return_value for r in launcher.launch([["seed=0"]], initial_job_idx=0)] == [0.0] and not submitted


# --- a finished job found as the job itself would find it (the real config, composed as Hydra hands it a sweep) ------


@pytest.fixture()
def sweep_launcher(tmp_path):
    """The launcher as Hydra starts it for a sweep of conf/train.yaml into tmp_path/sweep; `job_hash(overrides)` the
    config hash the job of these overrides records in its results.json (composed on its own, outside the sweep)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    import rppnets.training.sweep  # noqa: F401  (registers job_dirname, which names the job folders)
    from helpers import CONF_DIR
    from rppnets.training.pipeline import run_hash

    saved = HydraConfig.instance().cfg
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        master = compose("train", overrides=[f"hydra.sweep.dir={tmp_path / 'sweep'}"], return_hydra_config=True)
        launcher = SlurmLauncher(submitit_folder=str(tmp_path / ".submitit"), max_num_timeout=3)
        launcher.config = master
        launcher.hydra_context = SimpleNamespace(config_loader=GlobalHydra.instance().config_loader())
        HydraConfig.instance().set_config(master)
        sweeps = HydraConfig.instance().cfg  # the sweep's own Hydra config, as the launcher finds it
        yield launcher, lambda overrides: run_hash(compose("train", overrides=list(overrides))), sweeps
    HydraConfig.instance().cfg = saved


def write_results(folder, config_hash, **extra):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps({"status": "finished", "config_hash": config_hash} | extra))


def test_a_finished_job_is_found_in_its_own_folder_by_its_own_config(sweep_launcher, tmp_path):
    from hydra.core.hydra_config import HydraConfig

    launcher, job_hash, sweeps = sweep_launcher
    folder = tmp_path / "sweep" / "2-seed=3"  # <job number>-<its overrides>, conf/train.yaml's hydra.sweep.subdir
    assert launcher.finished_job(["seed=3"], 2) is None  # nothing there yet
    write_results(folder, job_hash(["seed=3"]), metrics={"val/loss": 0.5, "test/acc": 0.75})
    assert launcher.finished_job(["seed=3"], 2) == (folder, {"val/loss": 0.5, "test/acc": 0.75})
    assert HydraConfig.instance().cfg is sweeps  # the sweep's own config is back after each look
    assert launcher.finished_job(["seed=3"], 1) is None  # job 1 of the same overrides has another folder
    write_results(folder, job_hash(["seed=3"]))  # finished without metrics: an empty set, not None
    assert launcher.finished_job(["seed=3"], 2) == (folder, {})
    write_results(tmp_path / "sweep" / "2-seed=4", job_hash(["seed=3"]))  # another config's results in its folder
    assert launcher.finished_job(["seed=4"], 2) is None


@pytest.mark.parametrize("key", ["resume", "skip_finished"])
def test_a_job_told_not_to_skip_or_resume_is_submitted_even_when_finished(sweep_launcher, tmp_path, key):
    from rppnets.records.run_folder import RunFolder

    launcher, job_hash, _ = sweep_launcher
    overrides = [f"{key}=false", "seed=3"]
    folder = tmp_path / "sweep" / f"0-{','.join(sorted(overrides))}"  # Hydra's override_dirname: sorted
    write_results(folder, job_hash(overrides), metrics={"val/loss": 0.5})
    assert RunFolder(folder).finished_results(job_hash(overrides)) is not None  # finished, of this very config
    assert launcher.finished_job(overrides, 0) is None


# --- what the mutation run of 2026-12-08 found untested ----------------------------------------------------------


def test_a_cached_state_asks_nothing_and_a_forced_one_asks_now(scheduler):
    calls, answers = scheduler
    answers["sacct"] = (0, "JobID|State|NodeList\n12|COMPLETED|n1\n", "")
    watcher = watcher_of("12")
    assert not watcher.is_done("12", mode="cache") and calls == []  # never polled: nothing known, nothing asked
    assert watcher.is_done("12", mode="force") and len(calls) == 1
    assert sorted(watcher._info_dict) == ["12"]  # sacct's own header line is not read as a job


class SweepExecutor:
    """submitit's executor stubbed: the array it was given, and jobs that return their job number."""

    submitted: dict = {}

    def __init__(self, **kwargs):
        SweepExecutor.submitted = {}

    def update_parameters(self, **kwargs):
        pass

    def map_array(self, function, overrides, keys, numbers, ids, states):
        SweepExecutor.submitted.update(overrides=overrides, numbers=numbers)
        SweepExecutor.submitted["jobs"] = [
            FakeJob(f"70_{i}", result=JobReturn(status=JobStatus.COMPLETED, _return_value=float(n)))
            for i, n in enumerate(numbers)]
        return SweepExecutor.submitted["jobs"]


def test_a_sweep_numbered_from_later_on_finds_and_says_its_jobs_by_their_numbers(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(submitit, "AutoExecutor", SweepExecutor)
    launcher = SlurmLauncher(submitit_folder=str(tmp_path / ".submitit"), max_num_timeout=3)
    sweep = tmp_path / "multirun" / "2026-12-08" / "sweep"  # no folder of it exists yet
    launcher.config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}})
    asked = []

    def finished_job(overrides, idx):  # job 6 (seed=1) finished in an earlier run of the sweep
        asked.append((list(overrides), idx))
        return (tmp_path / "done-6", {"val/loss": 0.25}) if (list(overrides), idx) == (["seed=1"], 6) else None

    monkeypatch.setattr(launcher, "finished_job", finished_job)
    with caplog.at_level(logging.INFO, logger=slurm_launcher.__name__):
        returns = launcher.launch([["seed=0", "lr=0.1", "hydra.job.chdir=true"], ["seed=1"], ["seed=2"]],
                                  initial_job_idx=5)
    assert sweep.is_dir()
    assert asked == [(["seed=0", "lr=0.1", "hydra.job.chdir=true"], 5), (["seed=1"], 6), (["seed=2"], 7)]
    assert SweepExecutor.submitted["numbers"] == [5, 7]
    assert [r.return_value for r in returns] == [5.0, {"val/loss": 0.25}, 7.0]
    assert [r.getMessage() for r in caplog.records] == [
        f"Submitit 'slurm' sweep output dir : {sweep}", "\t#5 : seed=0 lr=0.1", "\t#6 : seed=1",  # hydra.* left out
        f"\t#6 already finished in {tmp_path / 'done-6'}; not submitted", "\t#7 : seed=2"]
    jobs = SweepExecutor.submitted["jobs"]  # one watcher for every job of the sweep: one squeue call per poll
    assert isinstance(jobs[0].watcher, slurm_launcher.QueueWatcher) and jobs[1].watcher is jobs[0].watcher
