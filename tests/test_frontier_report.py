"""Tests of the frontier and controls reports on a synthetic sweep, and of the controls experiment config."""

import csv
import json
from pathlib import Path

import pytest
from helpers import CONF_DIR, compose_train
from hydra.utils import instantiate
from omegaconf import OmegaConf

from rppnets.analysis.frontier_report import main, read_jobs, summarize, summary_markdown, write_report
from rppnets.layers.rpp_linear import RPPLinear


def write_job(sweep: Path, folder: str, network: str, seed: int, params: int, acc: float, loss: float,
              k: int = 100, permutation: str = "stored", status: str | None = "finished") -> None:
    job = sweep / folder
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml({"seed": seed, "model": {
        "k": k, "permutation": permutation, "seed": "${seed}"}}))
    results = {"network": network, "seed": seed, "metrics": {
        "model/params_trainable": params, "test/acc": acc, "train/loss": loss, "test/loss": 9.0}}
    if status is not None:
        results["status"] = status
    (job / "results.json").write_text(json.dumps(results))


@pytest.fixture
def frontier_sweep(tmp_path):
    sweep = tmp_path / "frontier"
    for seed, (acc, loss) in enumerate([(0.80, 0.50), (0.82, 0.40), (0.84, 0.60)]):
        write_job(sweep, f"rpp-k1-seed{seed}", "rpp", seed, 8070, acc, loss, k=1)
    for seed, (acc, loss) in enumerate([(0.85, 0.30), (0.87, 0.20)]):
        write_job(sweep, f"rpp-k10-seed{seed}", "rpp", seed, 10050, acc, loss, k=10)
    write_job(sweep, "dense-k10-seed0", "dense", 0, 9706, 0.86, 0.35, k=10)
    write_job(sweep, "lowrank-k1-seed0", "lowrank", 0, 7376, 0.79, 0.55, k=1)
    write_job(sweep, "hashed-k10-seed0", "hashed", 0, 10050, 0.10, 9.0, k=10, status="failed")
    write_job(sweep, "hashed-k10-seed1", "hashed", 1, 10050, 0.50, 1.0, k=10, status="running")
    write_job(sweep, "hashed-k10-seed2", "hashed", 2, 10050, 0.83, 0.45, k=10, status=None)  # older jobs: no status
    return sweep


def test_only_finished_jobs_count_and_k_comes_from_the_job_config(frontier_sweep):
    jobs = read_jobs(frontier_sweep)
    assert len(jobs) == 8
    assert {(job.network, job.seed) for job in jobs if job.network == "hashed"} == {("hashed", 2)}
    assert sorted({(job.network, job.k) for job in jobs}) == [
        ("dense", 10), ("hashed", 10), ("lowrank", 1), ("rpp", 1), ("rpp", 10)]


def test_summary_means_and_min_max_over_seeds(frontier_sweep):
    rows = {(row["network"], row["k"]): row for row in summarize(read_jobs(frontier_sweep))}
    assert [key for key in rows] == [("rpp", 1), ("rpp", 10), ("dense", 10), ("hashed", 10), ("lowrank", 1)]
    rpp1 = rows["rpp", 1]
    assert rpp1["seeds"] == 3 and rpp1["params_trainable"] == 8070
    assert rpp1["test_acc"] == pytest.approx(0.82) and (rpp1["test_acc_min"], rpp1["test_acc_max"]) == (0.80, 0.84)
    assert rpp1["final_train_loss"] == pytest.approx(0.50)
    assert (rpp1["final_train_loss_min"], rpp1["final_train_loss_max"]) == (0.40, 0.60)
    assert rows["hashed", 10]["seeds"] == 1 and rows["hashed", 10]["test_acc"] == 0.83


def test_report_files_hold_the_numbers(frontier_sweep, capsys):
    assert main([str(frontier_sweep)]) == 0
    report = frontier_sweep / "report"
    assert str(report) in capsys.readouterr().out
    jobs = list(csv.DictReader((report / "frontier.csv").open()))
    assert len(jobs) == 8 and jobs[0]["network"] == "rpp" and jobs[0]["k"] == "1"
    assert {row["folder"] for row in jobs} >= {"rpp-k1-seed0", "hashed-k10-seed2"}
    summary = (report / "summary.md").read_text()
    assert "| rpp | 1 | 8,070 | 0.8200 | 0.8000–0.8400 | 0.5000 | 0.4000–0.6000 | 3 |" in summary
    assert (report / "frontier.png").stat().st_size > 20_000


