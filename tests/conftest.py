"""Shared fixtures: small Fashion-MNIST-format files written by the tests, and composed configs."""

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("WANDB_SILENT", "true")


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write `array` (uint8) in the IDX format of the official files, gzipped."""
    magic = 0x0800 | array.ndim  # 0x08: unsigned byte data
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes())


@pytest.fixture(scope="session")
def fake_root(tmp_path_factory) -> Path:
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


def compose_train(overrides=(), output_dir=None, fake_root=None):
    """The real `train` config as a user would get it, shrunk to a quick CPU run on the fake data."""
    quick = []
    if fake_root is not None:
        quick += [f"data.root={fake_root}", "data.system_dir=null", "data.download=false", "data.verify_md5=false",
                  "data.val_size=32", "data.batch_size=32", "data.eval_batch_size=64",
                  "trainer.max_epochs=1", "trainer.accelerator=cpu", "~callbacks.progress_bar"]
    if output_dir is not None:
        quick.append(f"paths.output_dir={output_dir}")
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("train", overrides=quick + list(overrides))


def forward_backward(layer, x):
    """y = layer(x) and, after a backward of y.square().mean() from cleared gradients, those of x, W and b."""
    x.grad = layer.weight.grad = layer.bias.grad = None
    y = layer(x)
    y.square().mean().backward()
    return y, x.grad, layer.weight.grad, layer.bias.grad
