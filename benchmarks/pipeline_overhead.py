"""Pipeline overhead: one training epoch through Lightning + our data module + logging vs a bare PyTorch loop.

    python benchmarks/pipeline_overhead.py [--repeats 3] [--widths 1000 10]

Both sides train the same MLP on the same in-memory Fashion-MNIST tensors (batch 128, Adam 1e-3, no validation).
Runs alternate (bare, pipeline, bare, ...) so drift on a noisy machine hits both; the ratio of medians is printed.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

from rppnets.training import train  # noqa: E402


def config(width: int, depth: int, out: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=[
            f"model.width={width}", f"model.depth={depth}", "trainer.max_epochs=1", "trainer.accelerator=cpu",
            "data.val_size=0", f"paths.output_dir={out}",
        ])


def pipeline_epoch(cfg) -> float:
    """The pipeline's own clock (EpochTimer): training epoch start to end, every Lightning step hook included."""
    return train(cfg)["time/epoch_s"]


def bare_epoch(cfg) -> float:
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup()
    torch.manual_seed(0)
    net = instantiate(cfg.model)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x, y = dm.x_train, dm.y_train
    start = time.perf_counter()
    order = torch.randperm(len(x))
    for i in range(0, len(x), 128):
        idx = order[i : i + 128]
        loss = F.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--widths", type=int, nargs="+", default=[1000, 10])
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch 128, one epoch of 60,000 images")
    print(f"{'network':<16}{'bare s':>10}{'pipeline s':>12}{'pipeline/bare':>15}")
    for width in args.widths:
        bare, pipe = [], []
        for repeat in range(args.repeats):
            with tempfile.TemporaryDirectory() as out:
                cfg = config(width, 2, out)
                bare.append(bare_epoch(cfg))
                pipe.append(pipeline_epoch(cfg))
        b, p = statistics.median(bare), statistics.median(pipe)
        print(f"{'dense-w' + str(width):<16}{b:>10.2f}{p:>12.2f}{p / b:>15.3f}")


if __name__ == "__main__":
    main()
