"""Tests the report on synthetic sweeps written in the training pipeline's output format."""

import csv
import json
from pathlib import Path

import pytest

from rppnets.report import build_report, summary_markdown
from rppnets.report_data import LEGEND

NETWORKS = list(LEGEND)
SEEDS = [0, 1]
EPOCHS = 3
CSV_HEADER = ["epoch", "step", "test/acc", "test/loss", "time/epoch_s", "time/samples_per_s", "train/acc",
              "train/loss_epoch", "train/loss_step", "val/acc", "val/loss"]


def rank(network: str) -> int:
    return NETWORKS.index(network) if network in NETWORKS else len(NETWORKS)


def train_loss(network: str, seed: int, epoch: int) -> float:
    return 2.0 - 0.25 * rank(network) + 1.0 / (epoch + 1) + 0.01 * seed


def expected_test_acc(network: str, seed: int) -> float:
    return 0.8 + 0.01 * rank(network) + 0.002 * seed


def write_job(root: Path, network: str, seed: int, experiment_hash: str = "3f2a9c1b", with_val: bool = True) -> None:
    """One job folder as the training pipeline leaves it: results.json + a Lightning CSVLogger file."""
    folder = root / f"{network}-{seed}"
    (folder / "csv").mkdir(parents=True)
    rows, step = [], 0
    for epoch in range(EPOCHS):
        for _ in range(2):  # step rows
            step += 1
            rows.append({"epoch": epoch, "step": step, "train/loss_step": 9.9})
        if with_val:  # validation ends first, in its own row
            rows.append({"epoch": epoch, "step": step, "val/loss": 0.5 + epoch, "val/acc": 0.7 + 0.01 * epoch})
        rows.append({"epoch": epoch, "step": step, "train/loss_epoch": train_loss(network, seed, epoch),
                     "train/acc": 0.6, "time/epoch_s": 1.0 + seed + epoch, "time/samples_per_s": 100.0})
    # Lightning logs the test row with epoch == max_epochs; it must not become an extra epoch.
    rows.append({"epoch": EPOCHS, "step": step, "test/loss": 0.4, "test/acc": expected_test_acc(network, seed)})
    with open(folder / "csv" / "metrics.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=CSV_HEADER)
        writer.writeheader()
        writer.writerows(rows)
    # dense_wide stands in for a GPU job, which reports CUDA memory instead of the process RSS.
    memory_key = "memory/cuda_max_allocated_bytes" if network == "dense_wide" else "memory/peak_rss_bytes"
    metrics = {"model/params_trainable": 1000 + rank(network), "model/index_elements": 10,
               "model/index_bytes": 80, "train/loss": 0.2, "test/loss": 0.4,
               "test/acc": expected_test_acc(network, seed),
               memory_key: 2**20 * (100 + seed), "time/epoch_s": 1.0 + seed, "time/wall_s": 3.0 + seed}
    if with_val:
        metrics.update({"val/loss": 0.3, "val/acc": 0.88})
    (folder / "results.json").write_text(json.dumps({
        "network": network, "seed": seed, "run_name": f"{network}-s{seed}", "group": "fashion_mnist_plot",
        "experiment_hash": experiment_hash, "csv": "csv/metrics.csv", "metrics": metrics}))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """One full report (W&B offline) on a sweep of five networks x two seeds, with nested job folders."""
    sweep = tmp_path_factory.mktemp("sweep")
    for number, (network, seed) in enumerate((n, s) for n in NETWORKS for s in SEEDS):
        write_job(sweep / str(number), network, seed, with_val=network != "softmax")
    out = sweep / "report"
    rows = build_report(sweep, wandb_mode="offline")
    return out, rows


def read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as file:
        reader = csv.DictReader(file)
        return reader.fieldnames, list(reader)


def test_curves_csv_has_one_row_per_network_seed_epoch(report):
    out, _ = report
    header, rows = read_csv(out / "curves.csv")
    assert header == ["network", "seed", "epoch", "train_loss", "val_loss", "val_acc"]
    assert len(rows) == len(NETWORKS) * len(SEEDS) * EPOCHS
    assert [row["network"] for row in rows[::len(SEEDS) * EPOCHS]] == NETWORKS
    for row in rows:
        network, seed, epoch = row["network"], int(row["seed"]), int(row["epoch"])
        assert float(row["train_loss"]) == train_loss(network, seed, epoch)
        if network == "softmax":  # no validation split: empty cells
            assert row["val_loss"] == row["val_acc"] == ""
        else:
            assert float(row["val_loss"]) == 0.5 + epoch
            assert float(row["val_acc"]) == pytest.approx(0.7 + 0.01 * epoch)


def test_summary_has_one_row_per_network_with_means(report):
    out, returned = report
    _, rows = read_csv(out / "summary.csv")
    assert [row["network"] for row in rows] == NETWORKS
    assert [row["legend"] for row in rows] == list(LEGEND.values())
    assert [row["network"] for row in returned] == NETWORKS
    for row in rows:
        network = row["network"]
        assert int(row["seeds"]) == 2
        assert int(row["params_trainable"]) == 1000 + rank(network)
        assert float(row["final_train_loss"]) == pytest.approx(train_loss(network, 0, EPOCHS - 1) + 0.005)
        assert float(row["test_acc"]) == pytest.approx(expected_test_acc(network, 0) + 0.001)
        assert float(row["test_acc_min"]) == pytest.approx(expected_test_acc(network, 0))
        assert float(row["test_acc_max"]) == pytest.approx(expected_test_acc(network, 1))
        assert int(row["peak_memory_bytes"]) == 2**20 * 101
        assert row["memory_kind"] == ("cuda_max_allocated" if network == "dense_wide" else "peak_rss")
        assert float(row["epoch_s"]) == 2.5 and float(row["wall_s"]) == 3.5  # the mean over epochs, then seeds
    markdown = (out / "summary.md").read_text()
    assert markdown.count("\n") == 2 + len(NETWORKS)
    assert "Permuted, width=m*k, \\|params\\|∝m" in markdown  # the legend's '|' must not split cells


def test_figure_files_are_written(report):
    out, _ = report
    for name in ["figure.png", "figure.svg"]:
        assert (out / name).stat().st_size > 1000
    assert (out / "figure.png").read_bytes().startswith(b"\x89PNG")
    svg = (out / "figure.svg").read_text()
    assert "Training loss on Fashion MNIST" in svg and "Epochs" in svg


def test_offline_wandb_run_holds_the_report_keys(report):
    out, _ = report
    run_files = list(out.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(run_files) == 1
    data = run_files[0].read_bytes()
    for key in [b"report/figure", b"report/summary", b"report/train_loss", b"report-fashion_mnist_plot"]:
        assert key in data


def test_mixed_experiment_hashes_are_refused(tmp_path):
    write_job(tmp_path / "a", "rpp", 0, experiment_hash="aaaa1111")
    write_job(tmp_path / "b", "softmax", 0, experiment_hash="bbbb2222")
    with pytest.raises(ValueError, match="experiment_hash") as error:
        build_report(tmp_path, wandb_mode="disabled")
    assert "aaaa1111" in str(error.value) and "bbbb2222" in str(error.value)
    assert not (tmp_path / "report").exists()


def test_empty_sweep_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="no results.json"):
        build_report(tmp_path, wandb_mode="disabled")


def test_unknown_network_is_labelled_by_its_key_after_the_legend(tmp_path):
    write_job(tmp_path / "x", "mystery", 0)
    write_job(tmp_path / "y", "rpp", 0)
    rows = build_report(tmp_path, tmp_path / "out", wandb_mode="disabled")
    assert [(row["network"], row["legend"]) for row in rows] == [("rpp", LEGEND["rpp"]), ("mystery", "mystery")]
    assert "–" not in summary_markdown(rows)  # one seed: no range
    assert (tmp_path / "out" / "figure.png").stat().st_size > 0


def test_report_files_survive_a_wandb_that_does_not_start(tmp_path, monkeypatch, capsys):
    wandb = pytest.importorskip("wandb")

    def refuse(*args, **kwargs):
        raise RuntimeError("No API key configured")

    monkeypatch.setattr(wandb, "init", refuse)
    write_job(tmp_path / "a", "rpp", 0)
    build_report(tmp_path, wandb_mode="online")
    assert "W&B did not start (No API key configured)" in capsys.readouterr().err
    assert (tmp_path / "report" / "summary.csv").is_file() and (tmp_path / "report" / "figure.svg").is_file()
