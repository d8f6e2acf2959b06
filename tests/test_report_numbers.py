"""The figure's numbers: curves, min-max bands over every seed, and epochs, read back from what the report drew.

The synthetic seeds are chosen so that no single seed is the lowest or highest at every epoch: a band or a mean
made from fewer seeds than the sweep has gives other numbers.
"""

import csv
import json
from pathlib import Path

import pytest
from matplotlib.collections import PolyCollection

from rppnets.analysis import report
from rppnets.analysis.report_data import LEGEND, curve_rows, final_train_loss, load_sweep, loss_band, summarize, summary_row
from rppnets.records.jobs import Job, read_job

# network -> seed -> training loss per epoch (epochs 0, 1, 2 as Lightning numbers them)
LOSSES = {
    "rpp": {0: [2.0, 1.5, 1.2], 1: [2.4, 1.1, 1.3], 2: [1.9, 1.6, 0.9]},
    "softmax": {0: [3.0, 2.5, 2.0]},
}
TEST_ACC = {("rpp", 0): 0.80, ("rpp", 1): 0.86, ("rpp", 2): 0.83, ("softmax", 0): 0.70}
RPP_MEAN = [(2.0 + 2.4 + 1.9) / 3, (1.5 + 1.1 + 1.6) / 3, (1.2 + 1.3 + 0.9) / 3]
RPP_LOW, RPP_HIGH = [1.9, 1.1, 0.9], [2.4, 1.6, 1.3]


