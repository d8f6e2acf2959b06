"""A run's logged history (rppnets.training.history): every logger call kept in order, written as Lightning's CSV,
restored from a checkpoint and replayed to fresh loggers. A slip here loses or duplicates rows of a resumed run."""

import csv
import json

import torch

from rppnets.training.history import RunHistory, replay


def read(path):
    with open(path, newline="") as file:
        return list(csv.reader(file))


def test_every_call_is_kept_with_its_step_and_written_as_lightnings_csv(tmp_path):
    history = RunHistory(tmp_path, identity={"config_hash": "abc", "run_name": "r"})
    assert (history.name, history.version, history.log_dir) == ("csv", "", str(tmp_path / "csv"))
    assert history.csv_path == tmp_path / "csv" / "metrics.csv" and history.experiment is history
    history.log_hyperparams({"lr": 0.1})  # the config lives elsewhere: nothing written
    assert not (tmp_path / "csv").exists()
    history.log_metrics({"train/loss_step": torch.tensor(2.5), "epoch": 0}, step=4)
    history.log_metrics({"val/acc": 0.75})  # no step: the call's number
    assert history.rows == [{"train/loss_step": 2.5, "epoch": 0, "step": 4}, {"val/acc": 0.75, "step": 1}]
    assert isinstance(history.rows[0]["train/loss_step"], float)
    history.save()
    assert read(history.csv_path) == [["epoch", "step", "train/loss_step", "val/acc"], ["0", "4", "2.5", ""],
                                      ["", "1", "", "0.75"]]
    assert json.loads((tmp_path / "csv" / "run.json").read_text()) == {"config_hash": "abc", "run_name": "r"}
    assert (tmp_path / "csv" / "run.json").read_text().endswith('"r"\n}\n')
    assert sorted(p.name for p in (tmp_path / "csv").iterdir()) == ["metrics.csv", "run.json"]


def test_a_save_with_nothing_new_leaves_the_csv_alone_and_the_identity_is_written_once(tmp_path):
    history = RunHistory(tmp_path, name="log", identity={"run_name": "first"})
    history.log_metrics({"a": 1})
    history.save()
    history.identity = {"run_name": "second"}
    history.csv_path.write_text("edited\n")
    history.save()  # nothing new
    assert history.csv_path.read_text() == "edited\n"
    history.log_metrics({"a": 2})
    history.finalize("success")  # the end of a run saves
    assert read(history.csv_path) == [["a", "step"], ["1", "0"], ["2", "1"]]
    assert json.loads((tmp_path / "log" / "run.json").read_text()) == {"run_name": "first"}


def test_a_history_without_rows_or_identity_writes_a_bare_header(tmp_path):
    history = RunHistory(tmp_path)
    history.restore([])
    history.save()
    assert read(history.csv_path) == [["step"]] and not (tmp_path / "csv" / "run.json").exists()


def test_a_restored_history_is_written_whole_even_at_the_same_length(tmp_path):
    history = RunHistory(tmp_path)
    history.log_metrics({"a": 9})
    history.save()
    rows = [{"a": 1.0, "step": 0}]
    history.restore(rows)
    rows[0]["a"] = 5.0  # the checkpoint's rows are copied, not shared
    history.save()
    assert read(history.csv_path) == [["a", "step"], ["1.0", "0"]]
    history.log_metrics({"b": 2})
    assert history.rows[-1] == {"b": 2, "step": 1}


class Recorder:
    def __init__(self):
        self.calls = []

    def log_metrics(self, metrics, step=None):
        self.calls.append((metrics, step))


def test_replay_gives_each_logger_every_row_again_with_its_step():
    rows = [{"a": 1.0, "step": 3}, {"b": 2.0, "epoch": 0, "step": 7}]
    loggers = [Recorder(), Recorder()]
    replay(rows, loggers)
    for logger in loggers:
        assert logger.calls == [({"a": 1.0}, 3), ({"b": 2.0, "epoch": 0}, 7)]
    assert rows[0] == {"a": 1.0, "step": 3}  # the history itself is untouched


def test_a_history_that_has_logged_nothing_writes_nothing(tmp_path):
    history = RunHistory(tmp_path, identity={"run_name": "r"})
    history.save()  # nothing logged yet (a save before the first step): no file, not even the identity
    assert not (tmp_path / "csv").exists()
    history.log_metrics({"a": 1})
    history.save()
    assert read(history.csv_path) == [["a", "step"], ["1", "0"]] and (tmp_path / "csv" / "run.json").is_file()
