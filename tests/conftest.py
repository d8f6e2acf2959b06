"""Shared fixtures: small Fashion-MNIST-format files written by the tests. Plain helpers are in helpers.py."""

import os

import pytest

from helpers import write_fake_fashion_mnist

os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(scope="session")
def fake_root(tmp_path_factory):
    """A data root with FashionMNIST/raw/*.gz holding 256 training and 64 test images of 10 learnable classes."""
    return write_fake_fashion_mnist(tmp_path_factory.mktemp("fashion"))
