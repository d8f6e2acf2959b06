"""Which Lightning cluster environment a run uses: chosen on purpose, SLURM's only for a job of several tasks.

Lightning guesses by itself: it takes SLURM's environment wherever SLURM_NTASKS is set, and wherever `srun` is on
the PATH but not used it warns that processes may hang. Neither fits a run here: a SLURM job of one task (the
launcher's default, one job per network and seed) is one process that starts its own DDP ranks like a run on a
workstation, and a machine that merely has `srun` installed is not a cluster job at all.
"""

import os
import warnings

from lightning_fabric.plugins.environments import (ClusterEnvironment, LightningEnvironment, LSFEnvironment,
                                                   MPIEnvironment, SLURMEnvironment, TorchElasticEnvironment)

from rppnets.console import SRUN_HINT

INTERACTIVE_JOB_NAMES = ("bash", "interactive")  # as Lightning: a shell in an allocation, not a job step of ranks


def slurm_multi_task(environ=os.environ) -> bool:
    """Whether this process is one task of a SLURM job step of several (srun started one process per rank)."""
    try:
        tasks = int(environ.get("SLURM_NTASKS", "1"))
    except ValueError:
        return False
    return tasks > 1 and environ.get("SLURM_JOB_NAME") not in INTERACTIVE_JOB_NAMES


def cluster_environment() -> ClusterEnvironment:
    """The cluster environment for the Trainer's `plugins`: Lightning's own order of choice (TorchElastic, SLURM, LSF,
    MPI, else LightningEnvironment) with SLURM taken only for a multi-task job (slurm_multi_task), never guessed from
    `srun` being installed.

    The choice made, Lightning's srun hint (which it gives again whenever a fit or a test starts without a checkpoint
    path, outside SLURM) is about a guess no longer made: it is filtered by its text from here on.
    """
    warnings.filterwarnings("ignore", message=SRUN_HINT, category=UserWarning)
    if TorchElasticEnvironment.detect():
        return TorchElasticEnvironment()
    if slurm_multi_task():
        return SLURMEnvironment()
    for environment in (LSFEnvironment, MPIEnvironment):
        if environment.detect():
            return environment()
    return LightningEnvironment()
