"""Hydra entry point: `python src/train.py model=rpp model.k=100` trains one network (add -m to sweep)."""

import os
import shutil
import signal
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_class
from omegaconf import DictConfig
from pytorch_lightning.strategies.launchers import subprocess_script as lightning_ddp_launcher
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from rppnets.training.checkpointing import Preempted, requeue_slurm_job
import rppnets.schemas  # noqa: F401  (registers the config schemas before Hydra composes)
from rppnets.data import DataNotFoundError
from rppnets.console import hydra_value, program, shell_line, shell_word, shown_path, silence_known_noise
from rppnets.records.run_folder import RESULTS, RunFolder
from rppnets.training.sweep import SweepOutcome, job_dirname  # noqa: F401  (job_dirname: registers its resolver)
from rppnets.training.pipeline import ConfigError, launcher_is, train

# Exit statuses: 1 a job failed, 2 bad input (a single run), 128 + signal number when stopped by a signal.
FAILED, INVALID = 1, 2
SCRIPT = Path(__file__).resolve()
# What Lightning's DDP launcher sets in the process that starts the other ranks (and never unsets).
DDP_LAUNCH_ENV = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "OMP_NUM_THREADS")


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> dict | None:
    global job_started
    job_started = True
    silence_known_noise()  # here, not at import: a launcher's worker process runs only this function
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    lightning_ddp_launcher._hydra_subprocess_cmd = ddp_rank_command  # trainer=ddp: ranks 1.. rerun this job
    try:
        with ddp_launch_undone():
            metrics = train(cfg)
    except Preempted as stop:  # a checkpoint is saved; stop this process (a sweep too), requeue under SLURM
        requeued = rank_zero_only.rank == 0 and requeue_slurm_job()  # one requeue per job, not one per process
        if rank_zero_only.rank == 0:
            print(stop_line(stop.signum, Path(cfg.paths.output_dir), multirun, requeued), file=sys.stderr, flush=True)
        if multirun and submitit_job() and not requeued:
            return None  # the signal was for this job alone: the sweep's end lists it as unfinished
        sys.exit(128 + stop.signum)  # under submitit: no result yet, so its launcher waits for the requeued job
    except ConfigError as err:
        what = "no data" if caused_by(err, DataNotFoundError) else "invalid config"  # files not there, no network
        print(f"{what.capitalize()}: {err}", file=sys.stderr)
        if multirun:  # the job's folder records why; the other jobs go on
            record = {"status": "failed", "error": f"{what}: {err}", "network": cfg.get("network"),
                      "seed": cfg.get("seed")}
            try:
                RunFolder(cfg.paths.output_dir).write_json(RESULTS, record)
            except OSError:
                pass  # an unwritable folder is the error itself
            return None
        if rank_zero_only.rank == 0:
            remove_if_only_hydra_files(Path(cfg.paths.output_dir))
        sys.exit(INVALID)
    except Exception as err:  # the failure is recorded in results.json by train()
        # our own errors and the machine's (a full disk, a lost folder) are one line; a bug gets its traceback
        expected = type(err).__module__.startswith("rppnets") or (isinstance(err, OSError) and err.errno is not None)
        print(f"Job failed: {err}" if expected else traceback.format_exc(), file=sys.stderr)
        if multirun:
            return None
        sys.exit(FAILED)
    return metrics  # the final metrics, for sweepers that optimise one of them (hydra/sweeper=optuna)


def caused_by(err: BaseException, kind: type) -> bool:
    """Whether `err` or an error it was raised from is a `kind`."""
    while err is not None:
        if isinstance(err, kind):
            return True
        err = err.__cause__
    return False


def stop_line(signum: int, folder: Path, multirun: bool, requeued: bool = False) -> str:
    """The one line a stopped run prints: which signal, the checkpoint it resumes from (or that none was written yet:
    it starts afresh), and the command that goes on with it, which a shell and then Hydra read back as printed
    (paths relative to the working directory where they lie inside it: pasted where the run was started)."""
    run = RunFolder(folder)
    checkpoint = next((path for path in (run.checkpoint_path, run.previous_checkpoint_path) if path.is_file()), None)
    stopped = f"stopped by {signal.Signals(signum).name}; " + (
        f"checkpoint {shell_word(shown_path(checkpoint))}; " if checkpoint else "no checkpoint yet, so it starts afresh; ")
    if requeued:
        return stopped + "SLURM requeued the job: it goes on when it starts again"
    again = "resume: " if checkpoint else "run again: "
    if multirun and submitit_job():  # this process is submitit's worker: its argv is not the sweep's command
        return stopped + again + "run the sweep's command again (finished jobs are skipped)"
    if multirun:  # the same sweep command: finished jobs are skipped, this one resumes
        command = shell_line([program(), *sys.argv])
    else:
        overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith("hydra.run.dir=")]
        command = shell_line([program(), sys.argv[0], *overrides, f"hydra.run.dir={hydra_value(shown_path(folder))}"])
    return stopped + again + command


def submitit_job() -> bool:
    """Whether this job runs as its own submitit job (SLURM or local), started by Hydra's submitit launcher."""
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher

    return launcher_is(get_class(HydraConfig.get().launcher._target_), BaseSubmititLauncher)


def ddp_rank_command(local_rank: int) -> tuple[list[str], str]:
    """The command Lightning's DDP launcher runs for rank `local_rank`: this job again, as a single run in its folder.

    Replaces Lightning's own, which reruns ``sys.argv`` with ``hydra.run.dir``: in a multirun every rank would start
    the whole sweep again, and in a joblib or submitit worker ``sys.argv`` is the worker's, not this script's.
    The run folder is quoted for Hydra: job folder names hold ``=`` and ``,``.
    """
    hydra_cfg = HydraConfig.get()
    command = [sys.executable, str(SCRIPT), *hydra_cfg.overrides.task, "hydra.mode=RUN",
               f"hydra.run.dir={hydra_value(hydra_cfg.runtime.output_dir)}",
               f"hydra.job.name={hydra_cfg.job.name}_ddp_rank{local_rank}", "hydra.output_subdir=null"]
    return command, hydra_cfg.runtime.cwd


@contextmanager
def ddp_launch_undone():
    """After a job, undo what Lightning's DDP launcher left in this process (its rank variables, thread count and
    process group), so that the next job of a multirun starts its own ranks instead of joining the finished ones."""
    saved_env = {key: os.environ.get(key) for key in DDP_LAUNCH_ENV}
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        torch.set_num_threads(threads)


def remove_if_only_hydra_files(folder: Path) -> None:
    """A single run refused before it started leaves no folder behind (Hydra made it and its .hydra/)."""
    if folder.is_dir() and {p.name for p in folder.iterdir()} <= {".hydra", "train.log"}:
        shutil.rmtree(folder)


def run_main() -> None:
    """main(), with a config Hydra could not compose (a wrong type, a null, a misspelt key or option) exiting with
    status 2 like the project's own checks: Hydra prints the key and exits 1 before any job (or folder) exists."""
    global job_started
    try:
        main()
    except SystemExit as stop:
        if stop.code == 1 and not (job_started or SweepOutcome.started):  # jobs may run in other processes
            sys.exit(INVALID)
        raise


job_started = False  # set when main() runs: a composed config reached a job


if __name__ == "__main__":
    run_main()
