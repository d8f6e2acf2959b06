"""Every command a run prints runs as printed when pasted into a shell, and every file it names is there (or is said
not to be): the stop line's rerun and resume commands, the summary's W&B hints, the data errors."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from chaos import command, environment
from helpers import compose_train, descendants
from rppnets.console import file_named, hydra_value, program, shell_line
from rppnets.data import DataNotReadableError, read_idx
from rppnets.training.pipeline import print_summary, train

ROOT = Path(__file__).resolve().parents[1]
# A run folder's name with what a shell and Hydra's override grammar each read specially: spaces, both quotes, = and ,
# (Hydra's sweep and key separators), $ (the shell's), a backslash, and letters beyond ASCII.
AWKWARD = "run a'b\"c=d,e $HOME é\\x"
NAMES = [AWKWARD, "plain/path_1.0", "1e3", "true", "null", "a,b", "a=b", "sp ace", "it's", 'say "hi"', "ends\\",
         "\\\"", "$x", "${x}", "\\${x}", "é日本", "", "(a)[b]{c}", "a:b@c%d+e", "~user", "tab\there"]


def words(line: str, pasted_before: tuple[str, ...] = ()) -> list[str]:
    """The words a shell makes of `line` (bash, for real), after the lines `pasted_before` ran in it."""
    script = "\n".join([*pasted_before, "printf '%s\\0' " + line])
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    return done.stdout.split("\0")[:-1]


def test_hydra_reads_each_quoted_value_back_as_it_was():
    parser = OverridesParser.create()
    for name in NAMES:
        override = f"hydra.run.dir={hydra_value(name)}"
        (pasted,) = words(shell_line([override]))  # through a shell first, as a printed command is
        value = parser.parse_override(pasted).value()
        node = OmegaConf.create({"dir": None})
        OmegaConf.update(node, "dir", value)  # Hydra sets the value into the config, where ${...} would resolve
        assert node.dir == name, (name, pasted)
    assert hydra_value("/runs/a/b_1.0") == "/runs/a/b_1.0"  # a plain path prints as it is


def test_a_named_file_is_quoted_and_said_missing_when_it_is_not_there(tmp_path):
    there = tmp_path / AWKWARD
    there.mkdir()
    assert words(file_named(there)) == [str(there)]
    assert file_named(tmp_path / "gone") == f"{tmp_path / 'gone'} (missing)"


def sigterm_caught(pid: int) -> bool:
    """Whether the process has a handler of its own for SIGTERM (the run's stop handler is in)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:  # ended: the caller says how
        return False
    caught = next(line for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(caught.split()[1], 16) >> (signal.SIGTERM - 1) & 1)


def train_process(process: subprocess.Popen) -> int:
    """The training process of a pasted line: bash itself, where it ran the line's one command in its place."""
    for pid in [process.pid, *descendants(process.pid)]:
        if b"src/train.py" in Path(f"/proc/{pid}/cmdline").read_bytes():
            return pid
    raise AssertionError("no training process")


def stop(process: subprocess.Popen, ready) -> str:
    """SIGTERM to the run of `process` once `ready()`, checked still running then; its output, its stop line last."""
    deadline = time.monotonic() + 300
    while not ready():
        assert process.poll() is None, f"the run ended before it was stopped:\n{process.communicate()[0]}"
        assert time.monotonic() < deadline, "the run never got ready to be stopped"
        time.sleep(0.02)
    assert process.poll() is None  # still running when the signal lands
    os.kill(train_process(process), signal.SIGTERM)
    output = process.communicate(timeout=300)[0]
    assert process.returncode == 128 + signal.SIGTERM, output
    assert "received SIGTERM: stopping at the next safe point" in output  # the run's handler caught it, running
    return output


def paste(line: str) -> subprocess.Popen:
    """The printed command line, pasted into a shell as it is."""
    return subprocess.Popen(["bash", "-c", line], cwd=ROOT, env=environment(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
@pytest.mark.long  # 45 s; the other tests here run the other printed commands as printed
def test_the_stop_lines_commands_run_as_printed(fake_root, tmp_path):
    folder = tmp_path / AWKWARD
    first = [f"hydra.run.dir={hydra_value(folder)}" if arg.startswith("hydra.run.dir=") else arg
             for arg in command(fake_root, folder)]
    run = subprocess.Popen(first, cwd=ROOT, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
    # Stopped before its first step: as soon as its stop handler is in (it trains nothing before that).
    output = stop(run, lambda: sigterm_caught(run.pid))
    assert not (folder / "checkpoints" / "last.ckpt").exists()
    afresh = re.search(r"^stopped by SIGTERM; no checkpoint yet, so it starts afresh; run again: (.+)$", output, re.M)
    assert afresh, output

    rerun = paste(afresh[1])  # runs in the same folder, from the start; stopped once its first checkpoint is saved
    output = stop(rerun, lambda: (folder / "checkpoints" / "last.ckpt").exists())
    assert "resuming" not in output
    (moved,) = re.findall(r"^\S+: starting afresh; the previous attempt's files are in (.+)$", output, re.M)
    assert Path(*words(moved)).parent == folder and Path(*words(moved)).is_dir(), moved
    resume = re.search(r"^stopped by SIGTERM; checkpoint (.+?); resume: (.+)$", output, re.M)
    assert resume, output
    assert words(resume[1]) == [str(folder / "checkpoints" / "last.ckpt")]

    resumed = paste(resume[2])
    output = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, output
    resumed_with = re.search(r"^\S+: resuming (in|after) epoch \d of 3 \(.*step \d+\) with (.+)$", output, re.M)
    assert resumed_with and words(resumed_with[2]) == [str(folder / "checkpoints" / "last.ckpt")], output
    check_summary(output[output.index(" finished in "):], folder)


def check_summary(summary: str, folder: Path) -> None:
    """The summary of a run in `folder` with an offline W&B run: each path pastes as one word, and its W&B lines,
    pasted in order into one shell, name the W&B run once and give the commands that show and upload it."""
    (run_folder,) = re.findall(r"^  run folder: (r=.+)$", summary, re.M)
    (csv_file,) = re.findall(r"^  metrics CSV: (.+)$", summary, re.M)
    assert words('"$r"', pasted_before=(run_folder,)) == [str(folder)]
    assert words(csv_file, pasted_before=(run_folder,)) == [str(folder / "csv" / "metrics.csv")]
    assert (folder / "csv" / "metrics.csv").is_file()
    (wandb_run,) = re.findall(r"^  W&B run: (w=.+)$", summary, re.M)
    (look,) = re.findall(r"^  look: (.+)$", summary, re.M)
    (upload,) = re.findall(r"^  upload: (.+)$", summary, re.M)
    for hint, verb in ((look, "leet"), (upload, "sync")):  # not run: leet draws a screen, sync needs a server
        program, *args = words(hint, pasted_before=(run_folder, wandb_run))
        (w,) = args[1:]
        assert shutil.which(program) and Path(program).name == "wandb" and args[0] == verb, hint
        assert Path(w).parent == folder / "wandb" and list(Path(w).glob("*.wandb")), hint
    assert summary.count("offline-run-") == 1  # the W&B run named once


def test_a_disabled_wandb_is_said_so_and_no_folder_is_named(fake_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    folder = tmp_path / AWKWARD
    overrides = ["model.width=16", "logger=wandb", f"paths.output_dir={hydra_value(folder)}"]
    train(compose_train(overrides, fake_root=fake_root))
    summary = capsys.readouterr().out.split(" finished in ")[1].splitlines()
    assert "  W&B run: none on disk (W&B was disabled)" in summary
    (run_folder,) = re.findall(r"^  run folder: (r=.+)$", "\n".join(summary), re.M)
    named = [re.fullmatch(r"  (run folder: r=|metrics CSV: )(.+)", line) for line in summary]
    assert [Path(*words(m[2], pasted_before=(run_folder,))).exists() for m in named if m] == [True, True]
    assert not (folder / "wandb").exists()
    train(compose_train(overrides, fake_root=fake_root))  # finished: left as it is, its folder named as one word
    (again,) = re.findall(r"^\S+: already finished in (.+); left as it is .*$", capsys.readouterr().out, re.M)
    assert words(again) == [str(folder)]


# A sweep job's folder as it is on a researcher's machine, below the checkout (tmp_path stands for it).
CHECKOUT = "/home/researcher/rppnets"
JOB_FOLDER = "outputs/multirun/2026-12-08_12-00-00-123456/0-model=rpp,model.k=10"
SUMMARY_WIDTH = 120


def test_each_summary_line_fits_the_width_and_each_command_pastes(tmp_path, capsys):
    for folder in (tmp_path / JOB_FOLDER, tmp_path / AWKWARD):
        wandb_run = folder / "wandb" / "offline-run-20261208_120000-abc123def456"
        (wandb_run / "files").mkdir(parents=True)
        (wandb_run / "run-abc123def456.wandb").touch()
        (folder / "csv").mkdir()
        (folder / "csv" / "metrics.csv").touch()
        metrics = {"train/loss": 1.234e-05, "val/loss": 0.3391, "val/acc": 0.8794, "test/loss": 1.0e-10,
                   "test/acc": 0.8712, "model/params_trainable": 12_345_678, "time/wall_s": 1234.5}
        print_summary({"run_name": "rpp-w1000-k100-nobias-lr0.01-s0", "metrics": metrics, "csv": "csv/metrics.csv"},
                      folder, str(wandb_run / "files"))
        summary = capsys.readouterr().out
        check_summary(summary, folder)
        if folder.name != AWKWARD:
            assert all(len(line.replace(str(tmp_path), CHECKOUT)) <= SUMMARY_WIDTH for line in summary.splitlines())
            assert all(f"{key} " in summary for key in metrics if key != "time/wall_s")


def test_a_stop_line_names_a_job_below_the_working_directory_as_typed_there(tmp_path, monkeypatch):
    """A checkout's own outputs/ is named from the checkout (where the run was started and its line is pasted): the
    line stays short, and the pasted command resumes that very folder; a folder elsewhere keeps its whole path."""
    import importlib.util

    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from helpers import CONF_DIR

    spec = importlib.util.spec_from_file_location("train_script", ROOT / "src" / "train.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    checkout, elsewhere = tmp_path / CHECKOUT.lstrip("/"), tmp_path / "scratch" / "run"
    for folder in (checkout / JOB_FOLDER, elsewhere):
        (folder / "checkpoints").mkdir(parents=True)
        (folder / "checkpoints" / "last.ckpt").touch()
    monkeypatch.chdir(checkout)
    monkeypatch.setattr(sys, "argv", ["src/train.py", "seed=3"])  # as the user started it, from the checkout
    saved = HydraConfig.instance().cfg
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            HydraConfig.instance().set_config(compose("train", overrides=["seed=3"], return_hydra_config=True))
        line = script.stop_line(signal.SIGTERM, checkout / JOB_FOLDER, multirun=False)
        away = script.stop_line(signal.SIGTERM, elsewhere, multirun=False)
    finally:
        HydraConfig.instance().cfg = saved
    stopped = re.fullmatch(r"stopped by SIGTERM; checkpoint (.+?); resume: (.+)", line)
    assert stopped and words(stopped[1]) == [f"{JOB_FOLDER}/checkpoints/last.ckpt"], line
    *_, seed, run_dir = words(stopped[2])
    assert seed == "seed=3" and OverridesParser.create().parse_override(run_dir).value() == JOB_FOLDER, line
    assert len(line.replace(program(), "python")) <= 2 * SUMMARY_WIDTH, line
    assert words(re.fullmatch(r"stopped by SIGTERM; checkpoint (.+?); resume: .+", away)[1]) == [
        str(elsewhere / "checkpoints" / "last.ckpt")], away


UNREADABLE = """
import sys
from pathlib import Path
from rppnets.data import load_split
try:
    load_split(Path(sys.argv[1]), train=True, verify_md5=False)
except Exception as err:
    print(f"{type(err).__name__}: {err}")
"""


def test_a_data_file_without_read_permission_is_said_so_by_name(fake_root, tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    shutil.copytree(fake_root / "FashionMNIST" / "raw", raw)
    locked = raw / "train-labels-idx1-ubyte.gz"
    locked.chmod(0)
    # root reads any file whatever its mode: the reader runs without the capabilities that let it (still as root, so
    # the rest of its files, pytest's own folders among them, stay readable)
    prefix = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root, and no setpriv to drop the capabilities that read any file")
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    done = subprocess.run([*prefix, sys.executable, "-c", UNREADABLE, str(raw)], capture_output=True, text=True,
                          timeout=300)
    assert done.stdout.startswith(f"DataNotReadableError: {locked} cannot be read: permission denied (user "), \
        done.stdout + done.stderr
    assert "corrupt" not in done.stdout and "make data" not in done.stdout


def test_other_failures_to_read_a_data_file_say_their_cause(tmp_path):
    with pytest.raises(DataNotReadableError, match=f"^{re.escape(str(tmp_path))} cannot be read: Is a directory "
                                                   r"\(EISDIR\)\.$"):
        read_idx(tmp_path)
