"""Turns a finished sweep into the Fashion-MNIST training-loss figure, CSV/Markdown tables and a W&B report run."""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from rppnets.report_data import (
    CURVE_COLUMNS, SUMMARY_COLUMNS, TITLE, Job, by_network, curve_rows, legend, load_jobs, loss_band, summarize,
)

CURVE_HEADER = ["network", "seed", "epoch", *CURVE_COLUMNS.values()]


def write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        # None becomes an empty cell, as for metrics a job did not record.
        writer.writerows([{k: ("" if v is None else v) for k, v in row.items()} for row in rows])


def _number(value, digits: int = 4) -> str:
    if value is None:
        return ""
    return f"{value:,}" if isinstance(value, int) else f"{value:.{digits}f}"


def summary_markdown(rows: list[dict]) -> str:
    header = ["Network", "Seeds", "Trainable params", "Index bytes", "Final train loss", "Test acc",
              "Peak memory (MiB)", "s / epoch", "Wall s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        test_acc = _number(row["test_acc"])
        if row["seeds"] > 1 and row["test_acc"] is not None:
            test_acc += f" ({_number(row['test_acc_min'])}–{_number(row['test_acc_max'])})"
        memory = row["peak_memory_bytes"]
        memory = f"{memory / 2**20:,.0f} ({row['memory_kind']})" if memory is not None else ""
        cells = [row["legend"], str(row["seeds"]), _number(row["params_trainable"]), _number(row["index_bytes"]),
                 _number(row["final_train_loss"]), test_acc, memory, _number(row["epoch_s"], 2),
                 _number(row["wall_s"], 1)]
        # Legend entries contain '|' (|params|), which would split a Markdown cell.
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def plot_train_loss(jobs: list[Job], png: Path, svg: Path) -> None:
    """The figure: mean training loss per network, with a min-max band when there are several seeds."""
    # A bare Figure on the Agg canvas leaves pyplot's global backend alone.
    figure = Figure(figsize=(9, 5.5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    last_epoch = 1
    for network, group in by_network(jobs).items():
        epochs, mean, low, high = loss_band(group)
        if not epochs:
            continue
        (line,) = axes.plot(epochs, mean, label=legend(network))
        if len(group) > 1:
            axes.fill_between(epochs, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
        last_epoch = max(last_epoch, epochs[-1])
    axes.set(title=TITLE, xlabel="Epochs", ylabel="Loss", xlim=(0, last_epoch))
    axes.title.set_fontsize(10)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.legend()
    figure.tight_layout()
    figure.savefig(png, dpi=150)
    # A fixed salt and no date keep the SVG byte-identical between reruns.
    with rc_context({"svg.hashsalt": "rppnets"}):
        figure.savefig(svg, metadata={"Date": None})


def log_to_wandb(jobs: list[Job], rows: list[dict], png: Path, out_dir: Path, project: str, mode: str) -> str | None:
    """Logs the report as one W&B run next to the training runs; returns its folder, or None if W&B did not start."""
    group = jobs[0].group
    try:
        import wandb

        run = wandb.init(
            project=project, group=group, job_type="report", name=f"report-{group}", dir=out_dir, mode=mode,
            config={"experiment_hash": jobs[0].experiment_hash, "networks": [row["network"] for row in rows]},
            reinit="create_new",  # never log into a run the caller still has open
            settings=wandb.Settings(silent=True, console="off", x_disable_stats=True),
        )
    except Exception as error:  # no network, no account, ...: the files are the primary output
        print(f"warning: W&B did not start ({error}); the report files are complete without it", file=sys.stderr)
        return None
    try:
        bands = {network: loss_band(group_jobs) for network, group_jobs in by_network(jobs).items()}
        bands = {network: band for network, band in bands.items() if band[0]}
        table = wandb.Table(columns=SUMMARY_COLUMNS, data=[[row[c] for c in SUMMARY_COLUMNS] for row in rows])
        run.log({
            "report/figure": wandb.Image(str(png), caption=TITLE),
            "report/summary": table,
            "report/train_loss": wandb.plot.line_series(
                xs=[band[0] for band in bands.values()], ys=[band[1] for band in bands.values()],
                keys=[legend(network) for network in bands], title=TITLE, xname="Epochs"),
        })
    except Exception as error:
        print(f"warning: logging the report to W&B failed ({error})", file=sys.stderr)
    finally:
        run.finish()
    return getattr(run.settings, "sync_dir", None) if mode != "disabled" else None


def build_report(sweep_dir: str | Path, out_dir: str | Path | None = None, project: str = "rppnets",
                 wandb_mode: str | None = None) -> list[dict]:
    """Writes the figure, curves.csv, summary.csv/.md and the W&B report run; returns the summary rows."""
    jobs = load_jobs(sweep_dir)
    out_dir = Path(out_dir) if out_dir is not None else Path(sweep_dir) / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = summarize(jobs)
    paths = {name: out_dir / name for name in ["figure.png", "figure.svg", "curves.csv", "summary.csv", "summary.md"]}
    plot_train_loss(jobs, paths["figure.png"], paths["figure.svg"])
    write_csv(paths["curves.csv"], CURVE_HEADER, curve_rows(jobs))
    write_csv(paths["summary.csv"], SUMMARY_COLUMNS, rows)
    paths["summary.md"].write_text(summary_markdown(rows))
    mode = wandb_mode or os.environ.get("WANDB_MODE") or "offline"
    run_dir = log_to_wandb(jobs, rows, paths["figure.png"], out_dir, project, mode)

    print(f"report of {len(jobs)} jobs ({len(rows)} networks) from {sweep_dir}:")
    for path in paths.values():
        print(f"  {path}")
    if run_dir:
        print(f"  W&B run ({mode}): {run_dir}")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("sweep_dir", help="Hydra multirun folder; finished jobs are found by their results.json")
    parser.add_argument("--out", default=None, help="output folder (default: <sweep_dir>/report)")
    parser.add_argument("--project", default="rppnets", help="W&B project of the training runs")
    parser.add_argument("--wandb-mode", choices=["offline", "online", "disabled"], default=None,
                        help="default: $WANDB_MODE if set, else offline")
    args = parser.parse_args(argv)
    build_report(args.sweep_dir, args.out, project=args.project, wandb_mode=args.wandb_mode)


if __name__ == "__main__":
    main()
