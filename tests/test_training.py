"""End to end: short runs of each model kind on small files, what they log, and bad input stopping early."""

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import compose_train
from rppnets.training.pipeline import ConfigError, run_hash, train

ROOT = Path(__file__).resolve().parents[1]
RUN_KEYS = ("model/params_trainable", "model/params_dense_equivalent", "model/index_elements", "model/index_bytes",
            "memory/peak_rss_bytes")
EPOCH_KEYS = ("train/loss_epoch", "train/acc", "val/loss", "val/acc", "time/epoch_s", "time/samples_per_s")
STEP_KEYS = ("train/loss_step",)
TEST_KEYS = ("test/loss", "test/acc")


def run(tmp_path, fake_root, *overrides):
    cfg = compose_train(["trainer.log_every_n_steps=1", *overrides], output_dir=tmp_path, fake_root=fake_root)
    return cfg, train(cfg)


def read_when_flushed(path: Path, marker: bytes, timeout: float = 60) -> bytes:
    """The file's bytes once `marker` is in them: W&B's service process may still be writing after finish()."""
    deadline = time.monotonic() + timeout
    while marker not in (content := path.read_bytes()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return content


def csv_columns(path: Path) -> dict[str, list[str]]:
    rows = list(csv.DictReader(path.open()))
    return {key: [row[key] for row in rows if row[key]] for key in rows[0]}


@pytest.mark.slow
@pytest.mark.parametrize("model", ["dense", "softmax", "rpp"])
def test_one_epoch_of_each_model_logs_everything(model, tmp_path, fake_root):
    overrides = [f"model={model}"] + (["model.k=4"] if model == "rpp" else ["model.width=16"])
    cfg, metrics = run(tmp_path, fake_root, *overrides)

    for key in RUN_KEYS + EPOCH_KEYS + TEST_KEYS:
        assert key in metrics, key
    assert 0 <= metrics["test/acc"] <= 1 and metrics["train/loss"] > 0
    columns = csv_columns(tmp_path / "csv" / "metrics.csv")
    for key in RUN_KEYS + EPOCH_KEYS + STEP_KEYS + TEST_KEYS:
        assert columns.get(key), f"{key} missing from metrics.csv"
    assert len(columns["train/loss_step"]) == 7  # 224 training images in batches of 32

    results = json.loads((tmp_path / "results.json").read_text())
    assert results["run_name"] == cfg.run_name and results["metrics"]["test/acc"] == metrics["test/acc"]
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()

    # W&B offline: one run in the run folder; its log holds the metric names and the resolved config.
    (wandb_file,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    logged = read_when_flushed(wandb_file, b"test/acc")
    for key in RUN_KEYS + EPOCH_KEYS + TEST_KEYS + ("train/loss_step",):
        assert key.encode() in logged, key
    assert cfg.run_name.encode() in logged and b"rppnets.models.MLP" in logged  # the resolved config


@pytest.mark.slow
def test_same_seed_same_result(tmp_path, fake_root):
    _, first = run(tmp_path / "a", fake_root, "model.width=16", "logger=csv")
    torch.rand(100)  # a fresh process starts from another random state: the seed alone must decide
    _, second = run(tmp_path / "b", fake_root, "model.width=16", "logger=csv")
    _, other = run(tmp_path / "c", fake_root, "model.width=16", "logger=csv", "seed=1")
    assert first["train/loss_epoch"] == second["train/loss_epoch"] and first["test/acc"] == second["test/acc"]
    assert first["train/loss_epoch"] != other["train/loss_epoch"]


@pytest.mark.slow
def test_compiled_network_trains_like_the_eager_one(tmp_path, fake_root):
    from torch._dynamo.utils import counters

    _, eager = run(tmp_path / "eager", fake_root, "model=rpp", "model.k=4", "logger=csv")
    counters.clear()
    _, compiled = run(tmp_path / "compiled", fake_root, "model=rpp", "model.k=4", "logger=csv", "compile=default")
    assert counters["stats"]["unique_graphs"] >= 1  # dynamo did compile the network
    assert compiled["train/loss_epoch"] == pytest.approx(eager["train/loss_epoch"], rel=1e-4)
    assert compiled["test/loss"] == pytest.approx(eager["test/loss"], rel=1e-4)

    def state_keys(folder):
        return set(torch.load(folder / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"])
    assert state_keys(tmp_path / "compiled") == state_keys(tmp_path / "eager")  # resumable by either


def test_finished_job_is_not_run_again(tmp_path, fake_root):
    results = {"run_name": "x", "config_hash": None, "metrics": {"test/acc": 0.5}}
    cfg = compose_train(["skip_finished=true", "logger=csv"], output_dir=tmp_path, fake_root=fake_root)
    results["config_hash"] = run_hash(cfg)
    (tmp_path / "results.json").write_text(json.dumps(results))
    assert train(cfg) == {"test/acc": 0.5}
    assert not (tmp_path / "csv").exists()


@pytest.mark.parametrize("override,message", [
    ("model.width=0", "model.width=0 is invalid; allowed: an integer >= 1"),
    ("model.depth=-1", "model.depth=-1 is invalid; allowed: an integer >= 0"),
    ("trainer.max_epochs=0", "trainer.max_epochs=0 is invalid; allowed: an integer >= 1"),
    ("model.kind=conv", "model.kind='conv' is invalid; allowed: 'dense', 'rpp', "),
    ("model=rpp model.k=0", "k=0"),
    ("model=rpp model.permutation=feistel", "permutation='feistel'"),
    ("data.val_size=-5", "data.val_size=-5 is invalid"),
    ("compile=fast", "compile='fast' is invalid; allowed: null .eager., 'default', 'reduce-overhead', 'max-autotune'"),
    ("compile=true", "compile='True' is invalid"),
])
def test_bad_values_stop_before_training(override, message, tmp_path, fake_root):
    cfg = compose_train(override.split(), output_dir=tmp_path, fake_root=fake_root)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        train(cfg)
    assert not (tmp_path / "csv").exists() and not (tmp_path / "wandb").exists()


def test_data_root_that_is_a_file_is_rejected(tmp_path, fake_root):
    (tmp_path / "not_a_folder").write_text("")
    cfg = compose_train([f"data.root={tmp_path / 'not_a_folder'}"], output_dir=tmp_path / "run")
    with pytest.raises(ConfigError, match="data.root=.*not_a_folder.* allowed: a folder"):
        train(cfg)


@pytest.mark.parametrize("args,message", [
    (["model=transformer"], "Could not find 'model/transformer'"),
    (["trainer.max_epochs=0"], "Invalid config: trainer.max_epochs=0"),
])
def test_command_line_rejects_bad_input_with_exit_2(args, message, tmp_path):
    result = subprocess.run([sys.executable, "src/train.py", f"hydra.run.dir={tmp_path}", *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2  # bad input, a lookup error of Hydra's as much as our own checks
    assert message in result.stderr + result.stdout
