"""Faults provoked for real (kills, signals, divergence, a second writer, damaged files), and what survives them."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pytorch_lightning.loggers import WandbLogger

from helpers import compose_train, descendants, epoch_rows
from rppnets.training.classifier import DivergenceError
from rppnets.training.loggers import ContainedWandbLogger, build_loggers, finish_wandb
from rppnets.data import CorruptDataError, load_split
from rppnets.records.run_folder import RunFolder, FolderBusyError
from rppnets.training.sweep import MAX_DIRNAME, job_dirname
from rppnets.training.pipeline import ConfigError, run_hash, train

ROOT = Path(__file__).resolve().parents[1]
# Long enough (30 epochs of 14 batches) that a signal sent once the first checkpoint exists lands mid-run.
LONG_RUN = ["model.width=32", "trainer.max_epochs=30", "data.batch_size=16", "logger=csv"]


def cli_args(fake_root: Path, folder: Path, *overrides: str) -> list[str]:
    """The command line of a quick CPU run on the fake data, as a user would type it."""
    return [sys.executable, "src/train.py", f"hydra.run.dir={folder}", f"data.root={fake_root}",
            "data.system_dir=null", "data.download=false", "data.verify_md5=false", "data.val_size=32",
            "data.eval_batch_size=64", "trainer.accelerator=cpu", "~callbacks.progress_bar", *overrides]


def start(fake_root, folder, *overrides, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(cli_args(fake_root, folder, *overrides), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"the run ended before {path} appeared:\n{process.stdout.read()}"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def training_metrics(results_path: Path) -> dict:
    metrics = json.loads(results_path.read_text())["metrics"]
    return {key: value for key, value in metrics.items() if not key.startswith(("time/", "memory/"))}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, fake_root) -> Path:
    """The reference: the long run, start to end, in this process."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    train(compose_train(LONG_RUN, output_dir=folder, fake_root=fake_root))
    return folder


@pytest.mark.slow
# All four long (CI time: about 3 minutes with its reference run). In make test a run stopped by SIGTERM resumes to
# what an uninterrupted run gives in test_early_stopping (the same stop, best epoch and weights), and one killed
# mid-trial in test_hparams_search (the same trials' values).
@pytest.mark.parametrize("stop", [pytest.param(signal.SIGKILL, marks=pytest.mark.long),
                                  pytest.param(signal.SIGTERM, marks=pytest.mark.long),
                                  pytest.param(signal.SIGUSR1, marks=pytest.mark.long),
                                  pytest.param(signal.SIGINT, marks=pytest.mark.long)])
