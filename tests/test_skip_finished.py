"""When a job counts as done: the config hash, skip_finished, and the run folder's results.json, state and CSV.

A sweep rerun with `skip_finished=true` must train every job whose config changed and only those; otherwise the
figure shows results of a config nobody asked for.
"""

import json
import math
import re
from pathlib import Path

import pytest
from helpers import compose_train
from omegaconf import OmegaConf

from rppnets.training import pipeline as training
from rppnets.records.run_folder import RunFolder, finite_or_none
from rppnets.training.pipeline import config_hash, experiment_hash, run_hash, run_name, train


@pytest.fixture()
def trainings(monkeypatch):
    """Replaces the training itself by a record of its calls: what train() decides is what is tested."""
    calls = []

    def fake_train(cfg, folder, config, this_hash, *args):
        calls.append(this_hash)
        return {"trained": this_hash}

    monkeypatch.setattr(training, "_train", fake_train)
    return calls


def finished_results(cfg, **changes) -> dict:
    results = {"status": "finished", "run_name": "x", "metrics": {"test/acc": 0.5},
               "config_hash": run_hash(cfg)}
    return results | changes


def test_a_finished_job_of_this_config_is_skipped(tmp_path, fake_root, trainings):
    cfg = compose_train(["skip_finished=true", "logger=csv"], output_dir=tmp_path, fake_root=fake_root)
    RunFolder(tmp_path).write_json("results.json", finished_results(cfg))
    assert train(cfg) == {"test/acc": 0.5} and trainings == []


@pytest.mark.parametrize("change", ["seed=1", "model.width=17", "optimizer.lr=0.01", "trainer.max_epochs=2",
                                    "data.train_size=100", "model=rpp"], ids=lambda change: change.split("=")[0])
def test_a_results_json_of_another_config_makes_train_run_again(tmp_path, fake_root, trainings, change):
    old = compose_train(["skip_finished=true", "logger=csv"], output_dir=tmp_path, fake_root=fake_root)
    RunFolder(tmp_path).write_json("results.json", finished_results(old))
    cfg = compose_train(["skip_finished=true", "logger=csv", change], output_dir=tmp_path, fake_root=fake_root)
    expected = run_hash(cfg)  # before train() names the run
    assert expected != finished_results(old)["config_hash"]
    assert train(cfg) == {"trained": expected} and trainings == [expected]


def test_a_finished_job_is_still_skipped_after_its_sweep_folder_moved(tmp_path, fake_root, trainings):
    """Sweeps get copied off clusters and merged: the run folder is interpolated into the loggers' and checkpoint's
    folders, and must not count as config."""
    first = tmp_path / "cluster" / "rpp-seed0"
    first.mkdir(parents=True)
    RunFolder(first).write_json("results.json", finished_results(
        compose_train(["skip_finished=true", "logger=csv"], output_dir=first, fake_root=fake_root)))
    moved = tmp_path / "merged" / "rpp-seed0"
    moved.parent.mkdir()
    first.rename(moved)
    cfg = compose_train(["skip_finished=true", "logger=csv"], output_dir=moved, fake_root=fake_root)
    assert cfg.callbacks.checkpoint.dirpath.startswith(str(moved))
    assert train(cfg) == {"test/acc": 0.5} and trainings == []


def test_the_progress_bar_is_not_part_of_the_run(tmp_path):
    def hash_of(*overrides):
        return run_hash(compose_train(["logger=csv", *overrides], output_dir=tmp_path))

    reference = hash_of()
    assert hash_of("~callbacks.progress_bar", "+trainer.enable_progress_bar=false") == reference
    assert hash_of("~callbacks.memory") != reference


@pytest.mark.parametrize("status", ["failed", "unfinished"])
def test_a_job_that_did_not_finish_runs_again(tmp_path, fake_root, trainings, status):
    cfg = compose_train(["skip_finished=true", "logger=csv"], output_dir=tmp_path, fake_root=fake_root)
    RunFolder(tmp_path).write_json("results.json", finished_results(cfg, status=status))
    train(cfg)
    assert len(trainings) == 1


def test_without_skip_finished_a_finished_job_runs_again(tmp_path, fake_root, trainings):
    cfg = compose_train(["skip_finished=false", "logger=csv"], output_dir=tmp_path, fake_root=fake_root)
    RunFolder(tmp_path).write_json("results.json", finished_results(cfg))
    train(cfg)
    assert len(trainings) == 1


