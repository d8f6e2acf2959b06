"""The jobs of a sweep as their folders record them (rppnets.records.jobs): each job's state, reason, settings and
curve, which folders are jobs, and the grid the sweep expected. The sweep's end and the reports count from these."""

import csv
import json

import pytest
from omegaconf import OmegaConf

from rppnets.records.jobs import Job, job_folders, read_curve, read_job, read_settings, state_counts, sweep_grid


def write_config(folder, config: dict):
    (folder / ".hydra").mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(config), folder / ".hydra" / "config.yaml")


def write_csv(path, rows, header):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)


def test_a_curve_merges_each_epochs_rows_and_skips_the_others(tmp_path):
    header = ["epoch", "step", "train/loss_step", "train/loss_epoch", "val/loss", "val/acc", "time/epoch_s", "test/acc"]
    write_csv(tmp_path / "m.csv", [
        {"epoch": "0", "step": "4", "train/loss_step": "9"},  # a step row: no epoch value
        {"epoch": "0", "step": "4", "val/loss": "1.5", "val/acc": "0.5"},
        {"epoch": "0.0", "step": "4", "train/loss_epoch": "2.0", "time/epoch_s": "3"},
        {"epoch": "2", "step": "9", "val/loss": "1.25"},
        {"epoch": "1", "step": "9", "train/loss_epoch": "1.0"},
        {"epoch": "", "step": "9", "val/acc": "0.75"},  # no epoch: left out
        {"epoch": "3", "step": "10", "test/acc": "0.8"},  # the test row
    ], header)
    curve = read_curve(tmp_path / "m.csv")
    assert curve == {0: {"val_loss": 1.5, "val_acc": 0.5, "train_loss": 2.0, "epoch_s": 3.0},
                     1: {"train_loss": 1.0}, 2: {"val_loss": 1.25}}
    assert list(curve) == [0, 1, 2]


def test_settings_come_from_the_jobs_hydra_config(tmp_path):
    assert read_settings(tmp_path) == {}
    write_config(tmp_path, {"network": "rpp", "seed": 3, "trainer": {"max_epochs": 30},
                            "data": {"train_size": 1000, "name": "MNIST"},
                            "model": {"kind": "rpp", "permutation": "generated"}})
    assert read_settings(tmp_path) == {"network": "rpp", "seed": 3, "max_epochs": 30, "train_size": 1000,
                                       "data": "MNIST", "permutation": "generated"}
    write_config(tmp_path, {"network": "dense", "seed": 0, "model": {"kind": "dense", "permutation": "x"},
                            "data": {"_target_": "rppnets.data.FashionMNISTDataModule"}})
    assert read_settings(tmp_path) == {"network": "dense", "seed": 0, "max_epochs": None, "train_size": None,
                                       "data": "Fashion-MNIST"}
    (tmp_path / ".hydra" / "config.yaml").write_text("network: [unclosed\n")
    assert read_settings(tmp_path) == {}


def finished(folder, **results):
    write_csv(folder / "csv" / "metrics.csv", [{"epoch": "0", "train/loss_epoch": "1.5"}],
              ["epoch", "train/loss_epoch"])
    (folder / "results.json").write_text(json.dumps({"status": "finished", "network": "rpp", "seed": 1, "group": "g",
                                                     "experiment_hash": "e", "metrics": {"test/acc": 0.5}} | results))


def test_a_finished_job_has_its_results_and_curve(tmp_path):
    finished(tmp_path / "j")
    write_config(tmp_path / "j", {"network": "other", "seed": 7})
    job = read_job(tmp_path / "j")
    assert (job.network, job.seed, job.state, job.folder, job.reason) == ("rpp", 1, "finished", tmp_path / "j", None)
    assert (job.group, job.experiment_hash, job.metrics) == ("g", "e", {"test/acc": 0.5})
    assert job.curve == {0: {"train_loss": 1.5}} and job.settings["seed"] == 7 and job.finished
    assert job.describe() == "finished"


def test_a_job_is_named_by_its_results_then_its_config_then_its_folder(tmp_path):
    finished(tmp_path / "a", network=None, seed=None)
    write_config(tmp_path / "a", {"network": "dense", "seed": 4})
    job = read_job(tmp_path / "a")
    assert (job.network, job.seed) == ("dense", None)  # a seed recorded as null stays null
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    del results["seed"], results["network"]
    (tmp_path / "a" / "results.json").write_text(json.dumps(results))
    assert (read_job(tmp_path / "a").network, read_job(tmp_path / "a").seed) == ("dense", 4)
    finished(tmp_path / "b", network="")
    assert read_job(tmp_path / "b").network == "b"


