"""Shared fixtures: small Fashion-MNIST-format files written by the tests. Plain helpers are in helpers.py."""

import os
from pathlib import Path

import pytest

from helpers import write_fake_fashion_mnist

os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(scope="session")
def fake_root(tmp_path_factory):
    """A data root with FashionMNIST/raw/*.gz holding 256 training and 64 test images of 10 learnable classes."""
    return write_fake_fashion_mnist(tmp_path_factory.mktemp("fashion"))


# The files that take longest (real SLURM, chaos rounds, provoked faults), handed to the workers first: with whole files
# per worker (make test: --dist loadfile), a long file left for last keeps one worker busy while the other idles.
FIRST = ("test_slurm.py", "test_chaos.py", "test_faults.py", "test_launchers.py", "test_kernels.py", "test_ddp.py",
         "test_reproduce.py", "test_printed_commands.py")


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: FIRST.index(name) if (name := Path(str(item.path)).name) in FIRST else len(FIRST))
