"""Typed schemas of the configs, registered in Hydra's ConfigStore: a wrong type, a null or a misspelt key is refused
when the config is composed, naming the key, before any folder is made.

Each YAML file of conf/ names its schema first in its defaults list (``- /schema/model/mlp@_here_``); the files keep
the values and comments, the schemas the types. Ranges and relations (``k >= 1``, a batch no larger than the
training set) are checked by the objects the configs build. Importing this module registers the schemas; every
entry point that composes the configs (src/train.py, the tests' helpers, rppnets.analysis.memory) imports it.
A config of your own (a model by ``_target_``) needs no schema: without one, its keys are free.
"""

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class TrainSchema:
    """conf/train.yaml's own keys; the groups (data, model, ...) have schemas of their own."""

    seed: int = 0
    group: str = "default"
    network: Optional[str] = None
    run_name: Optional[str] = None
    skip_finished: bool = True
    compile: Optional[str] = None
    resume: bool = True
    optimizer: Any = None
    paths: Any = None
    data: Any = None
    model: Any = None
    trainer: Any = None
    logger: Any = None
    callbacks: Any = None


@dataclass
class MLPSchema:
    """conf/model/{dense,softmax,rpp,hashed,lowrank}.yaml: rppnets.models.MLP."""

    _target_: str = "rppnets.models.MLP"
    kind: str = "dense"
    width: int = 1000
    depth: int = 2
    bias: Any = "full"  # full, reuse (RPP), none, or true/false
    k: int = 1


@dataclass
class RPPSchema(MLPSchema):
    """conf/model/rpp.yaml: the MLP of RPP layers."""

    permutation: str = "stored"
    seed: int = 0
    signs: bool = False
    init: str = "hidden_fan_in"


@dataclass
class HashedSchema(MLPSchema):
    """conf/model/hashed.yaml: the MLP of HashedNets layers."""

    seed: int = 0


@dataclass
class DataSchema:
    """What every data module takes: batches, the split and where the files are."""

    _target_: str = ""
    name: str = ""
    root: str = "data"
    download: bool = True
    batch_size: int = 128
    eval_batch_size: int = 1000
    val_size: int = 5000
    train_size: Optional[int] = None
    seed: int = 0


@dataclass
class IDXDataSchema(DataSchema):
    """conf/data/fashion_mnist.yaml: an IDX data set read in place where a system folder holds it."""

    system_dir: Optional[str] = None
    verify_md5: bool = True


@dataclass
class NamedIDXDataSchema(IDXDataSchema):
    """conf/data/{mnist,kmnist}.yaml: an IDX data set named by `dataset`."""

    dataset: str = "mnist"


@dataclass
class TorchvisionDataSchema(DataSchema):
    """conf/data/cifar10.yaml: any torchvision dataset class by `dataset._target_`."""

    dataset: Any = None
    input_shape: list[int] = field(default_factory=list)
    num_classes: int = 10
    transform: Any = None
    train_kwargs: Any = None
    test_kwargs: Any = None


@dataclass
class TrainerSchema:
    """conf/trainer/*.yaml: the Lightning Trainer's arguments set here; add others with ``+trainer.<key>=...``."""

    _target_: str = "pytorch_lightning.Trainer"
    max_epochs: int = 30
    accelerator: str = "auto"
    devices: Any = 1
    strategy: Any = "auto"
    num_nodes: int = 1
    precision: Any = None
    deterministic: Any = True
    default_root_dir: Optional[str] = None
    log_every_n_steps: int = 50
    enable_model_summary: bool = False
    enable_progress_bar: Optional[bool] = None
    limit_train_batches: Any = None
    limit_val_batches: Any = None
    limit_test_batches: Any = None
    num_sanity_val_steps: Optional[int] = None
    fast_dev_run: Any = False  # conf/debug/
    overfit_batches: Any = 0.0
    profiler: Optional[str] = None


SCHEMAS = {"train": TrainSchema, "model/mlp": MLPSchema, "model/rpp": RPPSchema, "model/hashed": HashedSchema,
           "data/idx": IDXDataSchema, "data/named_idx": NamedIDXDataSchema, "data/torchvision": TorchvisionDataSchema,
           "trainer/lightning": TrainerSchema}


def register() -> None:
    """Put the schemas in Hydra's ConfigStore under schema/<name> (idempotent)."""
    store = ConfigStore.instance()
    for name, node in SCHEMAS.items():
        group, _, leaf = f"schema/{name}".rpartition("/")
        store.store(group=group, name=leaf, node=node)


register()
