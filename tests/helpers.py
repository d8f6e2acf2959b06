"""Helpers the tests import: the real configs composed and shrunk, IDX files written like the official ones, and a
forward-backward pass of a layer, W_p (and signed RPP's signs) built by loops, a run's CSV rows, and PhaseLine, a
callback that tells a test which phase of its life a job is in. Fixtures stay in conftest.py; this module holds plain
functions."""

import csv
import gzip
import os
import signal
import struct
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir

import rppnets.schemas  # noqa: F401  (registers the config schemas)
from rppnets.training.checkpointing import LastCheckpoint

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write `array` (uint8) in the IDX format of the official files, gzipped."""
    magic = 0x0800 | array.ndim  # 0x08: unsigned byte data
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes())


def write_fake_fashion_mnist(root: Path) -> Path:
    """A data root with FashionMNIST/raw/*.gz holding 256 training and 64 test images of 10 learnable classes."""
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
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


def permuted_weight_by_loops(p, w, dtype, signs=None):
    """W_p (m, k*n) entry by entry with Python loops from P (k, m, n) and W (m, n): W_p[i, h*n + j] = W[P[h, i, j], j],
    times signs[h, i, j] where signs (k, m, n) of +-1 are given (signed RPP)."""
    k, m, n = p.shape
    wp = torch.empty(m, k * n, dtype=dtype)
    for h in range(k):
        for i in range(m):
            for j in range(n):
                wp[i, h * n + j] = w[p[h, i, j], j] * (1 if signs is None else signs[h, i, j])
    return wp


def signs_by_loops(seed: int, layer: int, m: int, n: int, k: int) -> torch.Tensor:
    """Signed RPP's signs s (k, m, n) of +-1 from the Feistel round keys of (seed, layer), in plain Python integers,
    as rppnets.layers.permutation documents them: column c = h*n + j has the key (round 0's addend << 15) | (its
    multiplier >> 1); row i's sign is negative where the top bit of lowbias32's steps on i ^ key is set."""
    from rppnets.layers.permutation import round_keys

    keys = round_keys(seed, layer, k, n).tolist()  # [addends, multipliers] x rounds x columns
    signs = torch.empty(k, m, n)
    for h in range(k):
        for j in range(n):
            key = (keys[0][0][h * n + j] << 15) | (keys[1][0][h * n + j] >> 1)
            for i in range(m):
                x = i ^ key
                x ^= x >> 16
                x = (x * 0x7FEB352D) % 2**32
                x ^= x >> 15
                x = (x * 0x846CA68B) % 2**32
                signs[h, i, j] = -1 if x >> 31 else 1
    return signs


def epoch_rows(csv_path: Path) -> list[dict]:
    """The CSV's rows of epoch and step values, times left out (they differ between runs)."""
    with open(csv_path, newline="") as file:
        rows = [row for row in csv.DictReader(file) if row.get("epoch")]
    return [{k: v for k, v in row.items() if v and not k.startswith(("time/", "memory/"))} for row in rows]


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children, their children, ...), as SLURM's process tracking sees a job step."""
    try:
        children = [int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()]
    except FileNotFoundError:  # ended meanwhile
        return []
    return children + [grandchild for child in children for grandchild in descendants(child)]


PHASE_MARK = "job phase: "  # PhaseLine's lines: "job phase: training epoch 2"
HOLD_S = 120  # how long a held job waits for its signal before it goes on (a test that never sends one then fails)


class PhaseLine(pl.Callback):
    """Put into a job (``+callbacks.phase._target_=helpers.PhaseLine``, tests/ on PYTHONPATH): prints a line as the job
    enters each phase of its life (``job phase: training epoch 2``, ``validation epoch 2``, ``testing``, ``after
    testing``), so that a test knows where a fault landed from the output before it.

    With `hold` naming one of the training or validation phases, the job waits there the first time (the file `once`
    records it) until a stop signal has reached it, or for ever for SIGKILL: a test's fault then lands exactly there,
    with no sleep. The job's checkpoints and logged values are those of a job without this callback.
    """

    def __init__(self, hold: str | None = None, once: str | None = None):
        self.hold, self.once = hold, Path(once) if once else None

    def _enter(self, trainer: pl.Trainer, phase: str) -> None:
        print(PHASE_MARK + phase, flush=True)
        if phase != self.hold or self.once is None or self.once.exists():
            return
        self.once.touch()
        # The run's own stop handler (installed for training by LastCheckpoint) records the signal it caught.
        signals = next((c.signals for c in trainer.callbacks if isinstance(c, LastCheckpoint)), None)
        deadline = time.monotonic() + HOLD_S
        while (signals is None or signals.received is None) and time.monotonic() < deadline:
            time.sleep(0.01)

    def on_train_epoch_start(self, trainer, pl_module):
        self._enter(trainer, f"training epoch {trainer.current_epoch + 1}")

    def on_validation_start(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self._enter(trainer, f"validation epoch {trainer.current_epoch + 1}")

    def on_test_start(self, trainer, pl_module):
        self._enter(trainer, "testing")

    def on_test_end(self, trainer, pl_module):
        self._enter(trainer, "after testing")


class KillWandbService(pl.Callback):
    """Put into a job (``+callbacks.kill._target_=helpers.KillWandbService``, tests/ on PYTHONPATH): SIGKILLs W&B's
    service process (wandb-core, a child of the job) when testing ends, the first time only (the file `once`
    records it), as a node's OOM killer or a signal to the job step would: the job itself is running when it lands."""

    def __init__(self, once: str):
        self.once = Path(once)

    def on_test_end(self, trainer, pl_module):
        if self.once.exists():
            return
        killed = []
        for pid in descendants(os.getpid()):
            try:
                if "wandb-core" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            except (FileNotFoundError, ProcessLookupError):
                continue
        self.once.write_text(" ".join(map(str, killed)))
