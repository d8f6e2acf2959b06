"""`python -m rppnets.analysis.search_report SEARCHES --untuned JOBS`: each search's best value against the default.

For every search folder under SEARCHES (hparams_search=: best.yaml, trials.csv, search.yaml), one row: the trials
finished, the best learning rate and its validation loss, and the validation loss after the same epochs of the run
at the default (Adam 1e-3) found in JOBS by its run name (an untuned sweep's jobs, e.g. 30-epoch ones, whose first
epochs are the same run). Writes SEARCHES/summary.md.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from pathlib import Path

from omegaconf import OmegaConf

from rppnets.records.best_params import BEST
from rppnets.records.jobs import job_folders, read_curve
from rppnets.records.run_folder import RESULTS, RunFolder

STUDY = re.compile(r"^(?P<search>[^-]+)-(?P<model>.+)-e(?P<epochs>\d+)-s(?P<seed>\d+)$")  # lr-rpp-w10-k100-e5-s0


def search_rows(searches: Path, untuned: Path | None) -> list[dict]:
    """One row per search folder that holds a best.yaml, in the order of their folders' names."""
    runs = {read_run_name(folder): folder for folder in job_folders(untuned)} if untuned else {}
    rows = []
    for best_path in sorted(Path(searches).glob(f"*/{BEST}")):
        best = OmegaConf.to_container(OmegaConf.load(best_path))
        name = STUDY.match(best["study"])
        with open(best_path.parent / "trials.csv", newline="") as file:
            values = [float(row[best["metric"]]) for row in csv.DictReader(file) if row["state"] == "complete"]
        row = {"search": best_path.parent.name, "study": best["study"], "trials": best["trials_complete"],
               "best_lr": best["best_params"].get("optimizer.lr"), "best_value": best["best_value"],
               "worst_value": max(values), "default_value": None}
        if name and (folder := runs.get(f"{name['model']}-s{name['seed']}")) is not None:
            # a run folder's csv/metrics.csv, or a committed record's metrics.csv; epochs are numbered from 0
            path = next((p for p in (folder / "csv" / "metrics.csv", folder / "metrics.csv") if p.is_file()), None)
            epoch = read_curve(path).get(int(name["epochs"]) - 1, {}) if path else {}
            row["default_value"] = epoch.get(best["metric"].replace("/", "_"))
        rows.append(row)
    return rows


def read_run_name(folder: Path) -> str | None:
    results, _ = RunFolder(folder).read_json_or_reason(RESULTS)
    return (results or {}).get("run_name")


def summary_markdown(rows: list[dict]) -> str:
    lines = ["| search | trials | best lr | best val/loss | val/loss at lr 1e-3 | best / 1e-3 | worst trial |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        default = row["default_value"]
        lines.append(f"| {row['search']} | {row['trials']} | {row['best_lr']:.3g} | {row['best_value']:.4f} | "
                     + (f"{default:.4f} | {row['best_value'] / default:.3f}" if default else "not found | ")
                     + f" | {row['worst_value']:.4f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("searches", type=Path, help="a folder of search folders (each with best.yaml)")
    parser.add_argument("--untuned", type=Path, help="the jobs at the default learning rate, for comparison")
    args = parser.parse_args(argv)
    rows = search_rows(args.searches, args.untuned)
    if not rows:
        print(f"search_report: no search folder with {BEST} in {args.searches}", file=sys.stderr)
        return 1
    (args.searches / "summary.md").write_text(summary_markdown(rows))
    print(summary_markdown(rows), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