def write_job(folder: Path, network: str, seed: int, losses: list[float]) -> None:
    """A finished job as training leaves it: Lightning's CSV (step, validation, epoch and test rows) and results."""
    (folder / "csv").mkdir(parents=True)
    header = ["epoch", "step", "train/loss_step", "val/loss", "val/acc", "train/loss_epoch", "test/acc"]
    rows, step = [], 0
    for epoch, loss in enumerate(losses):
        step += 5
        rows += [{"epoch": epoch, "step": step - 1, "train/loss_step": 7.0},
                 {"epoch": epoch, "step": step - 1, "val/loss": loss + 0.25, "val/acc": 0.5 + epoch / 10},
                 {"epoch": epoch, "step": step - 1, "train/loss_epoch": loss}]
    rows.append({"epoch": len(losses), "step": step, "test/acc": TEST_ACC[network, seed]})  # epoch == max_epochs
    with open(folder / "csv" / "metrics.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    metrics = {"test/acc": TEST_ACC[network, seed], "train/loss": 99.0, "model/params_trainable": 100 + seed}
    (folder / "results.json").write_text(json.dumps({
        "status": "finished", "network": network, "seed": seed, "group": "g", "experiment_hash": "e",
        "csv": "csv/metrics.csv", "metrics": metrics}))


@pytest.fixture()
def sweep(tmp_path) -> Path:
    for network, seeds in LOSSES.items():
        for seed, losses in seeds.items():
            write_job(tmp_path / f"{network}-seed{seed}", network, seed, losses)
    return tmp_path


def finished(sweep: Path, network: str) -> list[Job]:
    return [job for job in load_sweep(sweep)[0] if job.network == network]


def test_curves_keep_lightnings_epochs_and_every_seeds_values(sweep):
    jobs = load_sweep(sweep)[0]
    rows = [(row["network"], row["seed"], row["epoch"], row["train_loss"]) for row in curve_rows(jobs)]
    assert rows == [(network, seed, epoch, loss) for network, seeds in LOSSES.items()
                    for seed, losses in seeds.items() for epoch, loss in enumerate(losses)]
    rpp0 = finished(sweep, "rpp")[0].curve
    assert list(rpp0) == [0, 1, 2]  # the test row (epoch 3) is no epoch
    assert rpp0[1] == {"train_loss": 1.5, "val_loss": 1.75, "val_acc": 0.6}


def test_band_spans_every_seed_and_the_mean_is_over_every_seed(sweep):
    epochs, mean, low, high = loss_band(finished(sweep, "rpp"))
    assert epochs == [0, 1, 2]
    assert mean == pytest.approx(RPP_MEAN) and low == RPP_LOW and high == RPP_HIGH


def test_band_leaves_out_a_seed_where_it_has_no_value():
    jobs = [Job("rpp", 0, curve={0: {"train_loss": 2.0}, 1: {"train_loss": 1.0}, 2: {"val_loss": 5.0}}),
            Job("rpp", 1, curve={0: {"train_loss": 4.0}, 2: {"train_loss": 3.0}})]
    assert loss_band(jobs) == ([0, 1, 2], [3.0, 1.0, 3.0], [2.0, 1.0, 3.0], [4.0, 1.0, 3.0])
    assert loss_band([]) == ([], [], [], [])


def drawn(sweep: Path, monkeypatch) -> "matplotlib.figure.Figure":
    """The training-loss figure exactly as the report draws it (saving is skipped)."""
    figures = []
    monkeypatch.setattr(report, "_save", lambda figure, png, svg: figures.append(figure))
    report.build_report(sweep, wandb_mode="disabled")
    (figure,) = figures
    return figure


def test_the_figure_draws_the_mean_over_seeds_at_lightnings_epochs(sweep, monkeypatch):
    (axes,) = drawn(sweep, monkeypatch).axes
    lines = {line.get_label(): line for line in axes.get_lines()}
    assert set(lines) == {LEGEND["rpp"], LEGEND["softmax"]}
    rpp, softmax = lines[LEGEND["rpp"]], lines[LEGEND["softmax"]]
    assert list(rpp.get_xdata()) == [0, 1, 2] and list(rpp.get_ydata()) == pytest.approx(RPP_MEAN)
    assert list(softmax.get_xdata()) == [0, 1, 2] and list(softmax.get_ydata()) == LOSSES["softmax"][0]
    assert axes.get_xlim() == (0, 2) and axes.get_xlabel() == "Epochs"


def test_the_figures_band_is_the_min_and_max_over_every_seed(sweep, monkeypatch):
    (axes,) = drawn(sweep, monkeypatch).axes
    bands = [c for c in axes.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 1  # rpp only: softmax has one seed, nothing to span
    vertices = bands[0].get_paths()[0].vertices
    for epoch in range(3):
        ys = vertices[vertices[:, 0] == epoch][:, 1]
        assert (min(ys), max(ys)) == pytest.approx((RPP_LOW[epoch], RPP_HIGH[epoch])), epoch
    assert sorted(set(vertices[:, 0])) == [0, 1, 2]


def test_summary_means_and_ranges_are_over_every_seed(sweep):
    rows = {row["network"]: row for row in summarize(load_sweep(sweep)[0])}
    rpp = rows["rpp"]
    assert rpp["seeds"] == rpp["jobs"] == 3
    assert rpp["final_train_loss"] == pytest.approx((1.2 + 1.3 + 0.9) / 3)  # the curve's last epoch, not train/loss
    assert rpp["test_acc"] == pytest.approx((0.80 + 0.86 + 0.83) / 3)
    assert (rpp["test_acc_min"], rpp["test_acc_max"]) == (0.80, 0.86)
    assert rpp["params_trainable"] == 100  # the first seed's: the count is fixed by the configuration
    assert rows["softmax"]["final_train_loss"] == 2.0 and rows["softmax"]["seeds"] == 1


def test_final_loss_falls_back_to_the_results_when_the_curve_has_none():
    assert final_train_loss(Job("rpp", 0, metrics={"train/loss": 0.7})) == 0.7
    assert final_train_loss(Job("rpp", 0, curve={0: {"train_loss": 1.0}, 1: {"train_loss": 0.5}},
                                metrics={"train/loss": 0.7})) == 0.5


def test_summary_row_takes_means_over_seeds_maxima_for_memory_and_keeps_the_job_counts():
    jobs = [
        Job("rpp", 0, curve={0: {"train_loss": 2.0, "epoch_s": 1.0}, 1: {"train_loss": 1.0, "epoch_s": 3.0}},
            metrics={"test/acc": 0.8, "time/wall_s": 10.0, "time/epoch_s": 50.0, "model/params_trainable": 7,
                     "model/index_bytes": 80, "memory/state_bytes": 5, "memory/step_peak_bytes": 9,
                     "memory/data_bytes": 100, "memory/peak_rss_bytes": 1000}),
        Job("rpp", 1, curve={0: {"train_loss": 4.0, "epoch_s": 5.0}},
            metrics={"test/acc": 0.9, "time/wall_s": 20.0, "model/params_trainable": 7, "model/index_bytes": 80,
                     "memory/state_bytes": 6, "memory/step_peak_bytes": 8, "memory/data_bytes": 101,
                     "memory/cuda_max_allocated_bytes": 900, "memory/peak_rss_bytes": None}),
        Job("rpp", 2, state="failed", reason="x", metrics={"test/acc": 0.1, "memory/data_bytes": 10**9}),
        Job("rpp", 3, state="unfinished", reason="no checkpoint"),
        Job("rpp", 4, state="missing"),
    ]
    row = summary_row("rpp", jobs)
    assert (row["seeds"], row["jobs"], row["failed"], row["unfinished"], row["missing"]) == (2, 5, 1, 1, 1)
    assert row["final_train_loss"] == (1.0 + 4.0) / 2 and row["test_acc"] == pytest.approx(0.85)
    assert (row["test_acc_min"], row["test_acc_max"]) == (0.8, 0.9)
    assert row["epoch_s"] == (2.0 + 5.0) / 2  # each job's mean over its epochs, then over seeds
    assert row["wall_s"] == 15.0
    assert (row["params_trainable"], row["index_bytes"]) == (7, 80)
    assert (row["state_bytes"], row["step_peak_bytes"], row["data_bytes"]) == (6, 9, 101)  # the failed job's out
    assert (row["peak_memory_bytes"], row["memory_kind"]) == (1000, "cuda_max_allocated+peak_rss")


def test_epoch_time_falls_back_to_the_runs_own_number_without_a_curve():
    jobs = [Job("rpp", 0, metrics={"time/epoch_s": 4.0}), Job("rpp", 1, metrics={"time/epoch_s": 6.0})]
    assert summary_row("rpp", jobs)["epoch_s"] == 5.0


def test_a_network_with_no_finished_job_keeps_a_row_of_counts_and_no_numbers():
    jobs = [Job("dense_wide", 0, state="failed", reason="diverged", metrics={"test/acc": 0.1}),
            Job("dense_wide", 1, state="missing")]
    row = summary_row("dense_wide", jobs)
    assert (row["seeds"], row["jobs"], row["failed"], row["missing"]) == (0, 2, 1, 1)
    numbers = ["params_trainable", "index_bytes", "state_bytes", "step_peak_bytes", "data_bytes", "final_train_loss",
               "test_acc", "test_acc_min", "test_acc_max", "peak_memory_bytes", "memory_kind", "epoch_s", "wall_s"]
    assert {key: row[key] for key in numbers} == dict.fromkeys(numbers)
    assert summarize(jobs) == [row]


def test_a_jobs_folder_gives_its_state_reason_group_and_metrics_file(tmp_path):
    write_job(tmp_path / "done", "rpp", 0, [1.0, 0.5])
    results = json.loads((tmp_path / "done" / "results.json").read_text())
    job = read_job(tmp_path / "done")
    assert (job.state, job.group, job.experiment_hash, job.metrics["test/acc"]) == ("finished", "g", "e", 0.80)
    assert job.curve[1]["train_loss"] == 0.5

    (tmp_path / "done" / "csv").rename(tmp_path / "done" / "logs")  # results.json names where its CSV is
    (tmp_path / "done" / "results.json").write_text(json.dumps(results | {"csv": "logs/metrics.csv"}))
    assert read_job(tmp_path / "done").curve[1]["train_loss"] == 0.5
    (tmp_path / "done" / "logs").rename(tmp_path / "done" / "csv")
    del results["csv"]  # an older results.json: the default place
    (tmp_path / "done" / "results.json").write_text(json.dumps(results))
    assert read_job(tmp_path / "done").curve[1]["train_loss"] == 0.5
    (tmp_path / "done" / "results.json").write_text(json.dumps(results | {"csv": "gone.csv"}))
    gone = read_job(tmp_path / "done")  # named, counted as unfinished: the report and the sweep's end carry on
    assert gone.state == "unfinished" and "gone.csv cannot be read (FileNotFoundError" in gone.reason

    (tmp_path / "failed").mkdir()
    (tmp_path / "failed" / "results.json").write_text(json.dumps({"status": "failed", "network": "rpp", "seed": 1}))
    job = read_job(tmp_path / "failed")
    assert (job.state, job.reason, job.describe()) == ("failed", "no reason recorded", "failed: no reason recorded")

    (tmp_path / "killed" / ".hydra").mkdir(parents=True)
    job = read_job(tmp_path / "killed")
    assert (job.state, job.reason, job.network, job.seed) == ("unfinished", "no checkpoint", "killed", None)
    (tmp_path / "killed" / "checkpoints").mkdir()
    (tmp_path / "killed" / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert read_job(tmp_path / "killed").describe() == "unfinished (last.ckpt kept)"


def test_load_jobs_gives_the_finished_jobs_and_names_a_sweep_with_none(sweep, tmp_path):
    from rppnets.analysis.report_data import NoFinishedJobs, load_jobs

    jobs = load_jobs(sweep)
    assert sorted((job.network, job.seed) for job in jobs) == sorted(
        (network, seed) for network, seeds in LOSSES.items() for seed in seeds)
    assert all(job.finished for job in jobs)
    stopped = tmp_path / "stopped" / "rpp-s0"
    stopped.mkdir(parents=True)
    (stopped / "results.json").write_text(json.dumps({"status": "stopped", "network": "rpp", "seed": 0}))
    with pytest.raises(NoFinishedJobs, match=f"^no job of {tmp_path / 'stopped'} finished$"):
        load_jobs(tmp_path / "stopped")


def test_the_title_names_every_data_set_epoch_count_and_size_of_the_finished_jobs_only():
    from rppnets.analysis.report_data import data_name, run_settings

    def job(state="finished", **settings):
        return Job("rpp", 0, state=state, settings=settings)

    jobs = [job(data="MNIST", max_epochs=5, train_size=5000), job(data="Fashion-MNIST", max_epochs=2, train_size=500),
            job(state="unfinished", data="KMNIST", max_epochs=3, train_size=50)]
    assert data_name(jobs) == "Fashion-MNIST / MNIST"
    assert run_settings(jobs) == "2/5 epochs, 500/5,000 training images"
    assert run_settings([job(state="failed", max_epochs=3)]) is None


def test_a_memory_csv_reads_back_as_numbers_in_legend_order(tmp_path):
    from rppnets.analysis.report_data import read_memory_csv

    columns = ["network", "permutation", "state_bytes", "step_peak_bytes", "batch_size", "device", "loss"]
    rows = [["mine", "", 5, 6, 32, "cpu", ""], ["softmax", "", 7, 8, "", "cpu", "1.5"],
            ["rpp", "generated", 1, 2, 128, "cpu\r\n(2 threads)", "2.25"], ["rpp", "stored", 3, "", 128, "cpu", "2.5"]]
    with open(tmp_path / "memory.csv", "w", newline="") as file:
        csv.writer(file).writerows([columns, *rows])
    read = read_memory_csv(tmp_path / "memory.csv")
    assert [(r["network"], r["permutation"], r["state_bytes"], r["step_peak_bytes"], r["batch_size"], r["loss"])
            for r in read] == [("rpp", "generated", 1, 2, 128, 2.25), ("rpp", "stored", 3, None, 128, 2.5),
                               ("softmax", "", 7, 8, None, 1.5), ("mine", "", 5, 6, 32, None)]
    assert read[0]["device"] == "cpu\r\n(2 threads)"  # a quoted line break is the field's own
    assert read_memory_csv(tmp_path / "none.csv") == []


def test_memory_points_leave_out_a_network_without_a_finished_seed_and_go_on():
    from rppnets.analysis.report_data import memory_points

    def row(network, seeds):
        return {"network": network, "seeds": seeds, "final_train_loss": 0.5, "test_acc": 0.8, "state_bytes": 10,
                "step_peak_bytes": 20}

    points = memory_points([row("rpp", 0), row("dense_wide", 3)], [])
    assert [(p["network"], p["state_bytes"], p["step_peak_bytes"]) for p in points] == [("dense_wide", 10, 20)]


def test_jobs_sort_by_legend_then_seed_with_an_unknown_seed_last():
    from rppnets.analysis.report_data import job_order

    jobs = [Job("mine", 0), Job("rpp", None, state="missing"), Job("rpp", 2), Job("dense_wide", 0), Job("rpp", 1),
            Job("rpp", 0), Job("aaa", 1)]
    assert [(job.network, job.seed) for job in sorted(jobs, key=job_order)] == [
        ("rpp", 0), ("rpp", 1), ("rpp", 2), ("rpp", None), ("dense_wide", 0), ("aaa", 1), ("mine", 0)]


def test_a_sweep_that_mixes_configurations_or_repeats_a_job_is_refused_by_name(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=f"^sweep folder {missing} does not exist$"):
        load_sweep(missing)
    for network, seed in (("rpp", 0), ("rpp", 1)):
        write_job(tmp_path / f"{network}-seed{seed}", network, seed, LOSSES[network][seed])
    results = tmp_path / "rpp-seed1" / "results.json"
    for attribute, other in (("experiment_hash", "f"), ("group", "h")):
        original = results.read_text()
        results.write_text(json.dumps(json.loads(original) | {attribute: other}))
        expected = (f"{tmp_path} mixes 2 values of {attribute}: {'e' if attribute == 'experiment_hash' else 'g'} "
                    f"(1 jobs, e.g. {tmp_path / 'rpp-seed0'}); {other} (1 jobs, e.g. {tmp_path / 'rpp-seed1'}). Report "
                    "one configuration at a time (point the report at one sweep).")
        with pytest.raises(ValueError) as refused:
            load_sweep(tmp_path)
        assert str(refused.value) == expected
        results.write_text(original)
    write_job(tmp_path / "again" / "rpp-seed1", "rpp", 1, LOSSES["rpp"][1])
    with pytest.raises(ValueError) as refused:
        load_sweep(tmp_path)
    assert str(refused.value) in [f"two jobs for network=rpp seed=1: {a} and {b}" for a, b in (
        (tmp_path / "rpp-seed1", tmp_path / "again" / "rpp-seed1"), (tmp_path / "again" / "rpp-seed1", tmp_path / "rpp-seed1"))]


def multirun_yaml(sweep: Path, task: list[str], **config) -> None:
    """multirun.yaml as Hydra saves it for the basic sweeper: the config's own values and the command's overrides."""
    hydra = {"sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper", "params": None},
             "overrides": {"task": task}}
    sweep.mkdir(parents=True, exist_ok=True)
    (sweep / "multirun.yaml").write_text(json.dumps(config | {"hydra": hydra}))


def test_the_expected_jobs_take_the_configs_own_network_or_seed_where_the_grid_does_not_sweep_it(tmp_path):
    from rppnets.analysis.report_data import expected_jobs

    multirun_yaml(tmp_path / "seeds", ["seed=0,1"], network="rpp", seed=0)
    assert expected_jobs(tmp_path / "seeds") == ([("rpp", 0), ("rpp", 1)], None)
    multirun_yaml(tmp_path / "networks", ["network=rpp,softmax"], network="dense_wide", seed=3)
    assert expected_jobs(tmp_path / "networks") == ([("rpp", 3), ("softmax", 3)], None)
    multirun_yaml(tmp_path / "no-seed", ["network=rpp,softmax"], network="rpp", seed=None)
    pairs, note = expected_jobs(tmp_path / "no-seed")
    assert pairs is None and note == (f"expected jobs unknown: the grid in {tmp_path / 'no-seed' / 'multirun.yaml'} "
                                      "does not name a network and a seed per job")
    multirun_yaml(tmp_path / "null-network", ["network=null", "seed=0,1"], network="rpp", seed=0)
    assert expected_jobs(tmp_path / "null-network")[0] is None  # network=null on the command line: none named
