"""The faults of the records issue, one named test each: damaged and foreign checkpoints, reruns of finished and
stopped runs, damaged results, a signal while testing, and values of the wrong type."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from helpers import compose_train, epoch_rows
from rppnets.records.jobs import read_job
from rppnets.training.checkpointing import Preempted
from rppnets.training.pipeline import ConfigError, train

ROOT = Path(__file__).resolve().parents[1]
TWO_EPOCHS = ["model.width=16", "trainer.max_epochs=2", "logger=csv"]


def steady(metrics: dict) -> dict:
    """The metrics that two runs of one config share (times and the process's peak differ), all keys kept."""
    return {key: (None if key.startswith(("time/", "memory/peak_rss")) else value) for key, value in metrics.items()}


def results(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())


@pytest.fixture(scope="module")
def finished(tmp_path_factory, fake_root) -> Path:
    """A finished two-epoch run: the reference the reruns below must reproduce."""
    folder = tmp_path_factory.mktemp("finished")
    train(compose_train(TWO_EPOCHS, output_dir=folder, fake_root=fake_root))
    return folder


def copy_run(source: Path, dest: Path) -> Path:
    shutil.copytree(source, dest)
    return dest


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_a_damaged_last_checkpoint_is_named_and_the_previous_one_resumes(damage, finished, fake_root, tmp_path,
                                                                         capsys):
    run = copy_run(finished, tmp_path / "run")
    last = run / "checkpoints" / "last.ckpt"
    data = last.read_bytes()
    last.write_bytes({"truncated": data[: len(data) // 2], "garbage": os.urandom(4096), "empty": b""}[damage])
    train(compose_train(TWO_EPOCHS, output_dir=run, fake_root=fake_root))
    out = capsys.readouterr().out
    assert f"cannot resume: {last}" in out and "weights_only" not in out
    assert "resuming after epoch 1 of 2" in out  # previous.ckpt: the first epoch's
    assert steady(results(run)["metrics"]) == steady(results(finished)["metrics"])
    assert epoch_rows(run / "csv" / "metrics.csv") == epoch_rows(finished / "csv" / "metrics.csv")
    (aside,) = run.glob("replaced-*")
    assert (aside / "checkpoints" / "last.ckpt").read_bytes() != data  # the damaged file, kept for a look


def test_another_seeds_checkpoint_is_never_resumed(finished, fake_root, tmp_path, capsys):
    run = tmp_path / "seed1"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(finished / "checkpoints" / "last.ckpt", run / "checkpoints" / "last.ckpt")  # a merged sweep
    train(compose_train([*TWO_EPOCHS, "seed=1"], output_dir=run, fake_root=fake_root))
    out = capsys.readouterr().out
    assert "holds another run (" in out and "; seed: 0 there, 1 here" in out, out
    clean = tmp_path / "clean"
    train(compose_train([*TWO_EPOCHS, "seed=1"], output_dir=clean, fake_root=fake_root))
    assert results(run)["seed"] == 1
    assert steady(results(run)["metrics"]) == steady(results(clean)["metrics"])


def test_an_rpp_checkpoint_in_a_dense_folder_loses_nothing(finished, fake_root, tmp_path, capsys):
    rpp = tmp_path / "rpp"
    train(compose_train(["model=rpp", "model.k=2", "trainer.max_epochs=1", "logger=csv"], output_dir=rpp,
                        fake_root=fake_root))
    run = copy_run(finished, tmp_path / "dense")
    csv_before = (run / "csv" / "metrics.csv").read_text()
    shutil.copy(rpp / "checkpoints" / "last.ckpt", run / "checkpoints" / "last.ckpt")
    train(compose_train(TWO_EPOCHS, output_dir=run, fake_root=fake_root))
    assert "holds another run (" in capsys.readouterr().out
    assert results(run)["status"] == "finished"
    assert steady(results(run)["metrics"]) == steady(results(finished)["metrics"])
    (aside,) = run.glob("replaced-*")
    assert (aside / "csv" / "metrics.csv").read_text() == csv_before  # set aside, not cut down


def test_rerunning_a_finished_run_leaves_it_as_it_is(finished, fake_root, tmp_path, capsys):
    run = copy_run(finished, tmp_path / "run")
    before = {name: (run / name).read_bytes() for name in ("results.json", "csv/metrics.csv",
                                                           "checkpoints/last.ckpt")}
    train(compose_train(TWO_EPOCHS, output_dir=run, fake_root=fake_root))
    assert "already finished" in capsys.readouterr().out
    assert {name: (run / name).read_bytes() for name in before} == before
    assert not list(run.glob("replaced-*"))


def test_a_damaged_results_json_is_named_then_rebuilt_whole(finished, fake_root, tmp_path):
    run = copy_run(finished, tmp_path / "run")
    (run / "results.json").write_text('{"status": "finis')
    job = read_job(run)
    assert job.state == "unfinished" and f"{run / 'results.json'} is damaged" in job.reason
    train(compose_train(TWO_EPOCHS, output_dir=run, fake_root=fake_root))
    assert steady(results(run)["metrics"]) == steady(results(finished)["metrics"])  # memory metrics included
    assert epoch_rows(run / "csv" / "metrics.csv") == epoch_rows(finished / "csv" / "metrics.csv")


def test_a_damaged_csv_of_a_finished_run_is_rebuilt_from_its_checkpoint(finished, fake_root, tmp_path):
    run = copy_run(finished, tmp_path / "run")
    (run / "csv" / "metrics.csv").write_text("epoch,step\n0,")
    train(compose_train(TWO_EPOCHS, output_dir=run, fake_root=fake_root))
    assert (run / "csv" / "metrics.csv").read_text() == (finished / "csv" / "metrics.csv").read_text()


class SignalWhileTesting(pl.Callback):
    """Sends this process SIGTERM during the test phase's first batch."""

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if batch_idx == 0:
            os.kill(os.getpid(), signal.SIGTERM)


def test_a_signal_while_testing_stops_and_the_rerun_records_every_metric(finished, fake_root, tmp_path):
    run = tmp_path / "run"
    probe = ["+callbacks.probe._target_=test_fault_table.SignalWhileTesting"]
    with pytest.raises(Preempted):
        train(compose_train([*TWO_EPOCHS, *probe], output_dir=run, fake_root=fake_root))
    assert results(run)["status"] == "stopped" and results(run)["signal"] == "SIGTERM"
    assert read_job(run).state == "unfinished"
    train(compose_train(TWO_EPOCHS, output_dir=run, fake_root=fake_root))
    assert steady(results(run)["metrics"]) == steady(results(finished)["metrics"])
    assert epoch_rows(run / "csv" / "metrics.csv") == epoch_rows(finished / "csv" / "metrics.csv")


@pytest.mark.parametrize("override,key", [("model.k=abc", "model.k"), ("model.width=abc", "model.width"),
                                          ("data.batch_size=abc", "data.batch_size"), ("model=rpp model.k=null",
                                                                                       "model.k")])
def test_a_value_of_the_wrong_type_is_refused_at_composition_naming_its_key(override, key, fake_root):
    with pytest.raises(ConfigCompositionException) as refused:
        compose_train(override.split(), fake_root=fake_root)
    assert isinstance(refused.value.__cause__, ValidationError) and f"full_key: {key}" in str(refused.value.__cause__)


@pytest.mark.slow
def test_the_command_line_exits_2_for_a_wrong_type_and_leaves_no_folder(tmp_path):
    done = subprocess.run([sys.executable, "src/train.py", "model.k=abc", f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "full_key: model.k" in done.stderr
    assert not (tmp_path / "run").exists()


def test_a_huge_batch_names_data_batch_size(fake_root, tmp_path):
    cfg = compose_train(["data.batch_size=1000000000"], output_dir=tmp_path / "run", fake_root=fake_root)
    with pytest.raises(ConfigError, match=r"lower data\.batch_size \(now 1000000000"):
        train(cfg)
    assert not (tmp_path / "run").exists()
