"""The cluster environment a run chooses: SLURM's only for a job of several tasks, and no srun hint anywhere else."""

import warnings

import pytest
from lightning_fabric.plugins.environments import LightningEnvironment, SLURMEnvironment, TorchElasticEnvironment
from pytorch_lightning import Trainer

from rppnets.training.cluster import cluster_environment, slurm_multi_task

CLUSTER_VARIABLES = ("SLURM_NTASKS", "SLURM_NTASKS_PER_NODE", "SLURM_JOB_NAME", "SLURM_JOB_ID", "SLURM_NODELIST",
                     "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NODEID", "RANK", "GROUP_RANK", "LOCAL_RANK",
                     "LOCAL_WORLD_SIZE", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")


@pytest.fixture()
def outside_any_cluster(monkeypatch):
    for name in CLUSTER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("shutil.which", lambda name: f"/usr/bin/{name}")  # srun installed, as on a login node
    return monkeypatch


@pytest.mark.parametrize("variables, multi_task", [
    ({}, False),  # a workstation, or a login node with srun installed
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1", "SLURM_JOB_NAME": "train"}, False),  # one task: one process
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "4", "SLURM_JOB_NAME": "train"}, True),
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4", "SLURM_JOB_NAME": "interactive"}, False),  # a shell in an allocation
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4", "SLURM_JOB_NAME": "bash"}, False),
])
def test_slurms_environment_only_for_a_job_of_several_tasks(outside_any_cluster, variables, multi_task):
    for name, value in variables.items():
        outside_any_cluster.setenv(name, value)
    assert slurm_multi_task() is multi_task
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        environment = cluster_environment()
        SLURMEnvironment._validate_srun_used()  # what Lightning's checkpoint connector runs at each fit and test
    assert type(environment) is (SLURMEnvironment if multi_task else LightningEnvironment)
    assert [str(w.message) for w in caught] == []  # no srun hint: the choice is made, not guessed


def test_without_the_choice_lightning_hints_at_srun(outside_any_cluster):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        SLURMEnvironment._validate_srun_used()
    assert ["srun" in str(w.message) for w in caught] == [True]


def test_torchelastic_keeps_its_place_before_slurm(outside_any_cluster):
    for name, value in {"TORCHELASTIC_RUN_ID": "r1", "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2",
                        "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2"}.items():
        outside_any_cluster.setenv(name, value)
    assert isinstance(cluster_environment(), TorchElasticEnvironment)


def test_a_trainer_given_the_environment_builds_without_the_srun_hint(outside_any_cluster):
    def trainer_warnings(**kwargs) -> tuple[type, list[str]]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                              enable_checkpointing=False, enable_model_summary=False, **kwargs)
        environment = type(trainer._accelerator_connector.cluster_environment)
        return environment, [str(w.message) for w in caught if "srun" in str(w.message)]

    environment, hints = trainer_warnings()
    assert environment is LightningEnvironment and hints != []  # Lightning's guess hints at srun where it is installed
    assert trainer_warnings(plugins=[cluster_environment()]) == (LightningEnvironment, [])
