"""A model of one's own by `_target_`, as the README's "Make it yours" shows: it trains, is named by its class and
gets the data set's sizes; and the debug configs run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rppnets.analysis import report

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
def test_a_sweep_over_a_model_of_your_own_names_each_job_by_what_it_varies(fake_root, tmp_path):
    """As "Make it yours" says: a sweep of one's own model over model.k, then the report. Each job is named by its
    class and the swept value (the W&B run takes the name), and the report tells the jobs apart."""
    (tmp_path / "mymodels.py").write_text(MODULE)
    (tmp_path / "myconf" / "model").mkdir(parents=True)
    (tmp_path / "myconf" / "model" / "tiny.yaml").write_text("_target_: mymodels.TinyRPP\nwidth: 8\nk: 4\n")
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    sweep = tmp_path / "sweep"
    done = subprocess.run([sys.executable, "src/train.py", "-m", f"--config-dir={tmp_path / 'myconf'}", "model=tiny",
                           "model.k=2,4", *quick(fake_root), f"hydra.sweep.dir={sweep}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    results = {r["run_name"]: r for r in (json.loads(p.read_text()) for p in sweep.glob("*/results.json"))}
    assert set(results) == {"tinyrpp-k2-s0", "tinyrpp-k4-s0"}
    assert {r["network"] for r in results.values()} == {"tinyrpp-k2", "tinyrpp-k4"}
    # 784 * 8 weights + 32 biases of the RPP layer, 32 * 10 + 10 of the output: the sizes came from the data
    assert results["tinyrpp-k4-s0"]["metrics"]["model/params_trainable"] == 784 * 8 + 32 + 32 * 10 + 10
    report.main([str(sweep), "--wandb-mode", "disabled"])  # raised "two jobs for network=tinyrpp seed=0" before
    summary = (sweep / "report" / "summary.md").read_text()
    assert "tinyrpp-k2" in summary and "tinyrpp-k4" in summary


@pytest.mark.slow
@pytest.mark.parametrize("debug", ["fast", "overfit", "profile"])
def test_the_debug_configs_run(debug, fake_root, tmp_path):
    overrides = [f"debug={debug}"] + (["trainer.max_epochs=3", "trainer.overfit_batches=1"] if debug == "overfit"
                                      else ["data.train_size=64"] if debug == "profile" else [])
    done = subprocess.run([sys.executable, "src/train.py", *quick(fake_root), *overrides,
                           f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads((tmp_path / "run" / "results.json").read_text())["status"] == "finished"
