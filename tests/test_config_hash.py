"""A run's identity and where it resumes (rppnets.training.pipeline): the config hash, names, the sizes the data set
tells the model, the config checks, and what resuming sets aside. A wrong hash resumes or skips another run; a wrong
name files a result under another network; a wrong set-aside loses an attempt's files."""

import math

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from rppnets.records.run_folder import RunFolder
from rppnets.training.pipeline import (COMPILE_MODES, ConfigError, _resume_point, check_config, config_hash,
                                       data_sizes, experiment_hash, model_name, run_hash, run_name)


def test_config_hash_leaves_out_where_and_how_a_run_runs_and_nothing_else():
    base = {"seed": 1, "paths": {"output_dir": "/a"}, "hydra": {"x": 1}, "skip_finished": True, "resume": True,
            "data": {"root": "/d", "system_dir": "/s", "download": True, "verify_md5": True, "name": "F",
                     "batch_size": 32},
            "callbacks": {"progress_bar": {"x": 1}, "memory": {"y": 1}},
            "trainer": {"enable_progress_bar": True, "max_epochs": 3}}
    reference = config_hash(base)
    assert len(reference) == 10 and int(reference, 16) >= 0
    for same in ({"paths": {"output_dir": "/b"}}, {"hydra": {"x": 2}}, {"skip_finished": False}, {"resume": False},
                 {"data": base["data"] | {"root": "/e", "system_dir": None, "download": False, "verify_md5": False,
                                          "name": "G"}},
                 {"callbacks": {"progress_bar": None, "memory": {"y": 1}}},
                 {"trainer": {"enable_progress_bar": False, "max_epochs": 3}}):
        assert config_hash(base | same) == reference, same
    for other in ({"seed": 2}, {"data": base["data"] | {"batch_size": 64}}, {"callbacks": {"memory": {"y": 2}}},
                  {"trainer": {"max_epochs": 4}}, {"model": {"k": 1}}):
        assert config_hash(base | other) != reference, other
    assert config_hash(base, exclude=("paths", "hydra")) != reference  # the excluded keys are those asked
    assert config_hash({"data": "not a group", "seed": 1}) != config_hash({"seed": 1})


def test_run_hash_keeps_a_job_whose_folder_moved_and_resolves_what_the_folder_feeds():
    def cfg(output_dir, lr=0.1):
        return OmegaConf.create({"paths": {"output_dir": output_dir}, "optimizer": {"lr": lr},
                                 "logger": {"csv": {"save_dir": "${paths.output_dir}"}}})

    assert run_hash(cfg("/sweep/0")) == run_hash(cfg("/moved/0"))
    assert run_hash(cfg("/sweep/0")) != run_hash(cfg("/sweep/0", lr=0.2))
    original = cfg("/sweep/0")
    run_hash(original)
    assert original.paths.output_dir == "/sweep/0"  # the caller's config is left as it was


def test_experiment_hash_is_shared_by_the_networks_seeds_and_folders_of_one_figure():
    def cfg(**changes):
        base = {"seed": 0, "run_name": "dense-w10-s0", "network": "dense", "model": {"kind": "dense"},
                "paths": {"output_dir": "/x"}, "data": {"batch_size": 32}}
        return OmegaConf.create(base | changes)

    reference = experiment_hash(cfg())
    for same in ({"seed": 3}, {"run_name": "rpp-s3"}, {"network": "rpp"}, {"model": {"kind": "rpp"}},
                 {"paths": {"output_dir": "/y"}}):
        assert experiment_hash(cfg(**same)) == reference, same
    assert experiment_hash(cfg(data={"batch_size": 64})) != reference
    assert experiment_hash(cfg()) != run_hash(cfg())


@pytest.mark.parametrize("model, name", [
    ({"kind": "dense", "depth": 0, "width": 5}, "softmax"),
    ({"kind": "dense", "depth": 0, "width": 5, "bias": False}, "softmax"),
    ({"kind": "dense", "depth": 2, "width": 1000}, "dense-w1000"),
    ({"kind": "dense", "depth": 2, "width": 1000, "bias": "none"}, "dense-w1000-nobias"),
    ({"kind": "dense", "depth": 1, "width": 8, "bias": "reuse"}, "dense-w8-d1"),
    ({"kind": "rpp", "depth": 2, "width": 10, "k": 100, "signs": True}, "rpp-w10-k100-signed"),
    ({"kind": "rpp", "depth": 3, "width": 10, "k": 4, "signs": False, "bias": False}, "rpp-w10-k4-nobias-d3"),
    ({"kind": "lowrank", "depth": 2, "width": 10, "k": 4}, "lowrank-w10-k4"),
    ({"_target_": "mymodels.TinyNet", "hidden": 3}, "tinynet"),
    ({"_target_": "lab.models.TinyNet"}, "tinynet"),
    ({"_target_": "TinyNet", "kind": "x"}, "tinynet"),
    ({"hidden": 3}, "model"),
])
def test_model_names_say_kind_width_k_signs_bias_and_depth(model, name):
    assert model_name(OmegaConf.create({"model": model, "seed": 4})) == name
    assert run_name(OmegaConf.create({"model": model, "seed": 4})) == f"{name}-s4"


