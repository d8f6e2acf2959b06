"""The optional callbacks of conf/callbacks/ (early stopping, the best checkpoint): off by default with the config hash
of every existing run unchanged, and a run stopped by a signal and resumed stops at the epoch an uninterrupted one
stops at, with the same best.ckpt (their state travels in last.ckpt)."""

import signal
import subprocess
import time

import pytest
import torch

from chaos import ROOT, WATCHED, environment
from helpers import compose_train
from rppnets.records.run_folder import RUN_FILES, RunFolder
from rppnets.training.checkpointing import AtomicCheckpointIO, read_checkpoint
from rppnets.training.pipeline import run_hash
from test_attempts import tiny_job

# lr 0.01 on the fake data: val/acc 0.66, then 1.0 from the second epoch on. Early stopping on val/acc with patience 2
# stops after the fourth epoch (two without improvement); the best checkpoint is the second epoch's (a tie is no
# improvement). A resume that lost either callback's state would stop after the fifth, or keep a later best.ckpt.
CALLBACKS = ["optimizer.lr=0.01", "trainer.max_epochs=6", "callbacks/early_stopping=val_loss",
             "callbacks.early_stopping.monitor=val/acc", "callbacks.early_stopping.mode=max",
             "callbacks.early_stopping.patience=2", "callbacks/best_checkpoint=val_loss",
             "callbacks.best_checkpoint.monitor=val/acc", "callbacks.best_checkpoint.mode=max"]


def test_the_callbacks_are_off_by_default_and_leave_every_config_hash_as_it_was(tmp_path):
    # the hashes of default runs before these callbacks existed: their finished runs stay finished, and resume
    assert run_hash(compose_train([], output_dir=tmp_path)) == "ea05a58184"
    assert run_hash(compose_train(["experiment=fashion_mnist_plot", "network=rpp"], output_dir=tmp_path)) == "b93ade703e"
    cfg = compose_train(["callbacks/early_stopping=val_loss", "callbacks/best_checkpoint=val_loss"],
                        output_dir=tmp_path)
    assert cfg.callbacks.early_stopping.monitor == cfg.callbacks.best_checkpoint.monitor == "val/loss"
    assert cfg.callbacks.best_checkpoint.dirpath == f"{tmp_path}/checkpoints"
    assert run_hash(cfg) != "ea05a58184"


def test_best_ckpt_is_written_atomically_and_never_rotates_last_ckpts_previous(tmp_path):
    io, folder = AtomicCheckpointIO(), tmp_path / "checkpoints"
    for step in (1, 2):
        io.save_checkpoint({"global_step": step, "loops": {}, "state_dict": {}}, folder / "last.ckpt")
    io.save_checkpoint({"global_step": 7, "loops": {}, "state_dict": {}}, folder / "best.ckpt")
    io.save_checkpoint({"global_step": 8, "loops": {}, "state_dict": {}}, folder / "best.ckpt")
    assert sorted(p.name for p in folder.iterdir()) == ["best.ckpt", "last.ckpt", "previous.ckpt"]
    assert [read_checkpoint(folder / name)["global_step"] for name in ("previous.ckpt", "last.ckpt", "best.ckpt")] == [
        1, 2, 8]
    # a run started afresh sets the old best.ckpt aside with the rest of the attempt's files
    assert "checkpoints/best.ckpt" in RUN_FILES
    RunFolder(tmp_path).set_aside("test")
    assert not (folder / "best.ckpt").exists()


def stopping_point(folder):
    """The epoch early stopping stopped after (0-based), best.ckpt's epoch, step and score, and its weights."""
    last, best = read_checkpoint(folder / "checkpoints" / "last.ckpt"), read_checkpoint(folder / "checkpoints" / "best.ckpt")
    states = last["callbacks"]
    stopping = next(v for k, v in states.items() if k.startswith("EarlyStopping"))
    model_checkpoint = next(v for k, v in states.items() if k.startswith("ModelCheckpoint"))
    return {"stopped_epoch": stopping["stopped_epoch"], "last_epoch": last["epoch"],
            "best_score": float(model_checkpoint["best_model_score"]), "best_epoch": best["epoch"],
            "best_step": best["global_step"], "best_path": model_checkpoint["best_model_path"]}, best["state_dict"]


@pytest.fixture(scope="module")
def uninterrupted(fake_root, tmp_path_factory):
    """The run never stopped: where it stopped early, and its best checkpoint."""
    reference = tmp_path_factory.mktemp("uninterrupted")
    whole = subprocess.run(tiny_job(fake_root, reference) + CALLBACKS, cwd=ROOT, env=environment(),
                           capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stdout + whole.stderr
    assert "early stopping after epoch 4: " in whole.stdout
    return stopping_point(reference)


@pytest.mark.slow
@pytest.mark.parametrize("held, resumed_at", [
    # at the end of the best epoch: last.ckpt holds the best checkpoint's update of that epoch (saved after it)
    ("validation epoch 2", "after epoch 2 of 6 (step 28)"),
    # mid-epoch: the step after the signal saves last.ckpt
    pytest.param("training epoch 3", "in epoch 3 of 6 (mid-epoch, step 29)", marks=pytest.mark.long),
    # in the epoch that decides to stop: the resumed run trains no epoch more
    pytest.param("validation epoch 4", "after epoch 4 of 6 (step 56)", marks=pytest.mark.long),
])
def test_a_run_stopped_by_sigterm_and_resumed_stops_where_an_uninterrupted_run_stops(held, resumed_at, uninterrupted,
                                                                                     fake_root, tmp_path):
    run = tmp_path / "run"
    hold = [*WATCHED, f"+callbacks.phase.hold='{held}'", f"+callbacks.phase.once={tmp_path / 'held'}"]
    first = subprocess.Popen(tiny_job(fake_root, run) + CALLBACKS + hold, cwd=ROOT, env=environment(),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while not (tmp_path / "held").exists():
        assert first.poll() is None, first.communicate()[0]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert first.poll() is None  # still running, held where the signal is to land
    first.send_signal(signal.SIGTERM)
    output = first.communicate(timeout=300)[0]
    assert first.returncode == 128 + signal.SIGTERM, output
    assert (run / "checkpoints" / "best.ckpt").is_file()

    again = subprocess.run(tiny_job(fake_root, run) + CALLBACKS + hold, cwd=ROOT, env=environment(),
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"resuming {resumed_at}" in again.stdout, again.stdout

    (resumed, resumed_weights), (whole, weights) = stopping_point(run), uninterrupted
    assert whole | {"best_path": None} == {"stopped_epoch": 3, "last_epoch": 3, "best_score": 1.0, "best_epoch": 1,
                                           "best_step": 28, "best_path": None}
    assert resumed | {"best_path": None} == whole | {"best_path": None}
    assert resumed["best_path"] == str(run / "checkpoints" / "best.ckpt")
    assert resumed_weights.keys() == weights.keys()
    assert all(torch.equal(resumed_weights[key], weights[key]) for key in weights)