def config(**changes) -> dict:
    base = {"seed": 0, "network": "rpp", "group": "g", "model": {"kind": "rpp", "width": 10, "k": 100},
            "trainer": {"max_epochs": 30}, "data": {"train_size": None}, "paths": {"output_dir": "/a"},
            "hydra": {"job": 1}, "skip_finished": True, "resume": True, "run_name": "rpp-w10-k100-s0"}
    return base | changes


def test_config_hash_ignores_where_and_how_a_job_runs_but_nothing_else():
    reference = config_hash(config())
    assert len(reference) == 10 and int(reference, 16) >= 0
    same = [config(paths={"output_dir": "/b"}), config(hydra={"job": 2}), config(skip_finished=False),
            config(resume=False), dict(reversed(list(config().items())))]
    assert {config_hash(c) for c in same} == {reference}
    changed = [config(seed=1), config(model={"kind": "rpp", "width": 10, "k": 10}), config(group="h"),
               config(trainer={"max_epochs": 2}), config(data={"train_size": 5000}), config(network="rpp_nobias"),
               config(extra=None)]
    hashes = [config_hash(c) for c in changed]
    assert len(set(hashes)) == len(hashes) and reference not in hashes


def test_config_hash_takes_values_json_does_not_know_by_their_text():
    assert config_hash(config(extra={"path": Path("/data")})) == config_hash(config(extra={"path": "/data"}))


def test_experiment_hash_is_shared_by_the_networks_and_seeds_of_one_figure(tmp_path):
    def hash_of(*overrides):
        folder = tmp_path / str(len(list(tmp_path.iterdir())))  # a folder of its own per job
        return experiment_hash(compose_train(["experiment=fashion_mnist_plot", *overrides], output_dir=folder))

    reference = hash_of("network=rpp", "seed=0")
    for overrides in (("network=softmax", "seed=0"), ("network=dense_wide", "seed=3"), ("network=rpp", "seed=1"),
                      ("network=rpp", "run_name=mine")):
        assert hash_of(*overrides) == reference, overrides
    for overrides in (("network=rpp", "trainer.max_epochs=2"), ("network=rpp", "data.train_size=5000"),
                      ("network=rpp", "optimizer.lr=0.01"), ("network=rpp", "group=other")):
        assert hash_of(*overrides) != reference, overrides


@pytest.mark.parametrize("model, seed, name", [
    ({"kind": "dense", "width": 1000, "depth": 2, "bias": True}, 0, "dense-w1000-s0"),
    ({"kind": "dense", "width": 10, "depth": 2, "bias": False}, 4, "dense-w10-nobias-s4"),
    ({"kind": "dense", "width": 10, "depth": 0, "bias": True}, 0, "softmax-s0"),
    ({"kind": "rpp", "width": 10, "k": 100, "depth": 2, "bias": "full"}, 0, "rpp-w10-k100-s0"),
    ({"kind": "rpp", "width": 10, "k": 100, "depth": 2, "bias": "none"}, 2, "rpp-w10-k100-nobias-s2"),
    ({"kind": "rpp", "width": 10, "k": 100, "depth": 2, "bias": "reuse"}, 0, "rpp-w10-k100-s0"),
    ({"kind": "hashed", "width": 8, "k": 5, "depth": 1, "bias": "full"}, 1, "hashed-w8-k5-d1-s1"),
    ({"kind": "dense", "width": 16, "depth": 3, "bias": True}, 0, "dense-w16-d3-s0"),
])
def test_run_names_say_the_model_and_seed(model, seed, name):
    assert run_name(OmegaConf.create({"model": model, "seed": seed})) == name


def test_finished_results_need_status_finished_and_this_config(tmp_path):
    folder = RunFolder(tmp_path)
    assert folder.finished_results("abc") is None  # no results.json
    folder.write_json("results.json", {"status": "finished", "config_hash": "abc", "metrics": {}})
    assert folder.finished_results("abc")["config_hash"] == "abc"
    assert folder.finished_results("abd") is None
    folder.write_json("results.json", {"config_hash": "abc"})  # written before jobs had a status: finished
    assert folder.finished_results("abc") == {"config_hash": "abc"}
    folder.write_json("results.json", {"status": "failed", "config_hash": "abc"})
    assert folder.finished_results("abc") is None
    (tmp_path / "results.json").write_text('{"status": "finished", "config_hash": "abc"')  # cut short
    assert folder.finished_results("abc") is None