class Sized(nn.Module):
    def __init__(self, in_features: int, num_classes: int = 10, width: int = 3):
        super().__init__()


class Unsized(nn.Module):
    def __init__(self, width: int = 3):
        super().__init__()


class Data:
    in_features, num_classes = 12, 4


def test_the_data_set_tells_the_model_the_sizes_it_takes_and_its_config_leaves_open():
    target = f"{__name__}.Sized"
    assert data_sizes(OmegaConf.create({"_target_": target}), Data()) == {"in_features": 12, "num_classes": 4}
    assert data_sizes(OmegaConf.create({"_target_": target, "num_classes": 3}), Data()) == {"in_features": 12}
    assert data_sizes(OmegaConf.create({"_target_": f"{__name__}.Unsized"}), Data()) == {}
    with pytest.raises(ConfigError, match="takes in_features and num_classes, which the data module"):
        data_sizes(OmegaConf.create({"_target_": target}), object())  # a data module that does not say: refused
    assert data_sizes(OmegaConf.create({"_target_": "nowhere.Missing"}), Data()) == {}


@pytest.mark.parametrize("changes, message", [
    ({"trainer": {"max_epochs": 0}}, "trainer.max_epochs=0"),
    ({"seed": -1}, "seed=-1"),
    ({"seed": 2**32}, f"seed={2**32}"),
    ({"optimizer": {"lr": 0}}, "optimizer.lr=0 is invalid; allowed: a finite number > 0"),
    ({"optimizer": {"lr": -0.1}}, "optimizer.lr=-0.1 is invalid"),
    ({"optimizer": {"lr": math.inf}}, "optimizer.lr=inf is invalid"),
    ({"optimizer": {"lr": math.nan}}, "optimizer.lr=nan is invalid"),
    ({"optimizer": {"lr": True}}, "optimizer.lr=True is invalid"),
    ({"optimizer": {"lr": "fast"}}, "optimizer.lr='fast' is invalid"),
    ({"compile": "fastest"}, "compile='fastest' is invalid; allowed: null (eager), "
                             + ", ".join(map(repr, COMPILE_MODES))),
])
def test_bad_values_are_refused_naming_the_key_and_what_is_allowed(changes, message):
    base = {"trainer": {"max_epochs": 1}, "seed": 0, "optimizer": {"lr": 0.1}, "compile": None}
    with pytest.raises(ConfigError) as err:
        check_config(OmegaConf.create(base | changes))
    assert str(err.value).startswith(message) and isinstance(err.value.__cause__, ValueError)


@pytest.mark.parametrize("changes", [{}, {"seed": 2**32 - 1}, {"optimizer": {"lr": 3}}, {"optimizer": {}},
                                     {"compile": "max-autotune"}, {"compile": "default"}])
def test_good_values_pass(changes):
    base = {"trainer": {"max_epochs": 1}, "seed": 0, "optimizer": {"lr": 0.1}}
    check_config(OmegaConf.create(base | changes))
    check_config(OmegaConf.create({"trainer": {"max_epochs": 1}, "seed": 0}))  # no optimizer key


# --- where a run resumes, and what it sets aside --------------------------------------------------------------------

IDENTITY = {"config_hash": "abc", "run_name": "dense-w3-s0", "wandb_id": None, "config": {"seed": 0}}


def net() -> nn.Module:
    return nn.Linear(4, 3)


def save(path, identity=IDENTITY, step=5):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"loops": {"fit_loop": {"epoch_progress": {"current": {"processed": 1, "started": 1}}}},
                "global_step": step, "state_dict": net().state_dict(), "run": {"identity": identity, "history": []}},
               path)


def attempt(folder: RunFolder, last=True, previous=False, damaged_last=False):
    """The files an attempt leaves: checkpoints, CSV, results.json, W&B folder."""
    if last:
        save(folder.checkpoint_path, step=5)
    if damaged_last:
        folder.checkpoint_path.write_bytes(b"damaged")
    if previous:
        save(folder.previous_checkpoint_path, step=3)
    folder.csv_path.parent.mkdir(parents=True, exist_ok=True)
    folder.csv_path.write_text("step\n0\n")
    folder.write_json("results.json", {"status": "stopped", "config_hash": "abc"})
    (folder.path / "wandb").mkdir()


def resume_point(tmp_path, writer=True, uses_wandb=True, **cfg):
    return _resume_point(OmegaConf.create(cfg), RunFolder(tmp_path), IDENTITY, net(), writer, uses_wandb)


def aside(tmp_path) -> dict[str, list[str]]:
    """REASON and files of each replaced-* folder."""
    return {(d / "REASON").read_text(): sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file()
                                               and p.name != "REASON") for d in tmp_path.glob("replaced-*")}