def test_frontier_figure_plots_means_and_bands_against_parameters_on_a_log_axis(frontier_sweep):
    from rppnets.analysis.frontier_report import frontier_figure

    figure = frontier_figure(summarize(read_jobs(frontier_sweep)))
    accuracy, loss = figure.axes
    assert accuracy.get_xscale() == "log" and loss.get_xscale() == "log"
    lines = {line.get_label(): line for line in accuracy.get_lines()}
    rpp = lines["RPP (m=10)"]
    assert list(rpp.get_xdata()) == [8070, 10050]
    assert list(rpp.get_ydata()) == pytest.approx([0.82, 0.86])
    band = accuracy.collections[0].get_paths()[0].vertices  # the fill_between polygon of RPP's line
    assert {round(y, 6) for y in band[:, 1]} >= {0.80, 0.84, 0.85, 0.87}
    assert set(band[:, 0]) == {8070, 10050}
    loss_rpp = next(line for line in loss.get_lines() if line.get_label() == "RPP (m=10)")
    assert list(loss_rpp.get_ydata()) == pytest.approx([0.50, 0.25])
    assert [line.get_label() for line in accuracy.get_lines()] == ["RPP (m=10)", "dense, same budget", "HashedNets",
                                                                    "low-rank"]


def test_controls_report_by_permutation(tmp_path, capsys):
    sweep = tmp_path / "controls"
    values = {"identity": [(0.70, 0.9), (0.72, 0.8)], "random": [(0.86, 0.3), (0.88, 0.2)],
              "stored": [(0.87, 0.25), (0.85, 0.35)]}
    for mode, seeds in values.items():
        for seed, (acc, loss) in enumerate(seeds):
            write_job(sweep, f"{mode}-seed{seed}", f"rpp_{mode}", seed, 29850, acc, loss, permutation=mode)
    assert main([str(sweep), "--by", "permutation"]) == 0
    rows = summarize(read_jobs(sweep), by="permutation")
    assert [row["permutation"] for row in rows] == ["identity", "random", "stored"]
    assert [row["test_acc"] for row in rows] == pytest.approx([0.71, 0.87, 0.86])
    assert [(row["final_train_loss_min"], row["final_train_loss_max"]) for row in rows] == [
        (0.8, 0.9), (0.2, 0.3), (0.25, 0.35)]
    report = sweep / "report"
    assert "| identity | 29,850 | 0.7100 | 0.7000–0.7200 | 0.8500 | 0.8000–0.9000 | 2 |" in (
        report / "summary.md").read_text()
    assert len(list(csv.DictReader((report / "controls.csv").open()))) == 6
    assert (report / "controls.png").stat().st_size > 10_000


def test_controls_figure_points_are_the_means_with_min_max_bars(tmp_path):
    from rppnets.analysis.frontier_report import controls_figure

    sweep = tmp_path / "controls"
    for seed, acc in enumerate((0.6, 0.8)):
        write_job(sweep, f"identity-seed{seed}", "rpp_identity", seed, 10, acc, 1.0 - acc, permutation="identity")
    write_job(sweep, "stored-seed0", "rpp_stored", 0, 10, 0.9, 0.1, permutation="stored")
    jobs = read_jobs(sweep)
    accuracy = controls_figure(summarize(jobs, "permutation"), jobs).axes[0]
    means = accuracy.get_lines()[0]
    assert list(means.get_xdata()) == [0, 1] and list(means.get_ydata()) == pytest.approx([0.7, 0.9])
    bar = accuracy.collections[0].get_segments()[0]  # identity's min-max bar
    assert bar[:, 1].tolist() == pytest.approx([0.6, 0.8])
    assert [tick.get_text() for tick in accuracy.get_xticklabels()] == ["identity\n(unpermuted)", "stored\n(Feistel)"]


def test_errors_name_the_problem(tmp_path, capsys):
    assert main([str(tmp_path / "missing")]) == 1
    assert "does not exist" in capsys.readouterr().err
    write_job(tmp_path / "sweep", "job", "rpp", 0, 10, 0.5, 0.5, status="failed")
    assert main([str(tmp_path / "sweep")]) == 1
    assert "no finished jobs" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--by", "seed"])


def test_controls_experiment_composes_each_mode(tmp_path):
    sweep = OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / "experiment" / "controls.yaml"))["hydra"]
    modes = sweep["sweeper"]["params"]["model.permutation"].split(",")
    assert modes == ["identity", "random", "stored"] and sweep["sweep"]["subdir"] == "${model.permutation}-seed${seed}"
    for mode in modes:
        cfg = compose_train(["experiment=controls", f"model.permutation={mode}"], output_dir=tmp_path)
        assert (cfg.network, cfg.group, cfg.skip_finished) == (f"rpp_{mode}", "controls", True)
        model = cfg.model
        assert (model.kind, model.width, model.k, model.bias, model.permutation) == ("rpp", 10, 100, "full", mode)
        layers = [layer for layer in instantiate(model) if isinstance(layer, RPPLinear)]
        assert [layer.permutation for layer in layers] == [mode, mode]