def test_stopped_run_resumes_to_the_same_result(stop, uninterrupted, fake_root, tmp_path):
    run = start(fake_root, tmp_path, *LONG_RUN)
    wait_for(tmp_path / "checkpoints" / "last.ckpt", run)
    time.sleep(0.3)  # into the next epoch
    run.send_signal(stop)
    output = run.communicate(timeout=120)[0]
    assert run.returncode in (-stop, 128 + stop), output  # SIGKILL: killed; the others: stopped on purpose
    if stop == signal.SIGKILL:
        assert not (tmp_path / "results.json").exists()
    else:  # stopped, not failed: the job is listed as unfinished and resumes
        assert json.loads((tmp_path / "results.json").read_text())["status"] == "stopped"
        assert "resume: " in output and f"hydra.run.dir={tmp_path}" in output
    state = json.loads((tmp_path / "run_state.json").read_text())

    rerun = subprocess.run(cli_args(fake_root, tmp_path, *LONG_RUN), cwd=ROOT, capture_output=True, text=True,
                           timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert re.search(r": resuming (in|after|before) epoch \d", rerun.stdout)
    assert training_metrics(tmp_path / "results.json") == training_metrics(uninterrupted / "results.json")
    assert epoch_rows(tmp_path / "csv" / "metrics.csv") == epoch_rows(uninterrupted / "csv" / "metrics.csv")
    assert json.loads((tmp_path / "run_state.json").read_text())["wandb_id"] == state["wandb_id"]  # same W&B run


def test_finished_checkpoint_goes_straight_to_testing(fake_root, tmp_path, capsys):
    cfg = compose_train(["model.width=16", "logger=csv"], output_dir=tmp_path, fake_root=fake_root)
    first = train(cfg)
    (tmp_path / "results.json").unlink()  # killed after training, before results.json
    rows = epoch_rows(tmp_path / "csv" / "metrics.csv")
    second = train(compose_train(["model.width=16", "logger=csv"], output_dir=tmp_path, fake_root=fake_root))
    assert "resuming after epoch 1 of 1" in capsys.readouterr().out
    assert {k: v for k, v in second.items() if not k.startswith(("time/", "memory/"))} == \
        {k: v for k, v in first.items() if not k.startswith(("time/", "memory/"))}
    assert epoch_rows(tmp_path / "csv" / "metrics.csv") == rows  # nothing trained again


def test_resume_false_starts_afresh_and_keeps_the_old_files(fake_root, tmp_path):
    train(compose_train(["model.width=16", "logger=csv"], output_dir=tmp_path, fake_root=fake_root))
    train(compose_train(["model.width=16", "logger=csv", "resume=false"], output_dir=tmp_path, fake_root=fake_root))
    (old,) = tmp_path.glob("replaced-*")
    assert (old / "checkpoints" / "last.ckpt").is_file() and (old / "results.json").is_file()
    assert "resume=false" in (old / "REASON").read_text()


def test_divergence_fails_the_job_and_keeps_what_was_written(fake_root, tmp_path):
    cfg = compose_train(["model.width=16", "logger=csv", "optimizer.lr=1e30"], output_dir=tmp_path,
                        fake_root=fake_root)
    with pytest.raises(DivergenceError, match=r"loss (nan|inf) at epoch 0, step \d+"):
        train(cfg)
    text = (tmp_path / "results.json").read_text()
    results = json.loads(text, parse_constant=lambda name: pytest.fail(f"results.json holds bare {name}"))
    assert results["status"] == "failed" and "DivergenceError" in results["error"]
    assert (tmp_path / "csv" / "metrics.csv").is_file()
    assert RunFolder(tmp_path).finished_results(results["config_hash"]) is None  # never counted as finished


@pytest.mark.parametrize("override,message", [
    ("optimizer.lr=inf", "optimizer.lr=inf is invalid; allowed: a finite number > 0"),
    ("optimizer.lr=-1", "optimizer.lr=-1 is invalid; allowed: a finite number > 0"),
    ("seed=4294967296", r"seed=4294967296 is invalid; allowed: an integer in \[0, 4294967295\]"),
    ("model=rpp model.k=5000", "needs about .* GiB to train, but this machine has .* available; lower model.k"),
])
def test_bad_values_are_refused_before_anything_is_written(override, message, fake_root, tmp_path):
    cfg = compose_train(override.split(), output_dir=tmp_path / "run", fake_root=fake_root)
    with pytest.raises(ConfigError, match=message):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_unwritable_run_folder_is_refused_at_start(fake_root, tmp_path):
    (tmp_path / "a_file").write_text("")
    cfg = compose_train(["model.width=16"], output_dir=tmp_path / "a_file" / "run", fake_root=fake_root)
    with pytest.raises(ConfigError, match="run folder .*a_file/run is not writable"):
        train(cfg)


@pytest.mark.slow
def test_second_process_in_a_live_run_folder_is_refused(fake_root, tmp_path):
    endless = [*LONG_RUN, "trainer.max_epochs=1000"]  # still training when the second has started, however slowly
    first = start(fake_root, tmp_path, *endless)
    wait_for(tmp_path / "run_state.json", first)
    second = subprocess.run(cli_args(fake_root, tmp_path, *endless), cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert second.returncode == 1
    assert f"run folder {tmp_path} is in use by another process (pid {first.pid}" in second.stderr
    assert first.poll() is None  # undisturbed: still training
    first.send_signal(signal.SIGUSR1)
    output = first.communicate(timeout=120)[0]
    assert first.returncode == 128 + signal.SIGUSR1, output
    assert "resuming" not in output and (tmp_path / "checkpoints" / "last.ckpt").is_file()


def test_lock_names_the_holder_and_dies_with_it(tmp_path):
    holder = RunFolder(tmp_path)
    holder.lock()
    with pytest.raises(FolderBusyError, match=f"pid {os.getpid()}"):
        RunFolder(tmp_path).lock()
    holder.unlock()  # what the kernel does when the holder dies
    RunFolder(tmp_path).lock()


@pytest.mark.slow
def test_a_failing_job_does_not_stop_the_sweep(fake_root, tmp_path):
    args = cli_args(fake_root, tmp_path, "trainer.max_epochs=1", "logger=csv")
    args[2:3] = ["-m", f"hydra.sweep.dir={tmp_path}", "model.width=0,16", "optimizer.lr=1e-3,1e30"]
    sweep = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert sweep.returncode == 1, sweep.stdout + sweep.stderr
    states = {}
    for results in tmp_path.glob("*/results.json"):
        record = json.loads(results.read_text())
        states[results.parent.name] = (record["status"], record.get("error", ""))
    assert len(states) == 4
    assert [s for s, _ in states.values()].count("finished") == 1  # width 16, lr 1e-3
    assert sum("model.width=0" in error for _, error in states.values()) == 2
    assert sum("DivergenceError" in error for _, error in states.values()) == 1
    assert "1 finished" in sweep.stdout and "3 failed" in sweep.stdout and "failed: invalid config" in sweep.stdout


@pytest.mark.parametrize("where", ["start", "middle"])
def test_damaged_archive_is_named_and_leaves_no_partial_file(where, fake_root, tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for source in (fake_root / "FashionMNIST" / "raw").glob("*.gz"):
        (raw / source.name).write_bytes(source.read_bytes())
    damaged = raw / "train-images-idx3-ubyte.gz"
    data = bytearray(damaged.read_bytes())
    data[0 if where == "start" else len(data) // 2] ^= 0xFF  # the gzip magic, or inside the deflate stream
    damaged.write_bytes(bytes(data))
    before = sorted(p.name for p in raw.iterdir())
    with pytest.raises(CorruptDataError, match="train-images-idx3-ubyte.gz"):
        load_split(raw, train=True, verify_md5=False)
    assert sorted(p.name for p in raw.iterdir()) == before  # read in place: nothing unpacked, no partial file


def test_the_data_set_is_part_of_the_run(tmp_path):
    """A finished MNIST run is not KMNIST's in the same folder: the two share one data module and its settings and
    are told apart by `data.dataset` alone. Where the files lie is not part of the run."""
    def hash_of(*overrides):
        return run_hash(compose_train(["logger=csv", *overrides], output_dir=tmp_path))

    kmnist = hash_of("data=kmnist")
    assert hash_of("data=mnist") != kmnist
    assert hash_of("data=kmnist", "data.root=/elsewhere", "data.system_dir=/shared") == kmnist


def test_job_folder_names_stay_short():
    overrides = ",".join(f"model.option_{i}=value_{i}" for i in range(40)) + ",data.root=/a/b"
    name = job_dirname(overrides)
    assert len(name) <= MAX_DIRNAME and "/" not in name
    assert job_dirname(overrides.replace("value_3", "value_4")) != name  # still one folder per job
    assert job_dirname("model.width=10") == "model.width=10"


@pytest.mark.slow
def test_online_wandb_without_a_server_falls_back_offline_once(fake_root, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setattr("rppnets.training.loggers._online_failed", False)
    took = {}
    with pytest.warns(UserWarning, match="logging offline instead") as warned:
        for job in ("a", "b"):
            started = time.monotonic()
            train(compose_train(["model.width=16"], output_dir=tmp_path / job, fake_root=fake_root))
            took[job] = time.monotonic() - started
    assert len([w for w in warned if "offline instead" in str(w.message)]) == 1  # the second job went offline at once
    for job in ("a", "b"):
        assert list((tmp_path / job / "wandb").glob("offline-run-*"))
    wall_s = json.loads((tmp_path / "a" / "results.json").read_text())["metrics"]["time/wall_s"]
    assert wall_s < took["a"] - 10  # the first job waited about ONLINE_TIMEOUT_S for W&B, outside its wall time


def wandb_service(run: subprocess.Popen) -> int | None:
    """The pid of the run's W&B service process (wandb-core), once it runs."""
    for pid in descendants(run.pid):
        try:
            if "wandb-core" in Path(f"/proc/{pid}/cmdline").read_text():
                return pid
        except FileNotFoundError:
            continue
    return None


def test_a_config_naming_lightnings_own_wandb_logger_is_contained_too(tmp_path, monkeypatch):
    """A user's logger config with `_target_: pytorch_lightning.loggers.WandbLogger` gets the same containment."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose_train(["logger=wandb", "logger.wandb._target_=pytorch_lightning.loggers.WandbLogger"],
                        output_dir=tmp_path)
    (logger,) = [one for one in build_loggers(cfg.logger, {"seed": 0}) if isinstance(one, WandbLogger)]
    try:
        assert isinstance(logger, ContainedWandbLogger)
    finally:
        finish_wandb()


@pytest.mark.slow
@pytest.mark.long  # make test: tests/test_quiet_stop.py kills wandb-core mid-run and stops the job
@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM])
def test_wandb_service_killed_mid_run_the_run_finishes_with_its_whole_record(stop, uninterrupted, fake_root,
                                                                            tmp_path):
    """SLURM signals every process of a job step: a SIGTERM (pre-emption, scancel --signal) kills W&B's service
    process too. Every W&B call after that raised ConnectionResetError, the run was recorded failed and the stop's
    checkpoint was never saved.

    The run inherits a W&B service address from its launcher (as pytest's own W&B runs once did, making every run
    started after them write into pytest's service): the run must still start and own its service."""
    launcher_service = {**os.environ, "WANDB_SERVICE": f"3-{os.getpid()}-unix-{tmp_path / 'gone.sock'}"}
    run = start(fake_root, tmp_path, *[a for a in LONG_RUN if a != "logger=csv"], env=launcher_service)  # W&B on
    wait_for(tmp_path / "checkpoints" / "last.ckpt", run)
    service = wandb_service(run)
    assert service is not None, "no wandb-core process under the run"
    os.kill(service, stop)
    output = run.communicate(timeout=300)[0]
    assert run.returncode == 0, output[-3000:]
    assert output.count("W&B stopped logging") == 1, output[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["status"] == "finished"
    assert training_metrics(tmp_path / "results.json") == training_metrics(uninterrupted / "results.json")
    assert epoch_rows(tmp_path / "csv" / "metrics.csv") == epoch_rows(uninterrupted / "csv" / "metrics.csv")


@pytest.mark.slow
def test_checkpoint_folder_lost_mid_run_fails_at_the_next_save(fake_root, tmp_path):
    run = start(fake_root, tmp_path, *LONG_RUN)
    checkpoints = tmp_path / "checkpoints"
    wait_for(checkpoints / "last.ckpt", run)
    # Renamed away in one step: the run may be writing into the folder right
    # now (previous.ckpt's rotation), which makes a plain rmtree race with it.
    checkpoints.rename(tmp_path / "checkpoints.lost")
    checkpoints.write_text("")  # the next checkpoint cannot be written
    output = run.communicate(timeout=120)[0]
    assert run.returncode == 1, output
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["status"] == "failed" and "checkpoints" in results["error"]
    epochs = {row["epoch"] for row in epoch_rows(tmp_path / "csv" / "metrics.csv")}
    assert len(epochs) < 5  # stopped at the next epoch's end, not after all 30
