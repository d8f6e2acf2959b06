"""Pipeline overhead: one training epoch through Lightning + our data module + logging vs a bare PyTorch loop.

    python benchmarks/pipeline_overhead.py [--repeats 3] [--networks dense_wide rpp dense_narrow] [--device cuda]

Both sides train the same network (conf/network/) on the same in-memory Fashion-MNIST tensors (batch 128,
Adam 1e-3, no validation) on one device; the pipeline side is `train(cfg)` with the default configs (W&B
offline, CSV, progress bar, checkpoints). Runs alternate (bare, pipeline, bare, ...) so drift hits both. Printed
per network: the ratio of median epoch times, and the ratio of median step intervals (time between consecutive
batch ends), which ignores the stalls a shared virtual machine throws into any run. On CUDA the epoch ends
with a synchronisation; step intervals there are those of the host, which queues the work.
"""

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

import rppnets.schemas  # noqa: F401  (registers the config schemas)
from hydra.utils import instantiate

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

from rppnets.training.pipeline import train  # noqa: E402  (after the W&B settings above)


class StepClock(pl.Callback):
    """Timestamps of the pipeline's batch ends (added to the run's callbacks by this script)."""

    times: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        StepClock.times.append(time.perf_counter())


def config(network: str, device: str, out: str):
    accelerator = "gpu" if device == "cuda" else device
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=[
            f"network={network}", "trainer.max_epochs=1", f"trainer.accelerator={accelerator}", "data.val_size=0",
            f"paths.output_dir={out}", f"+callbacks.step_clock._target_={__name__}.StepClock",
        ])


def median_step(times: list[float]) -> float:
    return statistics.median(b - a for a, b in zip(times, times[1:]))


def pipeline_epoch(cfg) -> tuple[float, float]:
    """The pipeline's own epoch clock (EpochTimer: every Lightning step hook included) and its median step."""
    StepClock.times = []
    epoch = train(cfg)["time/epoch_s"]
    return epoch, median_step(StepClock.times)


def bare_epoch(cfg, device: str) -> tuple[float, float]:
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup()
    torch.manual_seed(0)
    net = instantiate(cfg.model).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x, y = dm.x_train.to(device), dm.y_train.to(device)
    start = time.perf_counter()
    times = []
    order = torch.randperm(len(x))
    for i in range(0, len(x), 128):
        idx = order[i : i + 128]
        loss = F.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter())
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, median_step(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--networks", nargs="+", default=["dense_wide", "rpp", "dense_narrow"],
                        help="names in conf/network/")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    rows = []
    for network in args.networks:
        bare, pipe = [], []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as out:
                cfg = config(network, args.device, out)
                bare.append(bare_epoch(cfg, args.device))
                pipe.append(pipeline_epoch(cfg))
        (b_epoch, b_step), (p_epoch, p_step) = ([statistics.median(v) for v in zip(*runs)] for runs in (bare, pipe))
        rows.append(f"{network:<14}{b_epoch:>9.2f}{p_epoch:>12.2f}{p_epoch / b_epoch:>9.3f}"
                    f"{b_step * 1e3:>14.2f}{p_step * 1e3:>14.2f}{p_step / b_step:>9.3f}")
    print(f"\ntorch {torch.__version__}, {args.device}, {torch.get_num_threads()} threads, batch 128, one epoch of 60,000 images, "
          f"medians of {args.repeats} interleaved runs")
    print(f"{'network':<14}{'bare s':>9}{'pipeline s':>12}{'ratio':>9}{'bare step ms':>14}{'pipe step ms':>14}{'ratio':>9}")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
