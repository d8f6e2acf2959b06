"""hydra/launcher=slurm (hydra_plugins.rppnets_slurm.slurm_launcher) with the scheduler stubbed where it is called:
job states from sacct, or squeue where sacct has no accounting; a job that ends without a result listed, not fatal;
sbatch options passed as the plugin names them. A wrong state waits forever for a dead job or abandons a live one."""

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
