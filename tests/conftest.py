"""Shared fixtures: small Fashion-MNIST-format files written by the tests. Plain helpers are in helpers.py."""

import os

import numpy as np
import pytest

from helpers import write_idx

os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(scope="session")
def fake_root(tmp_path_factory):
    """A data root with FashionMNIST/raw/*.gz holding 256 training and 64 test images of 10 learnable classes."""
    root = tmp_path_factory.mktemp("fashion")
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 256), ("t10k", 64)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        # Each class lights up its own band of rows, so a network can learn something in one epoch.
        images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for i, label in enumerate(labels):
            images[i, 2 * label : 2 * label + 3] = 255
        write_idx(raw / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root
