"""Tests the report on synthetic sweeps written in the training pipeline's output format."""

import csv
import json
from pathlib import Path

import pytest

from rppnets.analysis.report import build_report, summary_markdown
from rppnets.analysis.report import main as report_main
from rppnets.analysis.report_data import LEGEND, expected_jobs, load_sweep, memory_points, read_memory_csv, title

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


def state_bytes(network: str) -> int:
    return 1_000_000 * (rank(network) + 1) + 234_567


def write_job(root: Path, network: str, seed: int, experiment_hash: str = "3f2a9c1b", with_val: bool = True,
              status: str | None = None, error: str | None = None, loss_shift: float = 0.0) -> Path:
    """One job folder as the training pipeline leaves it: results.json + a Lightning CSVLogger file.

    status None writes results.json as older versions did (no "status": a finished job).
    """
    folder = root / f"{network}-{seed}" if root.name != f"{network}-seed{seed}" else root
    (folder / "csv").mkdir(parents=True)
    rows, step = [], 0
    for epoch in range(EPOCHS):
        for _ in range(2):  # step rows
            step += 1
            rows.append({"epoch": epoch, "step": step, "train/loss_step": 9.9})
        if with_val:  # validation ends first, in its own row
            rows.append({"epoch": epoch, "step": step, "val/loss": 0.5 + epoch, "val/acc": 0.7 + 0.01 * epoch})
        rows.append({"epoch": epoch, "step": step, "train/loss_epoch": train_loss(network, seed, epoch) + loss_shift,
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
               "test/acc": expected_test_acc(network, seed) + loss_shift,
               "memory/state_bytes": state_bytes(network), "memory/step_peak_bytes": 2 * state_bytes(network),
               "memory/data_bytes": 5_000_000 + seed,
               memory_key: 2**20 * (100 + seed), "time/epoch_s": 1.0 + seed, "time/wall_s": 3.0 + seed}
    if with_val:
        metrics.update({"val/loss": 0.3, "val/acc": 0.88})
    results = {"network": network, "seed": seed, "run_name": f"{network}-s{seed}", "group": "fashion_mnist_plot",
               "experiment_hash": experiment_hash, "csv": "csv/metrics.csv", "metrics": metrics}
    if status is not None:
        results["status"] = status
    if error is not None:
        results["error"] = error
    (folder / "results.json").write_text(json.dumps(results))
    return folder


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """One full report (W&B offline) on a sweep of five networks x two seeds, with nested job folders."""
    sweep = tmp_path_factory.mktemp("sweep")
    for number, (network, seed) in enumerate((n, s) for n in NETWORKS for s in SEEDS):
        write_hydra(write_job(sweep / str(number), network, seed, with_val=network != "softmax"), network, seed,
                    data_name="KMNIST")
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
        assert int(row["state_bytes"]) == state_bytes(network) and int(row["data_bytes"]) == 5_000_001
        assert int(row["step_peak_bytes"]) == 2 * state_bytes(network)
        assert (int(row["jobs"]), int(row["failed"]), int(row["unfinished"]), int(row["missing"])) == (2, 0, 0, 0)
    markdown = (out / "summary.md").read_text()
    table = markdown.split("\n\n")[0]
    assert table.count("\n") == 1 + len(NETWORKS)
    assert "Permuted, width=m*k, \\|params\\|∝m" in table  # the legend's '|' must not split cells
    rpp_row = table.splitlines()[2]
    assert "| 1.23 | 2.47 | 5.00 | 105.91 (peak_rss) |" in rpp_row  # in MB
    assert "## Jobs" in markdown and "10 jobs: 10 finished, 0 failed, 0 unfinished, 0 missing" in markdown


def test_figure_files_are_written(report):
    out, _ = report
    for name in ["figure.png", "figure.svg"]:
        assert (out / name).stat().st_size > 1000
    assert (out / "figure.png").read_bytes().startswith(b"\x89PNG")
    svg = (out / "figure.svg").read_text()
    assert "Training loss on KMNIST. m=10" in svg and "Epochs" in svg  # the data set of the jobs' configs


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
    with pytest.raises(FileNotFoundError, match="no results.json or .hydra/"):
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


def write_hydra(folder: Path, network: str, seed: int, max_epochs: int = 30, train_size: int | None = None,
                data_name: str | None = "Fashion-MNIST",
                data_target: str = "rppnets.data.FashionMNISTDataModule") -> Path:
    """The .hydra/ folder Hydra writes into every job folder of a multirun (data_name None: a config from before the
    data configs had a name)."""
    hydra = folder / ".hydra"
    hydra.mkdir(parents=True, exist_ok=True)
    data = {"_target_": data_target, "train_size": train_size} | ({"name": data_name} if data_name else {})
    config = {"seed": seed, "network": network, "trainer": {"max_epochs": max_epochs},
              "data": data, "model": {"kind": "rpp", "permutation": "stored"}}
    (hydra / "config.yaml").write_text(json.dumps(config))  # JSON is YAML
    (hydra / "overrides.yaml").write_text(f"- network={network}\n- seed={seed}\n")
    return folder


def write_multirun(sweep: Path, params: dict, task: list[str], sweeper: str = "BasicSweeper") -> None:
    """multirun.yaml as Hydra saves it at the start of a sweep (the parts the report reads)."""
    config = {"seed": 0, "network": None, "hydra": {
        "sweeper": {"_target_": f"hydra._internal.core_plugins.basic_sweeper.{sweeper}", "params": params},
        "overrides": {"task": task, "hydra": [f"hydra.sweep.dir={sweep}"]}}}
    (sweep / "multirun.yaml").write_text(json.dumps(config))


@pytest.fixture()
def faulty_sweep(tmp_path):
    """rpp, dense_wide and softmax x seeds 0-2: rpp all finished (one an old results.json without status);
    dense_wide 0 finished (after a failed attempt set aside), 1 failed, 2 killed after a checkpoint;
    softmax 0 finished, 1 and 2 never started."""
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    write_multirun(sweep, {"network": "rpp,rpp_nobias,dense_wide"},
                   ["experiment=fashion_mnist_plot", "network=rpp,dense_wide,softmax", "seed=range(0,3)"])
    for seed in range(3):
        job = write_job(write_hydra(sweep / f"rpp-seed{seed}", "rpp", seed), "rpp", seed,
                        status=None if seed == 0 else "finished")
        assert job == sweep / f"rpp-seed{seed}"
    dense = write_job(write_hydra(sweep / "dense_wide-seed0", "dense_wide", 0), "dense_wide", 0, status="finished")
    write_job(dense / "replaced-20261129-101500", "dense_wide", 0, status="failed", error="earlier attempt")
    # A diverged job: its CSV and metrics hold values that would move the means if it were counted.
    write_job(write_hydra(sweep / "dense_wide-seed1", "dense_wide", 1), "dense_wide", 1, status="failed",
              error="FloatingPointError: non-finite loss at epoch 1, step 40", loss_shift=5.0)
    killed = write_hydra(sweep / "dense_wide-seed2", "dense_wide", 2)
    (killed / "checkpoints").mkdir()
    (killed / "checkpoints" / "last.ckpt").write_bytes(b"checkpoint")
    write_job(write_hydra(sweep / "softmax-seed0", "softmax", 0), "softmax", 0, status="finished")
    return sweep


def test_every_expected_job_is_listed_with_its_state(faulty_sweep, capsys):
    rows = build_report(faulty_sweep, wandb_mode="disabled")
    console = capsys.readouterr().out
    states = [
        ("rpp", 0, "finished"), ("rpp", 1, "finished"), ("rpp", 2, "finished"),
        ("dense_wide", 0, "finished"),
        ("dense_wide", 1, "failed: FloatingPointError: non-finite loss at epoch 1, step 40"),
        ("dense_wide", 2, "unfinished (last.ckpt kept)"),
        ("softmax", 0, "finished"), ("softmax", 1, "missing"), ("softmax", 2, "missing"),
    ]
    markdown = (faulty_sweep / "report" / "summary.md").read_text()
    assert "9 jobs: 5 finished, 1 failed, 1 unfinished, 2 missing" in console
    assert "9 jobs: 5 finished, 1 failed, 1 unfinished, 2 missing" in markdown
    for network, seed, state in states:
        folder = f"{network}-seed{seed}" if state != "missing" else ""
        assert f"| {network} | {seed} | {state} | {folder} |" in markdown
        assert f"  {network} seed {seed}: {state}" in console
    assert "earlier attempt" not in markdown  # a set-aside attempt inside a job folder is not a job

    by_network = {row["network"]: row for row in rows}
    assert [row["network"] for row in rows] == ["rpp", "dense_wide", "softmax"]
    dense = by_network["dense_wide"]
    assert (dense["seeds"], dense["jobs"], dense["failed"], dense["unfinished"], dense["missing"]) == (1, 3, 1, 1, 0)
    # Only the finished seed enters the means.
    assert dense["final_train_loss"] == train_loss("dense_wide", 0, EPOCHS - 1)
    assert dense["test_acc"] == expected_test_acc("dense_wide", 0)
    assert (by_network["softmax"]["seeds"], by_network["softmax"]["missing"]) == (1, 2)
    assert by_network["rpp"]["seeds"] == 3
    _, curves = read_csv(faulty_sweep / "report" / "curves.csv")
    assert {(row["network"], row["seed"]) for row in curves} == {
        ("rpp", "0"), ("rpp", "1"), ("rpp", "2"), ("dense_wide", "0"), ("softmax", "0")}
    assert "| Non-permuted, width=m*k, \\|params\\|∝m*k | 1 of 3 |" in markdown

    svg = (faulty_sweep / "report" / "figure.svg").read_text()
    assert f"{LEGEND['dense_wide']} (1 of 3 seeds; 1 failed, 1 unfinished)" in svg
    assert f"{LEGEND['softmax']} (1 of 3 seeds; 2 missing)" in svg
    assert f"{LEGEND['rpp']} (" not in svg  # all of its seeds finished: the plain legend entry


def test_a_sweep_where_no_job_finished_exits_non_zero(tmp_path, capsys):
    write_multirun(tmp_path, {}, ["network=rpp", "seed=0,1"])
    write_job(write_hydra(tmp_path / "rpp-seed0", "rpp", 0), "rpp", 0, status="failed", error="ConfigError: bad")
    with pytest.raises(SystemExit) as exit_info:
        report_main([str(tmp_path), "--wandb-mode", "disabled"])
    assert exit_info.value.code == 1
    captured = capsys.readouterr()
    assert "rpp seed 0: failed: ConfigError: bad" in captured.out and "rpp seed 1: missing" in captured.out
    assert "no job of" in captured.err and "finished" in captured.err
    assert not (tmp_path / "report").exists()


def test_expected_jobs_follow_hydras_grid(tmp_path):
    # The command line's network list replaces the sweeper's; seeds from range(); other overrides fixed.
    write_multirun(tmp_path, {"network": "rpp,softmax,dense_wide"},
                   ["network=rpp,softmax", "seed=range(1,3)", "trainer.max_epochs=2", "~callbacks.progress_bar"])
    pairs, note = expected_jobs(tmp_path)
    assert pairs == [("rpp", 1), ("rpp", 2), ("softmax", 1), ("softmax", 2)] and note is None
    write_multirun(tmp_path, {}, ["network=rpp", "model.k=10,100"])  # one seed (0, the config's), two jobs
    pairs, note = expected_jobs(tmp_path)
    assert pairs is None and "varies more than network and seed" in note
    write_multirun(tmp_path, {"network": "rpp"}, [], sweeper="OptunaSweeper")
    assert expected_jobs(tmp_path)[0] is None
    (tmp_path / "multirun.yaml").unlink()
    assert expected_jobs(tmp_path) == (None, None)  # a single run, or results copied without Hydra's files


def test_title_marks_a_run_shorter_than_the_full_reproduction(tmp_path):
    quick, full = tmp_path / "quick", tmp_path / "full"
    for network in ["rpp", "softmax"]:
        write_job(write_hydra(quick / f"{network}-seed0", network, 0, max_epochs=2, train_size=5000), network, 0)
        write_job(write_hydra(full / f"{network}-seed0", network, 0), network, 0)
    build_report(quick, wandb_mode="disabled")
    svg = (quick / "report" / "figure.svg").read_text()
    assert "(2 epochs, 5,000 training images)" in svg
    full_title = "Training loss on Fashion-MNIST. m=10, k=100, 2 relu hidden layers, w/ softmax output layer."
    assert title(load_sweep(full)[0]) == full_title
    assert title(load_sweep(quick)[0]) == full_title + "\n(2 epochs, 5,000 training images)"


def test_titles_name_the_data_set_of_the_jobs_configs(tmp_path):
    def sweep(name: str, **data) -> list:
        for network in ["rpp", "dense_wide"]:
            write_job(write_hydra(tmp_path / name / f"{network}-seed0", network, 0, **data), network, 0)
        return load_sweep(tmp_path / name)[0]

    assert title(sweep("mnist", data_name="MNIST", data_target="rppnets.data.IDXDataModule")).startswith(
        "Training loss on MNIST. m=10")
    assert title(sweep("cifar", data_name="CIFAR-10", data_target="rppnets.data.TorchvisionDataModule")).startswith(
        "Training loss on CIFAR-10. m=10")
    # a job from before data.name: Fashion-MNIST, the only data module there was
    assert title(sweep("old", data_name=None)).startswith("Training loss on Fashion-MNIST. m=10")
    write_job(tmp_path / "bare", "rpp", 0)  # results without Hydra's config: the data set is not known
    assert title(load_sweep(tmp_path / "bare")[0]).startswith("Training loss on a data set not recorded. m=10")
    build_report(tmp_path / "mnist", wandb_mode="disabled")  # the memory figure, from the runs' own numbers
    memory_svg = (tmp_path / "mnist" / "report" / "memory.svg").read_text()
    assert "Memory of training against quality on MNIST, one point per network" in memory_svg
    assert "Fashion" not in (tmp_path / "mnist" / "report" / "figure.svg").read_text() + memory_svg


def test_memory_figure_and_tables_use_every_mode_measured(tmp_path):
    for network in ["rpp", "dense_wide", "softmax"]:
        write_job(tmp_path / "jobs", network, 0)
    columns = ["network", "permutation", "state_bytes", "step_peak_bytes", "batch_size", "device", "loss"]
    measured = [["rpp", "stored", 4_045_624, 9_500_648, 128, "cpu", 2.23216],
                ["rpp", "shared", 4_045_624, 9_500_648, 128, "cpu", 2.22674],
                ["rpp", "generated", 605_624, 13_500_648, 128, "cpu", 2.23216],
                ["dense_wide", "", 28_736_184, 8_004_016, 128, "cpu", 1.87666]]
    with open(tmp_path / "memory.csv", "w", newline="") as file:
        csv.writer(file).writerows([columns, *measured])
    rows = build_report(tmp_path, wandb_mode="disabled")
    points = memory_points(rows, read_memory_csv(tmp_path / "memory.csv"))
    loss = {row["network"]: row["final_train_loss"] for row in rows}
    # RPP in three modes and dense from memory.csv; softmax, not measured there, from its run's own numbers.
    assert [(p["network"], p["permutation"], p["state_bytes"], p["step_peak_bytes"], p["final_train_loss"])
            for p in points] == [
        ("rpp", "stored", 4_045_624, 9_500_648, loss["rpp"]), ("rpp", "shared", 4_045_624, 9_500_648, loss["rpp"]),
        ("rpp", "generated", 605_624, 13_500_648, loss["rpp"]),
        ("dense_wide", "", 28_736_184, 8_004_016, loss["dense_wide"]),
        ("softmax", "", state_bytes("softmax"), 2 * state_bytes("softmax"), loss["softmax"])]
    out = tmp_path / "report"
    assert (out / "memory.png").read_bytes().startswith(b"\x89PNG")
    svg = (out / "memory.svg").read_text()
    assert f"{LEGEND['rpp']} (P generated)" in svg and "Peak of a step above its start" in svg
    markdown = (out / "summary.md").read_text()
    assert "## Memory by way of holding P" in markdown
    assert f"| {LEGEND['rpp'].replace('|', chr(92) + '|')} | generated | 0.61 | 13.50 | 2.23216 |" in markdown


def test_no_memory_figure_without_memory_numbers(tmp_path, capsys):
    folder = write_job(tmp_path, "rpp", 0)
    results = json.loads((folder / "results.json").read_text())
    del results["metrics"]["memory/state_bytes"], results["metrics"]["memory/step_peak_bytes"]
    (folder / "results.json").write_text(json.dumps(results))  # a run from before memory was measured
    build_report(tmp_path, wandb_mode="disabled")
    assert not (tmp_path / "report" / "memory.png").exists()
    assert "no memory figure" in capsys.readouterr().out
