"""The init ablation's table: per network (unsigned or signed RPP) and init, training loss after epochs 0, 1, 2 and
test accuracy, mean and min-max over seeds, from each finished job's results.json, .hydra/config.yaml and
csv/metrics.csv.

    python experiments/init_ablation/summarize.py outputs/init_ablation/sweep experiments/init_ablation
"""

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path

from omegaconf import OmegaConf

INITS = ("hidden_fan_in", "wide_fan_in", "glorot_hidden", "glorot_wide")
NOTE_EPOCH0 = 0.536  # the original note's RPP training loss after epoch 0


def epoch_losses(csv_path: Path) -> dict[int, float]:
    """Training loss per epoch (the epoch's mean, train/loss_epoch) from a run's metrics CSV."""
    with open(csv_path, newline="") as file:
        return {int(row["epoch"]): float(row["train/loss_epoch"]) for row in csv.DictReader(file)
                if row.get("train/loss_epoch")}


def read_jobs(sweep: Path) -> list[dict]:
    """One row per finished job: network, init, signs, seed, losses after each epoch, test accuracy, epoch time."""
    jobs = []
    for results_path in sorted(sweep.glob("*/results.json")):
        results = json.loads(results_path.read_text())
        if results.get("status", "finished") != "finished":
            continue
        folder = results_path.parent
        config = OmegaConf.load(folder / ".hydra" / "config.yaml")
        losses = epoch_losses(folder / "csv" / "metrics.csv")
        jobs.append({"network": results["network"], "init": config.model.init, "signs": bool(config.model.signs),
                     "seed": int(config.seed), **{f"train_loss_epoch{e}": losses.get(e) for e in range(3)},
                     "test_acc": results["metrics"]["test/acc"], "folder": folder.name})
    return jobs


def cell(values: list[float], digits: int = 3) -> str:
    """mean (min-max) over seeds."""
    return f"{statistics.fmean(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def summary(jobs: list[dict]) -> str:
    header = ["network", "init", "seeds", "train loss epoch 0", "epoch 1", "epoch 2", "test acc"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for signs in (False, True):
        for init in INITS:
            group = [job for job in jobs if job["signs"] == signs and job["init"] == init]
            if not group:
                continue
            cells = [cell([job[f"train_loss_epoch{e}"] for job in group]) for e in range(3)]
            lines.append("| " + " | ".join([group[0]["network"], init, str(len(group)), *cells,
                                            cell([job["test_acc"] for job in group], 4)]) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    jobs = read_jobs(args.sweep)
    if not jobs:
        print(f"no finished jobs in {args.sweep}", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    jobs.sort(key=lambda job: (job["signs"], INITS.index(job["init"]), job["seed"]))
    with open(args.out / "jobs.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(jobs[0]))
        writer.writeheader()
        writer.writerows(jobs)
    (args.out / "summary.md").write_text(summary(jobs))
    print(summary(jobs), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
