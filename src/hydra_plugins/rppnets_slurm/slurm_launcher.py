"""Hydra's submitit SLURM launcher, made to wait for every job: states from squeue where sacct has no accounting, and
a job that ends without a result (cancelled, failed, killed) listed at the sweep's end instead of aborting it."""

from __future__ import annotations

import copy
import logging
import os
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as SubmititSlurmLauncher
from omegaconf import OmegaConf, open_dict, read_write
from submitit.core.utils import UncompletedJobError
from submitit.slurm import slurm as submitit_slurm

log = logging.getLogger(__name__)

# SLURM's job states after which the job never runs again (`man squeue`, JOB STATE CODES). Every other state
# (PENDING, RUNNING, REQUEUED, REQUEUE_FED, SUSPENDED, COMPLETING, PREEMPTED, ...) means: keep waiting. GONE is ours: a
# job SLURM no longer lists (squeue forgets ended jobs after MinJobAge, 300 s by default).
ENDED = ("BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "TIMEOUT", "GONE")
HEADER = "JobID|State|NodeList"  # the columns submitit asks sacct for, and the squeue format that prints the same


class QueueWatcher(submitit_slurm.SlurmInfoWatcher):
    """Job states from sacct; where sacct fails (no accounting database, common on small clusters), from squeue.

    submitit alone asks sacct only: without accounting every state is UNKNOWN, so a job that died without writing
    its result (killed before its handler was set, cancelled) is waited for forever, and each poll prints three
    lines of errors. Here the first failure says once which source is used from then on.
    """

    def __init__(self, delay_s: int = 60) -> None:  # at most a minute between polls (submitit's own: 10 minutes)
        super().__init__(delay_s)
        self.source = "sacct"

    def _make_command(self) -> list[str] | None:
        command = super()._make_command()
        if command is None or self.source == "sacct":
            return command
        jobs = ",".join(command[command.index("-j") + 1::2])
        return ["squeue", "--noheader", "--states=all", "--format=%i|%T|%N", f"--jobs={jobs}"]

    def update(self) -> None:
        command = self._make_command()
        if command is None:
            return
        self._num_calls += 1
        result = subprocess.run(command, capture_output=True)
        if result.returncode != 0 and self.source == "sacct":
            self.source = "squeue"
            log.info(f"sacct: {result.stderr.decode().strip() or 'failed'}; job states come from squeue instead")
            return self.update()
        if result.returncode == 0:
            text = result.stdout.decode()
            info = self.read_info(text if self.source == "sacct" else f"{HEADER}\n{text}")
            if self.source == "squeue":  # a registered job squeue no longer lists has ended long ago
                info = {job: {"State": "GONE"} for job in self._registered - self._finished} | info
            self._info_dict.update(info)
        self._last_status_check = time.time()
        for job in self._registered - self._finished:
            if self.is_done(job, mode="cache"):
                self._finished.add(job)

    def is_done(self, job_id: str, mode: str = "standard") -> bool:
        state = self.get_state(job_id, mode)
        return state.split()[0].upper() in ENDED  # sacct writes "CANCELLED by 0"


class SlurmLauncher(SubmititSlurmLauncher):
    """hydra/launcher=slurm: the plugin's SLURM launcher, waiting for every job whatever becomes of the others.

    The plugin collects the jobs' results in order and raises at the first job that ended without one (scancel, a
    kill, a crash before its result), so the command returned while later jobs still ran and the sweep's end was
    never printed. Here such a job is logged and left to its folder: the sweep's end lists it as unfinished, and
    rerunning the sweep resumes it. A job that has finished already is not submitted again. Submission is the
    plugin's: the same sbatch options from the same config.
    """

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
        import submitit

        params = dict(self.params)
        executor = submitit.AutoExecutor(cluster="slurm", folder=params.pop("submitit_folder"),
                                         slurm_max_num_timeout=params.pop("max_num_timeout"))
        shared = set(OmegaConf.structured(BaseQueueConf).keys())  # named alike for every executor
        executor.update_parameters(**{k if k in shared else f"slurm_{k}": v for k, v in params.items()})
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        log.info(f"Submitit 'slurm' sweep output dir : {sweep_dir}")
        returns: dict[int, JobReturn] = {}  # by job number: the finished jobs', then the submitted ones'
        for idx, overrides in enumerate(job_overrides, initial_job_idx):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            if (finished := self.finished_job(overrides, idx)) is not None:
                log.info(f"\t#{idx} already finished in {finished[0]}; not submitted")
                returns[idx] = JobReturn(status=JobStatus.COMPLETED, _return_value=finished[1])
        indices = [idx for idx in range(initial_job_idx, initial_job_idx + len(job_overrides)) if idx not in returns]
        if indices:
            jobs = executor.map_array(self, [list(job_overrides[i - initial_job_idx]) for i in indices],
                                      ["hydra.sweep.dir"] * len(indices), indices,
                                      [f"job_id_for_{i}" for i in indices], [Singleton.get_state()] * len(indices))
            watcher = QueueWatcher()
            returns |= {idx: self.result(job, watcher) for idx, job in zip(indices, jobs)}
        return [returns[idx] for idx in sorted(returns)]

    def finished_job(self, overrides: Sequence[str], idx: int) -> tuple[Path, dict] | None:
        """(run folder, final metrics: what the job returns) of a job of this sweep that has finished already, found as the job itself would
        (train()'s skip_finished: a results.json of this very config); None if it must run. Submitting a finished
        job would only queue it to print "already finished"."""
        from rppnets.records.run_folder import RunFolder
        from rppnets.training.pipeline import run_hash

        config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        saved = HydraConfig.instance().cfg
        try:
            with open_dict(config):
                config.hydra.job.num = idx
                folder = Path(str(config.hydra.sweep.dir)) / str(OmegaConf.select(config, "hydra.sweep.subdir"))
                config.hydra.runtime.output_dir = str(folder.absolute())
            HydraConfig.instance().set_config(config)  # the job's config resolves ${hydra:...} from it
            task = copy.deepcopy(config)  # what the job's function is given: the config without its hydra node
            with read_write(task), open_dict(task):
                del task["hydra"]
            if not (task.get("resume", True) and task.get("skip_finished", True)):
                return None
            results = RunFolder(folder).finished_results(run_hash(task))
        finally:
            HydraConfig.instance().cfg = saved
        return None if results is None else (folder, results.get("metrics") or {})

    @staticmethod
    def result(job, watcher: QueueWatcher) -> JobReturn:
        """The job's JobReturn once it has ended; for a job that ended without one, a return of None, as a job
        that failed inside returns (src/train.py), so that the sweep's end reads its folder."""
        for part in [job, *job._sub_jobs]:  # a multi-task (DDP) job waits through one job object per task
            part.watcher = watcher  # one watcher for the sweep's jobs: one squeue call per poll
        try:
            return job.results()[0]
        except UncompletedJobError:
            log.warning(f"SLURM job {job.job_id} ended {job.state} without a result; its log: {job.paths.stderr}")
            return JobReturn(status=JobStatus.COMPLETED, _return_value=None)
