"""Turns a sweep into its training-loss figure, a memory figure, CSV/Markdown tables and a W&B run.

Every expected job is listed with its state (finished, failed and why, unfinished, missing) on the console, in
summary.md and on the figure's legend; only finished jobs are drawn and averaged. `python -m rppnets.analysis.report SWEEP`
exits with status 1 when no job finished.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from rppnets.analysis.report_data import (
    SUMMARY_COLUMNS, NoFinishedJobs, by_network, curve_rows, data_name, job_legend, legend, load_sweep, loss_band,
    memory_points, read_memory_csv, run_settings, summarize, title,
)
from rppnets.records.jobs import CURVE_COLUMNS, STATES, Job, state_counts

CURVE_HEADER = ["network", "seed", "epoch", *CURVE_COLUMNS.values()]
MEMORY_CSV = "memory.csv"  # in the sweep folder, written by `python -m rppnets.analysis.memory --sweep SWEEP`
# How P is held ('' for networks without P) -> marker, filled; shared is hollow, so a point on stored stays visible.
MARKERS = {"": ("o", True), "stored": ("s", True), "shared": ("D", False), "generated": ("^", True)}


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


def _mb(nbytes) -> str:
    return "" if nbytes is None else f"{nbytes / 1e6:,.2f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    # Legend entries contain '|' (|params|), which would split a Markdown cell.
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]


def summary_table(rows: list[dict]) -> list[str]:
    """Per network: seeds, parameters, memory (MB = 10^6 bytes), final loss, test accuracy and time."""
    header = ["Network", "Seeds", "Trainable params", "Index bytes", "State (MB)", "Step peak (MB)", "Data (MB)",
              "Peak memory (MB)", "Final train loss", "Test acc", "s / epoch", "Wall s"]
    cells = []
    for row in rows:
        test_acc = _number(row["test_acc"])
        if row["seeds"] > 1 and row["test_acc"] is not None:
            test_acc += f" ({_number(row['test_acc_min'])}–{_number(row['test_acc_max'])})"
        peak = row["peak_memory_bytes"]
        peak = f"{_mb(peak)} ({row['memory_kind']})" if peak is not None else ""
        seeds = str(row["seeds"]) if row["seeds"] == row["jobs"] else f"{row['seeds']} of {row['jobs']}"
        cells.append([row["legend"], seeds, _number(row["params_trainable"]), _number(row["index_bytes"]),
                      _mb(row["state_bytes"]), _mb(row["step_peak_bytes"]), _mb(row["data_bytes"]), peak,
                      _number(row["final_train_loss"]), test_acc, _number(row["epoch_s"], 2),
                      _number(row["wall_s"], 1)])
    return _table(header, cells)


def memory_table(measured: list[dict]) -> list[str]:
    """Per network and way of holding P, from a few steps (memory.csv)."""
    header = ["Network", "P held", "State (MB)", "Step peak (MB)", "Loss after the measured steps"]
    cells = [[legend(m["network"]), m["permutation"] or "(no P)", _mb(m["state_bytes"]), _mb(m["step_peak_bytes"]),
              _number(m["loss"], 5)] for m in measured]
    return _table(header, cells)


def _folder(job: Job, sweep_dir: Path | None) -> str:
    if job.folder is None:
        return ""
    return str(job.folder.relative_to(sweep_dir) if sweep_dir else job.folder)


def count_line(jobs: list[Job]) -> str:
    counts = state_counts(jobs)
    return f"{len(jobs)} jobs: " + ", ".join(f"{counts[state]} {state}" for state in STATES)


def job_lines(jobs: list[Job], sweep_dir: Path | None = None, note: str | None = None) -> list[str]:
    """For the console: a line of counts, the note if any, then one line per job with its state and folder."""
    lines = [count_line(jobs)] + ([note] if note else [])
    for job in jobs:
        folder = f"  [{_folder(job, sweep_dir)}]" if job.folder is not None else ""
        lines.append(f"  {job.network} seed {job.seed}: {job.describe()}{folder}")
    return lines


def summary_markdown(rows: list[dict], jobs: list[Job] | None = None, measured: list[dict] | None = None,
                     sweep_dir: Path | None = None, note: str | None = None) -> str:
    """summary.md: the per-network table, the memory of each way of holding P if measured, and the jobs."""
    lines = summary_table(rows)
    if measured:
        lines += ["", "## Memory by way of holding P", "",
                  "From a few training steps of each network (`python -m rppnets.analysis.memory`, batch "
                  f"{measured[0]['batch_size']}, {measured[0].get('device') or 'cpu'}); stored and generated hold "
                  "the same P, shared gives same-shaped layers one P.", ""]
        lines += memory_table(measured)
    if jobs is not None:
        lines += ["", "## Jobs", "", count_line(jobs)] + (["", note] if note else []) + [""]
        lines += _table(["Network", "Seed", "State", "Folder"],
                        [[job.network, str(job.seed), job.describe(), _folder(job, sweep_dir)] for job in jobs])
    return "\n".join(lines) + "\n"


def _save(figure: Figure, png: Path, svg: Path) -> None:
    figure.savefig(png, dpi=150)
    # A fixed salt and no date keep the SVG byte-identical between reruns.
    with rc_context({"svg.hashsalt": "rppnets"}):
        figure.savefig(svg, metadata={"Date": None})


def network_colors(jobs: list[Job]) -> dict[str, str]:
    """One colour per network, the same in both figures."""
    return {network: f"C{i}" for i, network in enumerate(by_network(jobs))}


def plot_train_loss(jobs: list[Job], png: Path, svg: Path) -> None:
    """The figure: mean training loss of each network's finished jobs, a min-max band over several seeds."""
    # A bare Figure on the Agg canvas leaves pyplot's global backend alone.
    figure = Figure(figsize=(9, 5.5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    colors = network_colors(jobs)
    last_epoch = 1
    for network, group in by_network(jobs).items():
        label = job_legend(network, group)
        epochs, mean, low, high = loss_band([job for job in group if job.finished])
        if not epochs:  # nothing finished: the legend still says so
            axes.add_line(Line2D([], [], color=colors[network], linestyle=":", label=label))
            continue
        axes.plot(epochs, mean, color=colors[network], label=label)
        if sum(job.finished for job in group) > 1:
            axes.fill_between(epochs, low, high, color=colors[network], alpha=0.2, linewidth=0)
        last_epoch = max(last_epoch, epochs[-1])
    axes.set(title=title(jobs), xlabel="Epochs", ylabel="Loss", xlim=(0, last_epoch))
    axes.title.set_fontsize(10)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.legend()
    figure.tight_layout()
    _save(figure, png, svg)


def plot_memory(points: list[dict], jobs: list[Job], png: Path, svg: Path) -> None:
    """Final training loss and test accuracy against state bytes and step peak: one point per network and mode."""
    figure = Figure(figsize=(11, 8.5))
    FigureCanvasAgg(figure)
    grid = figure.subplots(2, 2, sharex="col", sharey="row")
    colors = network_colors(jobs)
    for point in points:
        label = legend(point["network"]) + (f" (P {point['permutation']})" if point["permutation"] else "")
        for row, quality in enumerate(["final_train_loss", "test_acc"]):
            for col, nbytes in enumerate(["state_bytes", "step_peak_bytes"]):
                if point[quality] is not None and point[nbytes] is not None:
                    marker, filled = MARKERS.get(point["permutation"], ("o", True))
                    color = colors[point["network"]]
                    grid[row, col].plot(point[nbytes] / 1e6, point[quality], linestyle="none", marker=marker,
                                        markersize=8 if filled else 11, color=color,
                                        markerfacecolor=color if filled else "none", markeredgewidth=1.5,
                                        label=label if row == col == 0 else None)
    for col, name in enumerate(["State kept between steps (MB, log)", "Peak of a step above its start (MB, log)"]):
        grid[1, col].set_xlabel(name)
        grid[0, col].set_xscale("log")
        grid[1, col].xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
        grid[1, col].xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        grid[1, col].xaxis.set_minor_formatter(NullFormatter())
    for axes in grid.flat:
        axes.margins(0.08)
    grid[0, 0].set_ylabel("Final training loss")
    grid[1, 0].set_ylabel("Test accuracy")
    marking = run_settings(jobs)
    figure.suptitle(f"Memory of training against quality on {data_name(jobs)}, one point per network and way of "
                    "holding P" + (f"\n({marking})" if marking else ""), fontsize=10)
    figure.legend(loc="lower center", ncol=2, fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, 0.09, 1, 1))
    _save(figure, png, svg)


def log_to_wandb(jobs: list[Job], rows: list[dict], pngs: list[Path], out_dir: Path, project: str,
                 mode: str) -> str | None:
    """Logs the report as one W&B run next to the training runs; returns its folder, or None if W&B did not start."""
    finished = [job for job in jobs if job.finished]
    group = finished[0].group
    try:
        import wandb

        run = wandb.init(
            project=project, group=group, job_type="report", name=f"report-{group}", dir=out_dir, mode=mode,
            config={"experiment_hash": finished[0].experiment_hash, "networks": [row["network"] for row in rows],
                    "jobs": state_counts(jobs)},
            reinit="create_new",  # never log into a run the caller still has open
            settings=wandb.Settings(silent=True, console="off", x_disable_stats=True),
        )
    except Exception as error:  # no network, no account, ...: the files are the primary output
        print(f"warning: W&B did not start ({error}); the report files are complete without it", file=sys.stderr)
        return None
    try:
        bands = {network: loss_band(group_jobs) for network, group_jobs in by_network(finished).items()}
        bands = {network: band for network, band in bands.items() if band[0]}
        table = wandb.Table(columns=SUMMARY_COLUMNS, data=[[row[c] for c in SUMMARY_COLUMNS] for row in rows])
        job_table = wandb.Table(columns=["network", "seed", "state"],
                                data=[[job.network, job.seed, job.describe()] for job in jobs])
        run.log({
            **{f"report/{png.stem}": wandb.Image(str(png)) for png in pngs},
            "report/summary": table,
            "report/jobs": job_table,
            "report/train_loss": wandb.plot.line_series(
                xs=[band[0] for band in bands.values()], ys=[band[1] for band in bands.values()],
                keys=[legend(network) for network in bands], title=title(jobs), xname="Epochs"),
        })
    except Exception as error:
        print(f"warning: logging the report to W&B failed ({error})", file=sys.stderr)
    finally:
        run.finish()
    return getattr(run.settings, "sync_dir", None) if mode != "disabled" else None


def build_report(sweep_dir: str | Path, out_dir: str | Path | None = None, project: str = "rppnets",
                 wandb_mode: str | None = None) -> list[dict]:
    """Writes the figures, curves.csv, summary.csv/.md and the W&B report run; returns the summary rows.

    Prints every job's state first; raises NoFinishedJobs (and writes nothing) when no job finished.
    """
    sweep_dir = Path(sweep_dir)
    jobs, note = load_sweep(sweep_dir)
    print(f"jobs of {sweep_dir}:")
    print("\n".join(job_lines(jobs, sweep_dir, note)))
    if not any(job.finished for job in jobs):
        raise NoFinishedJobs(f"no job of {sweep_dir} finished, so there is nothing to draw (states above)")
    out_dir = Path(out_dir) if out_dir is not None else sweep_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = summarize(jobs)
    measured = read_memory_csv(sweep_dir / MEMORY_CSV)
    names = ["figure.png", "figure.svg", "curves.csv", "summary.csv", "summary.md"]
    paths = {name: out_dir / name for name in names}
    plot_train_loss(jobs, paths["figure.png"], paths["figure.svg"])
    points = memory_points(rows, measured)
    if points:
        paths |= {name: out_dir / name for name in ["memory.png", "memory.svg"]}
        plot_memory(points, jobs, paths["memory.png"], paths["memory.svg"])
    else:
        print(f"no memory figure: neither {sweep_dir / MEMORY_CSV} nor the runs' memory/state_bytes and "
              "memory/step_peak_bytes (run `python -m rppnets.analysis.memory --sweep SWEEP` for every mode)")
    write_csv(paths["curves.csv"], CURVE_HEADER, curve_rows(jobs))
    write_csv(paths["summary.csv"], SUMMARY_COLUMNS, rows)
    paths["summary.md"].write_text(summary_markdown(rows, jobs, measured, sweep_dir, note))
    mode = wandb_mode or os.environ.get("WANDB_MODE") or "offline"
    pngs = [path for name, path in paths.items() if name.endswith(".png")]
    run_dir = log_to_wandb(jobs, rows, pngs, out_dir, project, mode)

    finished = sum(job.finished for job in jobs)
    print(f"report of {finished} finished jobs ({len(rows)} networks) from {sweep_dir}:")
    for path in paths.values():
        print(f"  {path}")
    if run_dir:
        print(f"  W&B run ({mode}): {run_dir}")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", help="Hydra multirun folder: jobs are found by their .hydra/ and results.json")
    parser.add_argument("--out", default=None, help="output folder (default: <sweep_dir>/report)")
    parser.add_argument("--project", default="rppnets", help="W&B project of the training runs")
    parser.add_argument("--wandb-mode", choices=["offline", "online", "disabled"], default=None,
                        help="default: $WANDB_MODE if set, else offline")
    args = parser.parse_args(argv)
    try:
        build_report(args.sweep_dir, args.out, project=args.project, wandb_mode=args.wandb_mode)
    except NoFinishedJobs as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
