"""A sweep's records made fit to commit: each job's results, metrics CSV and Hydra config, with no path of the machine.

`python -m rppnets.records.export SWEEP DEST` copies, for every job folder of SWEEP, its results.json, its metrics CSV
(as metrics.csv) and .hydra/*.yaml into DEST/<job folder>/, and the sweep's multirun.yaml into DEST/; checkpoints and
W&B files stay behind. Every absolute path Hydra recorded (the sweep and job folders, the working directory, the
config folder) is written relative to the sweep folder, so a record reads the same on any machine. `--in-place DEST`
does the same rewriting to records already copied.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
from pathlib import Path

from omegaconf import OmegaConf

from rppnets.records.jobs import job_folders
from rppnets.records.run_folder import METRICS_CSV, RESULTS

HYDRA_FILES = ("config.yaml", "overrides.yaml", "hydra.yaml")
MULTIRUN = "multirun.yaml"


def machine_paths(hydra_yaml: Path) -> tuple[Path, Path] | None:
    """(sweep folder, working directory) as absolute paths on the machine that ran the job, from its hydra.yaml (or a
    sweep's multirun.yaml); None if it records no working directory."""
    cfg = OmegaConf.load(hydra_yaml)
    cwd = OmegaConf.select(cfg, "hydra.runtime.cwd")
    if not cwd or not os.path.isabs(cwd):
        return None
    sweep = Path(cwd) / str(OmegaConf.select(cfg, "hydra.sweep.dir", default="") or "")
    return sweep, Path(cwd)


def relative_to_sweep(text: str, sweep: Path, cwd: Path) -> str:
    """`text` with every occurrence of the sweep folder, and then of the working directory, written relative to the
    sweep folder: ``/work/runs/outputs/s/job-1`` -> ``job-1``, ``/work/runs/conf`` -> ``../../conf``. A working
    directory that does not hold the sweep becomes ``<cwd>``: the way to it would name the machine's folders."""
    for prefix in sorted({sweep, cwd}, key=lambda path: len(str(path)), reverse=True):
        relative = os.path.relpath(prefix, sweep) if prefix in (sweep, *sweep.parents) else "<cwd>"
        inside = "" if relative == "." else f"{relative}/"  # what `<prefix>/` becomes
        # the prefix as a whole path or the start of one (/work/runs, /work/runs/conf; not /work/runs2)
        text = re.sub(rf"{re.escape(str(prefix))}(?:(/)|(?![\w.-]))",
                      lambda found: inside if found.group(1) else relative, text)
    return text


def rewrite(path: Path, sweep: Path, cwd: Path) -> bool:
    """Rewrites one file's machine paths in place; True if it changed."""
    text = path.read_text()
    new = relative_to_sweep(text, sweep, cwd)
    if new != text:
        path.write_text(new)
    return new != text


def make_relative(records: Path) -> list[Path]:
    """Rewrites every .hydra/*.yaml and multirun*.yaml below `records` by the paths its own Hydra config names (a
    job's hydra.yaml names the sweep and working directory it ran in); the files changed."""
    changed = []
    for yaml in sorted(records.rglob("*.yaml")):
        if yaml.parent.name == ".hydra":
            source = yaml.parent / "hydra.yaml"
        elif yaml.name.startswith("multirun"):
            source = yaml
        else:
            continue
        paths = machine_paths(source) if source.is_file() else None
        if paths is not None and rewrite(yaml, *paths):
            changed.append(yaml)
    return changed


def export_sweep(sweep: Path, dest: Path) -> list[Path]:
    """Copies the records of every job of `sweep` into `dest` (layout above) and makes their paths relative; returns
    the job folders written."""
    written = []
    for folder in job_folders(sweep):
        target = dest / folder.relative_to(sweep)
        (target / ".hydra").mkdir(parents=True, exist_ok=True)
        for name, copy_as in ((RESULTS, RESULTS), (METRICS_CSV, "metrics.csv")):
            if (folder / name).is_file():
                shutil.copy2(folder / name, target / copy_as)
        for name in HYDRA_FILES:
            if (folder / ".hydra" / name).is_file():
                shutil.copy2(folder / ".hydra" / name, target / ".hydra" / name)
        written.append(target)
    if (sweep / MULTIRUN).is_file():
        shutil.copy2(sweep / MULTIRUN, dest / MULTIRUN)
    make_relative(dest)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path, nargs="?", help="the sweep folder to export")
    parser.add_argument("dest", type=Path, help="where the records go (e.g. experiments/<name>/jobs)")
    parser.add_argument("--in-place", action="store_true", help="only rewrite the paths of records already in dest")
    args = parser.parse_args(argv)
    if args.in_place:
        changed = make_relative(args.dest)
        print(f"{len(changed)} files rewritten below {args.dest}")
        return
    if args.sweep is None or not args.sweep.is_dir():
        parser.error(f"sweep folder {args.sweep} does not exist")
    jobs = export_sweep(args.sweep, args.dest)
    print(f"{len(jobs)} jobs exported from {args.sweep} to {args.dest} (paths relative to the sweep)")


if __name__ == "__main__":
    main()