def test_a_run_resumes_from_its_last_checkpoint_and_sets_aside_what_is_rebuilt(tmp_path, capsys):
    attempt(RunFolder(tmp_path))
    point = resume_point(tmp_path)
    assert point.path == tmp_path / "checkpoints" / "last.ckpt" and point.progress["global_step"] == 5
    assert aside(tmp_path) == {"resumed from last.ckpt\n": ["csv/metrics.csv", "results.json"]}
    assert [p.name for p in tmp_path.glob("replaced-*/wandb")] and (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert capsys.readouterr().out == ""


def test_without_wandb_its_folder_stays(tmp_path):
    attempt(RunFolder(tmp_path))
    resume_point(tmp_path, uses_wandb=False)
    assert (tmp_path / "wandb").is_dir() and not list(tmp_path.glob("replaced-*/wandb"))


def test_a_damaged_last_checkpoint_is_set_aside_and_the_previous_one_resumed(tmp_path, capsys):
    attempt(RunFolder(tmp_path), previous=True, damaged_last=True)
    point = resume_point(tmp_path)
    assert point.path == tmp_path / "checkpoints" / "previous.ckpt" and point.progress["global_step"] == 3
    out = capsys.readouterr().out
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert out.startswith(f"dense-w3-s0: cannot resume: {last} is not a checkpoint of this project")
    (reason, files), = aside(tmp_path).items()
    assert reason.startswith(f"resumed from previous.ckpt; refused: {tmp_path / 'checkpoints' / 'last.ckpt'} is not a")
    assert files == ["checkpoints/last.ckpt", "csv/metrics.csv", "results.json"]
    assert (tmp_path / "checkpoints" / "previous.ckpt").is_file() and not (tmp_path / "checkpoints/last.ckpt").exists()


def test_a_run_that_cannot_resume_starts_afresh_with_every_file_set_aside(tmp_path, capsys):
    attempt(RunFolder(tmp_path), damaged_last=True)
    assert resume_point(tmp_path) is None
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[0].startswith("dense-w3-s0: cannot resume: ")
    moved = next(tmp_path.glob("replaced-*"))
    assert out[1] == f"dense-w3-s0: starting afresh; the previous attempt's files are in {moved}"
    (reason, files), = aside(tmp_path).items()
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert reason.startswith(f"started afresh: {last} is not a checkpoint of this project")
    assert files == ["checkpoints/last.ckpt", "csv/metrics.csv", "results.json"]


def test_resume_false_starts_afresh_even_from_a_good_checkpoint(tmp_path):
    attempt(RunFolder(tmp_path))
    assert resume_point(tmp_path, resume=False) is None
    assert list(aside(tmp_path)) == ["started afresh: resume=false\n"]
    assert not (tmp_path / "checkpoints" / "last.ckpt").exists()


def test_a_finished_run_trained_again_starts_afresh(tmp_path):
    folder = RunFolder(tmp_path)
    attempt(folder)
    folder.write_json("results.json", {"status": "finished", "config_hash": "abc"})
    assert resume_point(tmp_path) is None  # resume left at its default, true
    assert list(aside(tmp_path)) == ["started afresh: skip_finished=false: a finished run trained again\n"]


def test_a_first_attempt_sets_nothing_aside(tmp_path, capsys):
    assert resume_point(tmp_path) is None
    assert not list(tmp_path.glob("replaced-*")) and capsys.readouterr().out == ""
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "metrics.csv").write_text("x")
    assert resume_point(tmp_path) is None
    assert list(aside(tmp_path)) == ["started afresh: no checkpoint yet\n"]


def test_other_ranks_find_the_same_point_and_move_nothing(tmp_path, capsys):
    attempt(RunFolder(tmp_path), previous=True, damaged_last=True)
    point = resume_point(tmp_path, writer=False)
    assert point.path.name == "previous.ckpt" and not list(tmp_path.glob("replaced-*"))
    assert "cannot resume" in capsys.readouterr().out
    (tmp_path / "checkpoints" / "previous.ckpt").unlink()
    assert resume_point(tmp_path, writer=False) is None and not list(tmp_path.glob("replaced-*"))


def test_a_previous_checkpoint_is_resumed_where_last_was_never_written(tmp_path, capsys):
    folder = RunFolder(tmp_path)
    attempt(folder, last=False, previous=True)
    point = resume_point(tmp_path)
    assert point.path.name == "previous.ckpt" and capsys.readouterr().out == ""
    assert aside(tmp_path) == {"resumed from previous.ckpt\n": ["csv/metrics.csv", "results.json"]}


def test_every_refused_checkpoint_is_named_in_the_reason(tmp_path):
    folder = RunFolder(tmp_path)
    attempt(folder, previous=True, damaged_last=True)
    folder.previous_checkpoint_path.write_bytes(b"damaged too")
    assert resume_point(tmp_path) is None
    (reason, files), = aside(tmp_path).items()
    last, previous = folder.checkpoint_path, folder.previous_checkpoint_path
    assert reason == (f"started afresh: {last} is not a checkpoint of this project (it holds objects other than "
                      f"tensors and plain values); {previous} is not a checkpoint of this project (it holds objects "
                      "other than tensors and plain values)\n")
    assert files == ["checkpoints/last.ckpt", "checkpoints/previous.ckpt", "csv/metrics.csv", "results.json"]
