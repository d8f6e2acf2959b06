"""Frontier and controls reports: test accuracy and final training loss against parameters, or per permutation.

    python -m rppnets.analysis.frontier_report outputs/frontier/<date>                      # by k: frontier.png/.csv, summary.md,
                                                                                            # curves.png/.csv (per epoch)
    python -m rppnets.analysis.frontier_report outputs/controls/<date> --by permutation     # controls.png/.csv, summary.md
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from omegaconf import OmegaConf

from rppnets.records.jobs import read_curve

METHOD_ORDER = ("rpp", "rpp_signed", "dense", "hashed", "lowrank")  # legend order; other networks follow by name
PERMUTATION_ORDER = ("identity", "random", "stored", "shared", "generated")
LABELS = {"rpp": "RPP (m=10)", "rpp_signed": "signed RPP (m=10)", "dense": "dense, same budget",
          "hashed": "HashedNets", "lowrank": "low-rank"}
# Each method's own colour, whichever others a sweep holds (the first four are those the default cycle gave them when
# all four were drawn); other networks take the cycle's next colours.
COLOURS = {"rpp": "C0", "dense": "C1", "hashed": "C2", "lowrank": "C3", "rpp_signed": "C4"}
PERMUTATION_LABELS = {"identity": "identity\n(unpermuted)", "random": "random\n(randperm)",
                      "stored": "stored\n(Feistel)"}
JOB_COLUMNS = ["network", "k", "permutation", "seed", "params_trainable", "test_acc", "final_train_loss", "folder"]


@dataclass
class Job:
    """The numbers of one finished job that the report shows."""

    network: str
    k: int | None
    permutation: str | None
    seed: int | None
    params_trainable: int
    test_acc: float
    final_train_loss: float
    folder: str


def _finite(value) -> float:
    return float("nan") if value is None else float(value)


def read_jobs(sweep_dir: str | Path) -> list[Job]:
    """Finished jobs below sweep_dir: a results.json without "status" or with status "finished"."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep folder {sweep_dir} does not exist")
    jobs = []
    for path in sorted(sweep_dir.rglob("results.json")):
        results = json.loads(path.read_text())
        if results.get("status", "finished") != "finished":
            continue  # running, failed or interrupted
        config_path = path.parent / ".hydra" / "config.yaml"
        config = OmegaConf.load(config_path) if config_path.is_file() else OmegaConf.create()
        metrics = results.get("metrics", {})
        k = OmegaConf.select(config, "model.k")
        jobs.append(Job(
            network=results["network"],
            k=None if k is None else int(k),
            permutation=OmegaConf.select(config, "model.permutation"),
            seed=results.get("seed"),
            params_trainable=int(metrics["model/params_trainable"]),
            test_acc=_finite(metrics.get("test/acc")),
            final_train_loss=_finite(metrics.get("train/loss")),
            folder=str(path.parent.relative_to(sweep_dir)),
        ))
    if not jobs:
        raise FileNotFoundError(f"no finished jobs below {sweep_dir} (no results.json with status finished)")
    return jobs


def _order(value: str, order: tuple[str, ...]) -> tuple[int, str]:
    return (order.index(value), "") if value in order else (len(order), str(value))


def group_key(job: Job, by: str) -> tuple:
    """The summary row a job belongs to: (network, k) for the frontier, (permutation,) for the controls."""
    return (job.network, job.k) if by == "k" else (job.permutation,)


def _key_order(key: tuple, by: str) -> tuple:
    if by == "k":
        return _order(key[0], METHOD_ORDER), -1 if key[1] is None else key[1]
    return _order(key[0], PERMUTATION_ORDER)


def summarize(jobs: list[Job], by: str = "k") -> list[dict]:
    """One row per (network, k) (by="k") or per permutation (by="permutation"): means and min-max over seeds."""
    groups: dict[tuple, list[Job]] = {}
    for job in jobs:
        groups.setdefault(group_key(job, by), []).append(job)
    rows = []
    for key in sorted(groups, key=lambda key: _key_order(key, by)):
        group = groups[key]
        acc = [job.test_acc for job in group]
        loss = [job.final_train_loss for job in group]
        params = sorted({job.params_trainable for job in group})
        row = {"network": key[0], "k": key[1]} if by == "k" else {"permutation": key[0]}
        rows.append(row | {
            "params_trainable": params[0] if len(params) == 1 else statistics.fmean(params),
            "seeds": len(group),
            "test_acc": statistics.fmean(acc), "test_acc_min": min(acc), "test_acc_max": max(acc),
            "final_train_loss": statistics.fmean(loss), "final_train_loss_min": min(loss),
            "final_train_loss_max": max(loss),
        })
    return rows