def test_results_are_strict_json_written_whole(tmp_path):
    folder = RunFolder(tmp_path)
    folder.write_json("results.json", {"loss": math.nan, "acc": 0.5, "n": [1, math.inf], "t": (-math.inf, 2)})
    text = (tmp_path / "results.json").read_text()
    assert json.loads(text) == {"loss": None, "acc": 0.5, "n": [1, None], "t": [None, 2]}
    assert "NaN" not in text and "Infinity" not in text
    assert text == json.dumps({"loss": None, "acc": 0.5, "n": [1, None], "t": [None, 2]}, indent=2)  # for people too
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary file left
    assert folder.read_json("results.json")["acc"] == 0.5 and folder.read_json("missing.json") is None


def test_finite_or_none_keeps_every_finite_value():
    value = {"a": [1, 2.5, "x", None, True], "b": {"c": (0.0, -1e308)}, "d": float("nan")}
    assert finite_or_none(value) == {"a": [1, 2.5, "x", None, True], "b": {"c": [0.0, -1e308]}, "d": None}


def test_set_aside_moves_the_attempt_and_keeps_the_rest(tmp_path):
    folder = RunFolder(tmp_path)
    assert folder.set_aside("nothing there") is None and not list(tmp_path.glob("replaced-*"))
    for name, text in (("checkpoints/last.ckpt", "ckpt"), ("csv/metrics.csv", "csv"), ("results.json", "{}"),
                       ("run_state.json", "{}"), (".hydra/config.yaml", "cfg")):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    moved = folder.set_aside("started afresh: resume=false")
    assert moved.parent == tmp_path and moved.name.startswith("replaced-")
    assert (moved / "checkpoints" / "last.ckpt").read_text() == "ckpt" and (moved / "csv" / "metrics.csv").is_file()
    assert (moved / "results.json").is_file() and (moved / "run_state.json").is_file()
    assert (moved / "REASON").read_text() == "started afresh: resume=false\n"
    assert not folder.checkpoint_path.exists() and not folder.csv_path.exists()
    assert not folder.results_path.exists() and (tmp_path / ".hydra" / "config.yaml").is_file()


def test_check_writable_makes_the_folders_and_leaves_no_probe(tmp_path):
    folder = RunFolder(tmp_path / "run")
    folder.check_writable()
    assert (tmp_path / "run" / "checkpoints").is_dir()
    assert not [p for p in (tmp_path / "run").rglob("*") if p.name.startswith(".write-probe")]


def test_experiment_hash_ignores_the_excluded_keys_and_resolves_interpolations():
    def hash_of(**changes):
        base = {"seed": 0, "run_name": "a", "network": "rpp", "model": {"k": 100}, "trainer": {"max_epochs": 30},
                "paths": {"output_dir": "/runs/a", "batch_size": 128}, "hydra": {"job": {"num": 0}},
                "data": {"root": "/data/a", "batch_size": "${paths.batch_size}"}, "skip_finished": True,
                "resume": True}
        return experiment_hash(OmegaConf.create(base | changes))

    reference = hash_of()
    for same in ({"seed": 4}, {"run_name": "b"}, {"network": "softmax"}, {"model": {"k": 10}},
                 {"hydra": {"job": {"num": 3}}}, {"skip_finished": False}, {"resume": False},
                 {"paths": {"output_dir": "/runs/b", "batch_size": 128, "log_dir": "/logs"}},
                 {"data": {"root": "/data/b", "batch_size": "${paths.batch_size}"}}):  # where the data lie
        assert hash_of(**same) == reference, same
    # an included key that takes its value from an excluded one counts with that value
    assert hash_of(paths={"output_dir": "/runs/a", "batch_size": 64}) != reference
    assert hash_of(trainer={"max_epochs": 2}) != reference


def test_set_aside_folders_are_named_by_date_and_time(tmp_path):
    (tmp_path / "results.json").write_text("{}")
    moved = RunFolder(tmp_path).set_aside("why")
    assert re.fullmatch(r"replaced-\d{8}-\d{6}", moved.name)