def test_a_failed_job_keeps_its_error_and_metrics(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({"status": "failed", "error": "DivergenceError: nan",
                                                       "metrics": None, "group": "g"}))
    job = read_job(tmp_path)
    assert (job.state, job.reason, job.metrics, job.group) == ("failed", "DivergenceError: nan", {}, "g")
    assert job.describe() == "failed: DivergenceError: nan" and not job.finished


def test_an_unfinished_job_says_what_it_left(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({"status": "stopped", "error": "stopped by SIGTERM",
                                                       "metrics": {"x": 1}, "group": "g"}))
    job = read_job(tmp_path)
    assert (job.state, job.reason, job.metrics, job.group) == ("unfinished", "stopped by SIGTERM; no checkpoint", {},
                                                               None)
    assert job.describe() == "unfinished (stopped by SIGTERM; no checkpoint)"
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_text("")
    (tmp_path / "results.json").write_text('{"status": "finished"')  # damaged
    job = read_job(tmp_path)
    assert job.state == "unfinished" and job.reason.startswith(f"{tmp_path / 'results.json'} is damaged (")
    assert job.reason.endswith("; rerun the job to rebuild it; last.ckpt kept")
    (tmp_path / "results.json").unlink()
    assert read_job(tmp_path).reason == "last.ckpt kept"


def test_a_finished_job_whose_csv_cannot_be_read_is_unfinished(tmp_path):
    finished(tmp_path, csv="elsewhere/metrics.csv")
    job = read_job(tmp_path)
    assert job.state == "unfinished" and job.metrics == {}
    assert job.reason.startswith(f"{tmp_path / 'elsewhere' / 'metrics.csv'} cannot be read (FileNotFoundError: ")
    assert job.reason.endswith("; no checkpoint")
    finished_again = json.loads((tmp_path / "results.json").read_text())
    del finished_again["csv"]
    (tmp_path / "results.json").write_text(json.dumps(finished_again))
    (tmp_path / "csv" / "metrics.csv").write_text("epoch,train/loss_epoch\n0,not a number\n")
    assert read_job(tmp_path).reason.startswith(f"{tmp_path / 'csv' / 'metrics.csv'} cannot be read (ValueError: ")


def test_job_folders_are_those_with_hydra_or_results_but_not_inside_another(tmp_path):
    for name in ("a/.hydra", "b/c/.hydra", "a/replaced-1/.hydra", "d"):
        (tmp_path / name).mkdir(parents=True)
    (tmp_path / "d" / "results.json").write_text("{}")
    (tmp_path / "a" / "replaced-1" / "results.json").write_text("{}")
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / ".hydra").write_text("not a folder")
    assert job_folders(tmp_path) == [tmp_path / "a", tmp_path / "b" / "c", tmp_path / "d"]


def write_multirun(sweep, sweeper="hydra._internal.core_plugins.basic_sweeper.BasicSweeper", params=None, task=()):
    sweep.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create({"hydra": {"sweeper": {"_target_": sweeper, "params": params},
                                               "overrides": {"task": list(task)}}}), sweep / "multirun.yaml")


def test_the_grid_is_the_sweepers_params_then_the_command_lines_overrides(tmp_path):
    assert sweep_grid(tmp_path) == (None, None)
    write_multirun(tmp_path, params={"network": "rpp,dense", "seed": "range(0,2)"},
                   task=["seed=0,1,2", "trainer.max_epochs=3"])
    assert sweep_grid(tmp_path) == ({"network": ["rpp", "dense"], "seed": ["0", "1", "2"],
                                     "trainer.max_epochs": ["3"]}, None)
    write_multirun(tmp_path, params=None, task=["seed=range(0,3)"])
    assert sweep_grid(tmp_path) == ({"seed": ["0", "1", "2"]}, None)


@pytest.mark.parametrize("sweeper, name", [("hydra_plugins.optuna.OptunaSweeper", "hydra_plugins.optuna.OptunaSweeper"),
                                           ("", "the sweeper")])
def test_a_sweeper_without_a_fixed_grid_is_named(tmp_path, sweeper, name):
    write_multirun(tmp_path, sweeper=sweeper, params={"seed": "0,1"})
    assert sweep_grid(tmp_path) == (None, f"expected jobs unknown: {name} does not sweep a fixed grid")


def test_states_are_counted_in_order():
    jobs = [Job("a", 0), Job("a", 1, state="failed"), Job("b", 0, state="missing"), Job("b", 1, state="missing")]
    assert state_counts(jobs) == {"finished": 1, "failed": 1, "unfinished": 0, "missing": 2}
    assert list(state_counts([])) == ["finished", "failed", "unfinished", "missing"]
    assert Job("a", 0, state="missing").describe() == "missing"