PANELS = (("test_acc", "Test accuracy"), ("final_train_loss", "Final training loss"))


def frontier_figure(rows: list[dict]) -> Figure:
    """Two panels against trainable parameters (log x): one line per method, mean over seeds, min-max band."""
    figure = Figure(figsize=(11, 4.5))
    FigureCanvasAgg(figure)  # a bare Figure on the Agg canvas leaves pyplot's global backend alone
    for index, (metric, title) in enumerate(PANELS):
        axes = figure.add_subplot(1, 2, index + 1)
        for network in dict.fromkeys(row["network"] for row in rows):
            line = sorted((row for row in rows if row["network"] == network), key=lambda row: row["params_trainable"])
            x = [row["params_trainable"] for row in line]
            (drawn,) = axes.plot(x, [row[metric] for row in line], marker="o", label=LABELS.get(network, network),
                                 color=COLOURS.get(network))
            axes.fill_between(x, [row[f"{metric}_min"] for row in line], [row[f"{metric}_max"] for row in line],
                              color=drawn.get_color(), alpha=0.2, linewidth=0)
        axes.set(xscale="log", xlabel="Trainable parameters", ylabel=title, title=title)
        axes.grid(True, which="both", alpha=0.3)
    figure.axes[0].legend()
    figure.tight_layout()
    return figure


CURVE_PANELS = (("train_loss", "Training loss"), ("val_acc", "Validation accuracy"))
CURVE_COLUMNS = ["network", "k", "epoch", "seeds"] + [f"{metric}{end}" for metric, _ in CURVE_PANELS
                                                      for end in ("", "_min", "_max")]


def read_job_curves(sweep_dir: str | Path, jobs: list[Job]) -> dict[str, dict[int, dict[str, float]]]:
    """Each job's per-epoch values (report_data.read_curve) by folder, from csv/metrics.csv (a run folder) or
    metrics.csv (a committed record's job); jobs without either are left out."""
    curves = {}
    for job in jobs:
        folder = Path(sweep_dir) / job.folder
        path = next((p for p in (folder / "csv" / "metrics.csv", folder / "metrics.csv") if p.is_file()), None)
        if path is not None:
            curves[job.folder] = read_curve(path)
    return curves


def curve_rows(jobs: list[Job], curves: dict[str, dict[int, dict[str, float]]]) -> list[dict]:
    """One row per (network, k, epoch): mean, min and max over the seeds that logged that epoch."""
    groups: dict[tuple, list[dict]] = {}
    for job in jobs:
        for epoch, values in curves.get(job.folder, {}).items():
            groups.setdefault((job.network, job.k, epoch), []).append(values)
    rows = []
    for (network, k, epoch) in sorted(groups, key=lambda key: (_key_order(key[:2], "k"), key[2])):
        row = {"network": network, "k": k, "epoch": epoch, "seeds": len(groups[network, k, epoch])}
        for metric, _ in CURVE_PANELS:
            values = [v[metric] for v in groups[network, k, epoch] if metric in v]
            row |= {metric: statistics.fmean(values), f"{metric}_min": min(values), f"{metric}_max": max(values)
                    } if values else {}
        rows.append(row)
    return rows


def curves_figure(rows: list[dict]) -> Figure:
    """Training loss and validation accuracy per epoch, one column per k: a line per method (mean over seeds) with
    its min-max band, beside the frontier's end points."""
    ks = sorted({row["k"] for row in rows}, key=lambda k: (k is None, k))
    figure = Figure(figsize=(4.5 * len(ks), 7))
    FigureCanvasAgg(figure)
    for column, k in enumerate(ks):
        for line_index, (metric, title) in enumerate(CURVE_PANELS):
            axes = figure.add_subplot(2, len(ks), line_index * len(ks) + column + 1)
            for network in dict.fromkeys(row["network"] for row in rows if row["k"] == k):
                line = [row for row in rows if row["k"] == k and row["network"] == network and metric in row]
                epochs = [row["epoch"] for row in line]
                (drawn,) = axes.plot(epochs, [row[metric] for row in line], label=LABELS.get(network, network),
                                     color=COLOURS.get(network))
                axes.fill_between(epochs, [row[f"{metric}_min"] for row in line],
                                  [row[f"{metric}_max"] for row in line], color=drawn.get_color(), alpha=0.2,
                                  linewidth=0)
            axes.set(xlabel="epoch", ylabel=title, title=f"{title}, k = {k}")
            axes.grid(True, alpha=0.3)
    figure.axes[0].legend()
    figure.tight_layout()
    return figure


