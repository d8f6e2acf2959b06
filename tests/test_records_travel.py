"""Committed records travel: no file under experiments/ holds a path of the machine that made it, and the exporter
writes a sweep's records with every path relative to the sweep."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from rppnets.records.export import export_sweep, relative_to_sweep

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
# an absolute path: a slash not inside a word, a URL or a relative path, then at least two components
ABSOLUTE = re.compile(r"(?<![\w.:/~<>$-])/[A-Za-z][\w.-]*/[\w.-][\w./-]*")
# the same on every machine: the folder of Debian's dataset-fashion-mnist package, which conf/data names
ANYWHERE = ("/usr/share/datasets/",)


def absolute_paths(text: str) -> list[str]:
    return [path for path in ABSOLUTE.findall(text) if not path.startswith(ANYWHERE)]


def test_the_pattern_finds_machine_paths_and_nothing_else():
    found = absolute_paths("cwd: /work/runs2\n- path: '/home/me/conf'\nsee https://wandb.ai/a/b and ../../conf, "
                           "data.system_dir=/usr/share/datasets/fashion-mnist, <out>/epochs, a/b/c, `None`/default/`True`")
    assert found == ["/work/runs2", "/home/me/conf"]


def test_no_committed_record_holds_an_absolute_path():
    offending = []
    for path in sorted(EXPERIMENTS.rglob("*")):
        if path.is_file() and path.suffix not in (".png",):
            try:
                text = path.read_text()
            except UnicodeDecodeError:
                continue
            offending += [f"{path.relative_to(ROOT)}: {found}" for found in absolute_paths(text)]
    assert not offending, "export records with `python -m rppnets.records.export` (or --in-place):\n" + \
        "\n".join(offending[:20])


def test_paths_are_rewritten_relative_to_the_sweep():
    sweep, cwd = Path("/work/runs/outputs/sweep"), Path("/work/runs")
    text = ("cwd: /work/runs\n- path: /work/runs/conf\noutput_dir: /work/runs/outputs/sweep/rpp-k2-seed0\n"
            "dir: /work/runs/outputs/sweep\nother: /work/runs2")
    assert relative_to_sweep(text, sweep, cwd) == (
        "cwd: ../..\n- path: ../../conf\noutput_dir: rpp-k2-seed0\ndir: .\nother: /work/runs2")
    # a sweep outside the working directory: the way there would name the machine's folders, so it is not written
    assert relative_to_sweep(text, Path("/scratch/me/sweep"), cwd).startswith("cwd: <cwd>\n- path: <cwd>/conf\n")


@pytest.mark.slow
def test_an_exported_sweep_has_the_records_and_no_machine_path(fake_root, tmp_path):
    sweep = tmp_path / "sweep"
    done = subprocess.run(
        [sys.executable, "src/train.py", "-m", "seed=0", f"hydra.sweep.dir={sweep}", f"data.root={fake_root}",
         "data.system_dir=null", "data.download=false", "data.verify_md5=false", "data.val_size=32",
         "data.batch_size=64", "trainer.max_epochs=1", "trainer.accelerator=cpu", "~callbacks.progress_bar",
         "logger=csv", "model.width=8"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    dest = tmp_path / "record"
    jobs = export_sweep(sweep, dest)
    assert len(jobs) == 1 and (dest / "multirun.yaml").is_file()
    for job in jobs:
        assert {p.name for p in job.iterdir()} == {"results.json", "metrics.csv", ".hydra"}
        hydra = OmegaConf.load(job / ".hydra" / "hydra.yaml").hydra
        assert hydra.runtime.output_dir == job.name and hydra.runtime.cwd == "<cwd>"  # the sweep was outside it
    for path in dest.rglob("*"):
        if path.is_file():
            assert str(tmp_path) not in path.read_text() and str(ROOT) not in path.read_text(), path