def test_signed_rpp_is_its_own_line_with_its_label_and_colour(frontier_sweep):
    from matplotlib.colors import to_hex

    from rppnets.analysis.frontier_report import frontier_figure

    for seed, (acc, loss) in enumerate([(0.81, 0.45), (0.83, 0.35)]):
        write_job(frontier_sweep, f"rpp_signed-k1-seed{seed}", "rpp_signed", seed, 8070, acc, loss, k=1)
    write_job(frontier_sweep, "rpp_signed-k10-seed0", "rpp_signed", 0, 10050, 0.88, 0.15, k=10)
    rows = summarize(read_jobs(frontier_sweep))
    assert [(row["network"], row["k"]) for row in rows][:4] == [("rpp", 1), ("rpp", 10), ("rpp_signed", 1),
                                                                 ("rpp_signed", 10)]
    accuracy, loss = frontier_figure(rows).axes
    lines = {line.get_label(): line for line in accuracy.get_lines()}
    assert list(lines) == ["RPP (m=10)", "signed RPP (m=10)", "dense, same budget", "HashedNets", "low-rank"]
    signed = lines["signed RPP (m=10)"]
    assert list(signed.get_xdata()) == [8070, 10050] and list(signed.get_ydata()) == pytest.approx([0.82, 0.88])
    colours = {label: to_hex(line.get_color()) for label, line in lines.items()}
    assert len(set(colours.values())) == 5  # each method its own colour
    assert colours["RPP (m=10)"] == to_hex("C0") and colours["signed RPP (m=10)"] == to_hex("C4")
    # a method keeps its colour whichever others the sweep holds
    only = frontier_figure([row for row in rows if row["network"] in ("rpp_signed", "hashed")]).axes[0]
    assert {line.get_label(): to_hex(line.get_color()) for line in only.get_lines()} == {
        "signed RPP (m=10)": to_hex("C4"), "HashedNets": to_hex("C2")}
    summary = summary_markdown(rows, "k")
    assert "| rpp_signed | 1 | 8,070 | 0.8200 | 0.8100–0.8300 | 0.4000 | 0.3500–0.4500 | 2 |" in summary


def write_curve(job: Path, rows: list[tuple[int, float, float]]) -> None:
    """A job's CSV as CSVLogger writes it: a step row, then each epoch's training loss and validation accuracy."""
    lines = ["epoch,step,train/loss_step,train/loss_epoch,val/acc"] + ["0,0,2.0,,"]
    lines += [f"{epoch},{epoch},,{loss},{acc}" for epoch, loss, acc in rows]
    (job / "csv").mkdir()
    (job / "csv" / "metrics.csv").write_text("\n".join(lines) + "\n")


def test_curves_per_epoch_are_means_and_ranges_over_seeds_per_k(frontier_sweep):
    write_curve(frontier_sweep / "rpp-k10-seed0", [(0, 0.6, 0.80), (1, 0.4, 0.84)])
    write_curve(frontier_sweep / "rpp-k10-seed1", [(0, 0.8, 0.82), (1, 0.2, 0.86)])
    write_curve(frontier_sweep / "dense-k10-seed0", [(0, 0.9, 0.70)])
    report = write_report(frontier_sweep)
    rows = list(csv.DictReader((report / "curves.csv").open()))
    assert [(r["network"], r["k"], r["epoch"], r["seeds"]) for r in rows] == [
        ("rpp", "10", "0", "2"), ("rpp", "10", "1", "2"), ("dense", "10", "0", "1")]
    assert float(rows[1]["train_loss"]) == pytest.approx(0.3) and (rows[1]["train_loss_min"],
                                                                   rows[1]["train_loss_max"]) == ("0.2", "0.4")
    assert float(rows[0]["val_acc"]) == pytest.approx(0.81)

    from rppnets.analysis.frontier_report import curve_rows, curves_figure, read_job_curves

    jobs = read_jobs(frontier_sweep)
    figure = curves_figure(curve_rows(jobs, read_job_curves(frontier_sweep, jobs)))
    loss, acc = figure.axes  # one k with curves: a column of two panels
    rpp = next(line for line in loss.get_lines() if line.get_label() == "RPP (m=10)")
    assert list(rpp.get_xdata()) == [0, 1] and list(rpp.get_ydata()) == pytest.approx([0.7, 0.3])
    assert "k = 10" in loss.get_title() and "Validation accuracy" in acc.get_title()
    assert (report / "curves.png").stat().st_size > 10_000