def controls_figure(rows: list[dict], jobs: list[Job]) -> Figure:
    """Two panels, one point per permutation mode: mean over seeds with a min-max bar, each seed as a dot."""
    figure = Figure(figsize=(9, 4))
    FigureCanvasAgg(figure)
    modes = [row["permutation"] for row in rows]
    for index, (metric, title) in enumerate(PANELS):
        axes = figure.add_subplot(1, 2, index + 1)
        means = [row[metric] for row in rows]
        errors = [[m - row[f"{metric}_min"] for m, row in zip(means, rows)],
                  [row[f"{metric}_max"] - m for m, row in zip(means, rows)]]
        axes.errorbar(range(len(rows)), means, yerr=errors, fmt="o", capsize=6, markersize=8, label="mean, min-max")
        seeds = [(modes.index(job.permutation), getattr(job, metric)) for job in jobs]
        axes.plot([x for x, _ in seeds], [y for _, y in seeds], "k.", alpha=0.5, label="one seed")
        axes.set_xticks(range(len(rows)), [PERMUTATION_LABELS.get(mode, mode) for mode in modes])
        axes.set(xlim=(-0.5, len(rows) - 0.5), xlabel="permutation", ylabel=title, title=title)
    figure.axes[0].legend()
    figure.tight_layout()
    return figure


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def summary_markdown(rows: list[dict], by: str) -> str:
    first = ["Network", "k"] if by == "k" else ["Permutation"]
    header = first + ["Trainable params", "Test acc (mean)", "Test acc (min-max)", "Final train loss (mean)",
                      "Final train loss (min-max)", "Seeds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["network"], row["k"]] if by == "k" else [row["permutation"]]
        cells += [row["params_trainable"], row["test_acc"],
                  f"{_cell(row['test_acc_min'])}–{_cell(row['test_acc_max'])}", row["final_train_loss"],
                  f"{_cell(row['final_train_loss_min'])}–{_cell(row['final_train_loss_max'])}", row["seeds"]]
        lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(sweep_dir: str | Path, by: str = "k") -> Path:
    """Writes the figure (png), one CSV row per job and summary.md into <sweep_dir>/report; returns that folder."""
    jobs = read_jobs(sweep_dir)
    if by == "permutation" and any(job.permutation is None for job in jobs):
        missing = next(job.folder for job in jobs if job.permutation is None)
        raise ValueError(f"--by permutation: job {missing} has no model.permutation in .hydra/config.yaml")
    rows = summarize(jobs, by)
    name, figure = ("frontier", frontier_figure(rows)) if by == "k" else ("controls", controls_figure(rows, jobs))
    report = Path(sweep_dir) / "report"
    report.mkdir(exist_ok=True)
    figure.savefig(report / f"{name}.png", dpi=150)
    with open(report / f"{name}.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=JOB_COLUMNS)
        writer.writeheader()
        for job in sorted(jobs, key=lambda job: (_key_order(group_key(job, by), by), str(job.seed))):
            writer.writerow({key: "" if value is None else value for key, value in asdict(job).items()})
    (report / "summary.md").write_text(summary_markdown(rows, by))
    if by == "k" and (curves := curve_rows(jobs, read_job_curves(sweep_dir, jobs))):
        curves_figure(curves).savefig(report / "curves.png", dpi=150)
        with open(report / "curves.csv", "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=CURVE_COLUMNS)
            writer.writeheader()
            writer.writerows(curves)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", help="a frontier or controls sweep folder (outputs/frontier/<date>)")
    parser.add_argument("--by", choices=("k", "permutation"), default="k",
                        help="k: the frontier (lines against trainable parameters); permutation: the controls")
    args = parser.parse_args(argv)
    try:
        report = write_report(args.sweep_dir, args.by)
    except (FileNotFoundError, ValueError) as err:
        print(f"frontier_report: {err}", file=sys.stderr)
        return 1
    name = "frontier" if args.by == "k" else "controls"
    curves = ", curves.png, curves.csv" if (report / "curves.csv").is_file() else ""
    print(f"Report: {report} ({name}.png, {name}.csv, summary.md{curves})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
