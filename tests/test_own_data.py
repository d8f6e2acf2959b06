"""A LightningDataModule of one's own by `_target_`, as the README's "Make it yours" shows: it trains a built-in
network sized by the data module, and a data module that does not give a size the model needs is refused first."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from rppnets.training.pipeline import ConfigError, data_sizes

ROOT = Path(__file__).resolve().parents[1]
MODULE = '''
import torch
import pytorch_lightning as pl
from torch.utils.data import DataLoader, TensorDataset


class Blobs(pl.LightningDataModule):
    """Points around num_classes centres in in_features dimensions: 1,000 to train, 200 to validate, 200 to test."""

    def __init__(self, in_features: int = 20, num_classes: int = 3, batch_size: int = 64, seed: int = 0):
        super().__init__()
        self.in_features, self.num_classes = in_features, num_classes  # the model is built for these
        self.batch_size, self.seed = batch_size, seed

    def setup(self, stage=None):
        g = torch.Generator().manual_seed(self.seed)
        centres = 3 * torch.randn(self.num_classes, self.in_features, generator=g)

        def split(n):
            y = torch.randint(self.num_classes, (n,), generator=g)
            return TensorDataset(centres[y] + torch.randn(n, self.in_features, generator=g), y)

        self.train_set, self.val_set, self.test_set = split(1000), split(200), split(200)

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=self.batch_size)

    def test_dataloader(self):
        return DataLoader(self.test_set, batch_size=self.batch_size)
'''
CONFIG = "_target_: mydata.Blobs\nin_features: 20\nnum_classes: 3\nbatch_size: 64\nseed: ${seed}\n"


@pytest.mark.slow
def test_a_data_module_of_your_own_trains_a_network_sized_by_it(tmp_path):
    (tmp_path / "mydata.py").write_text(MODULE)
    (tmp_path / "myconf" / "data").mkdir(parents=True)
    (tmp_path / "myconf" / "data" / "blobs.yaml").write_text(CONFIG)
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    run = tmp_path / "run"
    done = subprocess.run([sys.executable, "src/train.py", f"--config-dir={tmp_path / 'myconf'}", "data=blobs",
                           "model=rpp", "model.k=4", "trainer.max_epochs=2", "logger=csv", "~callbacks.progress_bar",
                           f"hydra.run.dir={run}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads((run / "results.json").read_text())
    assert results["status"] == "finished"
    # two RPP layers (20 -> 10 x 4, 40 -> 10 x 4, full biases) and the 40 -> 3 output: sizes from the data module
    assert results["metrics"]["model/params_trainable"] == (20 * 10 + 40) + (40 * 10 + 40) + (40 * 3 + 3)
    assert results["metrics"]["test/acc"] > 0.9  # well-separated blobs


class NoSizes:
    """A data module that does not say its input size or classes."""


def test_a_size_the_model_needs_and_the_data_module_lacks_is_refused_naming_both_ways_to_give_it():
    model = OmegaConf.create({"_target_": "rppnets.models.MLP", "kind": "rpp", "width": 10, "k": 4})
    with pytest.raises(ConfigError, match=r"rppnets.models.MLP takes in_features and num_classes, which the data "
                                          r"module test_own_data.NoSizes does not give.*model.in_features=<n> "
                                          r"model.num_classes=<n>"):
        data_sizes(model, NoSizes())
    with pytest.raises(ConfigError, match=r"takes num_classes, which"):
        data_sizes(OmegaConf.merge(model, {"in_features": 20}), NoSizes())
    assert data_sizes(OmegaConf.merge(model, {"in_features": 20, "num_classes": 3}), NoSizes()) == {}
    sized = NoSizes()
    sized.in_features, sized.num_classes = 20, 3
    assert data_sizes(model, sized) == {"in_features": 20, "num_classes": 3}
