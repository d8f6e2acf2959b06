"""src/eval.py: a finished run's checkpoint, checked to be that run's, tested on its own data set or another of the
same input size; eval.json beside results.json, a W&B run of job type eval, and the refusals (exit status 2) of a
folder without a finished run, a checkpoint of another config and a data set of another input size."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir

from helpers import CONF_DIR, compose_train, write_fake_fashion_mnist, write_idx
from rppnets.data.idx import read_idx
from rppnets.records.run_folder import file_digest
from rppnets.training.evaluation import EvalRefused, evaluate
from test_launchers import ROOT, quick, train_py


@pytest.fixture(scope="module")
def finished(fake_root, tmp_path_factory):
    """A finished 2-epoch run with a best checkpoint, trained by src/train.py."""
    run = tmp_path_factory.mktemp("finished") / "run"
    done = train_py([*quick(fake_root), "trainer.max_epochs=2", "callbacks/best_checkpoint=val_loss",
                     f"hydra.run.dir={run}"])
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return run


def copy_of(run, tmp_path):
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


def eval_cfg(run, *overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("eval", overrides=[f"run={run}", "~logger", "accelerator=cpu", *overrides])


def eval_py(args):
    path = os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "src/eval.py", *args], cwd=ROOT, capture_output=True, text=True,
                          env=os.environ | {"PYTHONPATH": path, "WANDB_MODE": "offline"}, timeout=240)


def files_of(folder):
    return {str(p.relative_to(folder)): file_digest(p) for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_eval_of_a_finished_run_writes_its_test_metrics_to_eval_json_and_w_and_b(finished, tmp_path):
    run = copy_of(finished, tmp_path)
    before = files_of(run)
    done = eval_py([f"run={run}", "accelerator=cpu"])
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    results, record = (json.loads((run / name).read_text()) for name in ("results.json", "eval.json"))
    assert record["metrics"]["test/acc"] == results["metrics"]["test/acc"]
    assert record["metrics"]["test/loss"] == pytest.approx(results["metrics"]["test/loss"], rel=1e-6)
    assert (record["run_name"], record["config_hash"], record["checkpoint"], record["epochs_done"]) == (
        results["run_name"], results["config_hash"], "checkpoints/last.ckpt", 2)
    assert record["data"]["name"] == "Fashion-MNIST" and record["data"]["own"]
    assert f"{results['run_name']} (checkpoints/last.ckpt, epoch 2) on Fashion-MNIST: test/loss" in done.stdout
    # its W&B run (offline) is in the run folder's eval/, of job type eval, named after the run
    (wandb_run,) = (run / "eval" / "wandb").glob("offline-run-*")
    assert record["wandb"] == str(wandb_run.relative_to(run))
    logged = next(wandb_run.glob("run-*.wandb")).read_bytes()
    assert b"eval" in logged and f"{results['run_name']}-eval".encode() in logged
    # nothing else in the run folder changed
    after = files_of(run)
    assert {name: digest for name, digest in after.items() if name != "eval.json" and not name.startswith("eval/")} \
        == before


@pytest.mark.slow
def test_eval_of_the_best_checkpoint_on_another_data_set_of_the_same_input_size(finished, tmp_path):
    # "MNIST": the fake images with every test label moved on by one, which the run's model gets wrong
    mnist = write_fake_fashion_mnist(tmp_path / "fake")
    raw = mnist / "MNIST" / "raw"
    raw.parent.mkdir()
    (mnist / "FashionMNIST" / "raw").rename(raw)
    labels = read_idx(raw / "t10k-labels-idx1-ubyte.gz", verify_md5=False).numpy()
    write_idx(raw / "t10k-labels-idx1-ubyte.gz", ((labels + 1) % 10).astype("uint8"))
    run = copy_of(finished, tmp_path)
    record = evaluate(eval_cfg(run, "checkpoint=best", "data=mnist", f"data.root={mnist}", "data.system_dir=null",
                               "data.download=false", "data.verify_md5=false", "data.val_size=32"))
    assert json.loads((run / "eval.json").read_text()) == record
    assert record["checkpoint"] == "checkpoints/best.ckpt" and record["epochs_done"] == 2  # val/loss fell each epoch
    assert record["data"]["name"] == "MNIST" and not record["data"]["own"]
    assert record["metrics"]["test/acc"] < 0.5 < json.loads((run / "results.json").read_text())["metrics"]["test/acc"]


def refused(run, *overrides) -> str:
    before = files_of(run)
    with pytest.raises(EvalRefused) as refusal:
        evaluate(eval_cfg(run, *overrides))
    assert files_of(run) == before and not (run / "eval").exists()  # nothing written, nothing evaluated
    return str(refusal.value)


@pytest.mark.slow
def test_a_folder_without_a_finished_run_is_refused(finished, tmp_path):
    run = copy_of(finished, tmp_path)
    results = json.loads((run / "results.json").read_text())
    (run / "results.json").write_text(json.dumps(results | {"status": "stopped"}))
    assert "holds no finished run (results.json: status 'stopped')" in refused(run)
    (run / "results.json").unlink()
    assert refused(run) == f"{run} holds no finished run (no results.json)"
    assert refused(tmp_path / "nowhere").startswith(f"run={tmp_path / 'nowhere'} is not a folder")
    (run / "results.json").write_text(json.dumps(results))
    (run / "checkpoints" / "best.ckpt").unlink()
    assert refused(run, "checkpoint=best").startswith(f"{run} holds no checkpoint checkpoints/best.ckpt")
    # through src/eval.py: one line, exit status 2
    (run / "results.json").unlink()
    done = eval_py([f"run={run}", "~logger"])
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-3000:]
    assert done.stderr.strip() == f"Refused: {run} holds no finished run (no results.json)"


@pytest.mark.slow
def test_a_checkpoint_of_another_config_is_refused(finished, fake_root, tmp_path):
    from rppnets.training.pipeline import train

    other = tmp_path / "other"
    # the finished run's config but for its seed
    train(compose_train(["logger=csv", "model.width=16", "trainer.max_epochs=2", "trainer.accelerator=auto",
                         "callbacks/best_checkpoint=val_loss", "seed=1"], output_dir=other, fake_root=fake_root))
    run = copy_of(finished, tmp_path)
    shutil.copy(other / "checkpoints" / "last.ckpt", run / "checkpoints" / "last.ckpt")
    reason = refused(run)
    assert reason.startswith(f"cannot evaluate: {run / 'checkpoints' / 'last.ckpt'} holds another run (")
    assert "seed: 1 there, 0 here" in reason


@pytest.mark.slow
def test_a_data_set_of_another_input_size_is_refused_before_any_file_is_read(finished, tmp_path):
    run = copy_of(finished, tmp_path)
    # download=true: a data set that would be fetched is refused before it is (the refusal needs no file)
    reason = refused(run, "data=cifar10", f"data.root={tmp_path / 'no-cifar'}", "data.download=true")
    assert not (tmp_path / 'no-cifar').exists()
    assert reason.startswith("data: CIFAR-10 has inputs of shape [3, 32, 32] and 10 classes; the run's model takes "
                             "[1, 28, 28] and 10")
