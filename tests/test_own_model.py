"""A model of one's own by `_target_`, as the README's "Make it yours" shows: it trains, is named by its class and
gets the data set's sizes; and the debug configs run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE = '''
import torch
from torch import nn
from rppnets import RPPLinear


class TinyRPP(nn.Module):
    """A user's own network with one RPP layer inside."""

    def __init__(self, in_features: int, num_classes: int, width: int = 8, k: int = 4):
        super().__init__()
        self.hidden = RPPLinear(in_features, width, k=k)
        self.out = nn.Linear(k * width, num_classes)

    def forward(self, x):
        return self.out(torch.relu(self.hidden(x.flatten(1))))
'''


def quick(fake_root: Path) -> list[str]:
    return [f"data.root={fake_root}", "data.system_dir=null", "data.download=false", "data.verify_md5=false",
            "data.val_size=32", "data.batch_size=32", "data.eval_batch_size=64", "trainer.max_epochs=1",
            "trainer.accelerator=cpu", "~callbacks.progress_bar", "logger=csv"]


@pytest.mark.slow
def test_a_model_of_your_own_trains_and_is_named_by_its_class(fake_root, tmp_path):
    (tmp_path / "mymodels.py").write_text(MODULE)
    (tmp_path / "myconf" / "model").mkdir(parents=True)
    (tmp_path / "myconf" / "model" / "tiny.yaml").write_text("_target_: mymodels.TinyRPP\nwidth: 8\nk: 4\n")
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    run = tmp_path / "run"
    done = subprocess.run([sys.executable, "src/train.py", f"--config-dir={tmp_path / 'myconf'}", "model=tiny",
                           *quick(fake_root), f"hydra.run.dir={run}"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads((run / "results.json").read_text())
    assert results["run_name"] == "tinyrpp-s0" and results["status"] == "finished"
    # 784 * 8 weights + 32 biases of the RPP layer, 32 * 10 + 10 of the output: the sizes came from the data
    assert results["metrics"]["model/params_trainable"] == 784 * 8 + 32 + 32 * 10 + 10


@pytest.mark.slow
@pytest.mark.parametrize("debug", ["fast", "overfit", "profile"])
def test_the_debug_configs_run(debug, fake_root, tmp_path):
    overrides = [f"debug={debug}"] + (["trainer.max_epochs=3", "trainer.overfit_batches=1"] if debug == "overfit"
                                      else ["data.train_size=64"] if debug == "profile" else [])
    done = subprocess.run([sys.executable, "src/train.py", *quick(fake_root), *overrides,
                           f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads((tmp_path / "run" / "results.json").read_text())["status"] == "finished"
