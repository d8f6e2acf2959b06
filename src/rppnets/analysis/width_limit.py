"""The widest MLP each method trains on this machine: memory and step time measured at widths doubling from 1,000."""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

METHODS = {  # method -> the MLP's kind and, for RPP, how it holds P
    "dense": ("dense", None),
    "rpp_stored": ("rpp", "stored"),
    "rpp_shared": ("rpp", "shared"),
    "rpp_generated": ("rpp", "generated"),
    "hashed": ("hashed", None),
    "lowrank": ("lowrank", None),
}
RPP_WIDTH = 10  # the figure's hidden weight width m; every wide layer is k * RPP_WIDTH
FIRST_WIDTH, DOUBLINGS = 1000, 14  # widths 1,000 * 2**i for i = 0..DOUBLINGS
BATCH_SIZE = 128  # the figure's batch
IN_FEATURES, NUM_CLASSES = 784, 10  # the figure's data set, Fashion-MNIST: 28 x 28 grey images, 10 classes
TIME_BUDGET_S = 30.0  # a width whose training step takes longer than this on this machine does not train here
MEASURED_STEPS = 3  # profiled steps for the step peak (after measure_training's first step and warm-up)
CAP_MARGIN = 256 << 20  # a point's process may use the memory available at its start less this (RLIMIT_DATA)
MIN_CAP = 2 << 30  # but never less than this (the process itself, torch included, holds about 1 GiB of data)
LOW_MEMORY = 512 << 20  # a point is stopped when the machine's available memory falls below this
POINT_TIMEOUT_S = 1800.0
CSV_NAME = "width_limit.csv"
COLUMNS = [
    "method", "width", "kind", "permutation", "k", "batch_size", "threads", "status", "note",
    "params_trainable", "parameters", "gradients", "optimizer", "index", "buffers", "state_bytes",
    "step_peak_bytes", "build_peak_bytes", "measured_bytes", "estimate_bytes", "estimate_ratio", "available_bytes",
    "rss_before_bytes", "max_rss_bytes", "build_s", "first_step_s", "step_s", "step_cpu_s", "timed_steps",
    "time_budget_s",
    "wall_s", "loadavg", "commit", "date",
]
STOPS = ("refused", "over_time", "failed")  # statuses that end a method's grid


def model_config(method: str, width: int) -> dict:
    """The conf/model keys of the figure's two-hidden-layer MLP for `method` at hidden width `width`.

    Dense: two layers `width` wide. RPP, HashedNets and low-rank: two layers of k * 10 = `width` on the budget of
    an RPP layer of width 10 (rppnets.models.MLP), full biases, seed 0.
    """
    kind, permutation = METHODS[method]
    config = {"kind": kind, "depth": 2, "bias": "full"}
    if kind == "dense":
        config["width"] = width
    else:
        if width % RPP_WIDTH:
            raise ValueError(f"width={width} is invalid for {method}; allowed: a multiple of {RPP_WIDTH}")
        config.update(width=RPP_WIDTH, k=width // RPP_WIDTH, seed=0)
    if permutation is not None:
        config["permutation"] = permutation
    return config


def default_widths() -> list[int]:
    return [FIRST_WIDTH * 2**i for i in range(DOUBLINGS + 1)]


def midpoint(low: int, high: int) -> int | None:
    """The width halfway between two on a log scale, a multiple of RPP_WIDTH (None if there is none between)."""
    middle = round(math.sqrt(low * high) / RPP_WIDTH) * RPP_WIDTH
    return middle if low < middle < high else None


def measured_bytes(row: dict) -> int | None:
    """Tensor memory of a point at its peak, as measured: the larger of the model's construction peak and the
    training state plus a step's peak above it (None when the step peak was not measured)."""
    if row.get("step_peak_bytes") in (None, "") or row.get("state_bytes") in (None, ""):
        return None
    return max(int(row.get("build_peak_bytes") or 0), int(row["state_bytes"]) + int(row["step_peak_bytes"]))


# --- one point, in its own process ---------------------------------------------------------------------------------


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def measure_point(method: str, width: int, batch_size: int = BATCH_SIZE, budget_s: float = TIME_BUDGET_S,
                  measured_steps: int = MEASURED_STEPS) -> dict:
    """Builds the MLP of (method, width), trains it a few steps with Adam on a random batch, and measures it.

    Construction: its tensor peak (rppnets.meters.StepPeakMeter around MLP(...)) and time. Time: the
    first step, then up to 3 more timed without the profiler (1 when the first takes over a third of the budget,
    none when it takes over 4 budgets); `step_s` is their median wall time, `step_cpu_s` the median CPU time of the
    process (all its threads: on a machine shared with other work, the part of the step that was this process's
    own). Memory: rppnets.analysis.memory.measure_training
    (state by part after its first step, the step peak of `measured_steps` profiled steps; 1 when over budget).
    """
    import torch
    import torch.nn.functional as F

    from rppnets.analysis.memory import measure_training
    from rppnets.meters import StepPeakMeter, state_breakdown
    from rppnets.console import silence_known_noise
    from rppnets.models import MLP, count_trainable

    silence_known_noise()
    torch.manual_seed(0)
    row = {"threads": torch.get_num_threads(), "rss_before_bytes": _rss_bytes()}
    meter = StepPeakMeter("cpu")
    meter.open()
    meter.begin_step()
    start = time.perf_counter()
    model = MLP(**model_config(method, width))
    row["build_s"] = time.perf_counter() - start
    meter.end_step()
    row["build_peak_bytes"] = meter.close()
    row["params_trainable"] = count_trainable(model)

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)  # conf/train.yaml's optimizer
    inputs = torch.rand(batch_size, IN_FEATURES)
    targets = torch.randint(0, NUM_CLASSES, (batch_size,))

    def step() -> tuple[float, float]:  # Lightning's automatic optimisation, as measure_training runs it
        began, cpu = time.perf_counter(), time.process_time()
        loss = F.cross_entropy(model(inputs), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - began, time.process_time() - cpu

    first = step()
    row["first_step_s"] = first[0]
    timed = [] if first[0] > 4 * budget_s else [step() for _ in range(3 if first[0] <= budget_s / 3 else 1)]
    row["timed_steps"] = len(timed)
    row["step_s"], row["step_cpu_s"] = (statistics.median(part) for part in zip(*(timed or [first])))
    over = row["step_s"] > budget_s
    row["status"] = "over_time" if over else "ok"
    if timed:
        measured = measure_training(model, optimizer, inputs, targets, measured_steps=1 if over else measured_steps)
        row.update({key: value for key, value in measured.items() if key != "loss"})
    else:  # far over the budget: the state after the first step, no step peak
        row["note"] = "first step over 4x the time budget: no more steps, no step peak"
        parts = state_breakdown(model, [optimizer])
        row.update(parts, state_bytes=sum(parts.values()))
    row["max_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return row


def _point_main(method: str, width: int, batch_size: int, budget_s: float, steps: int, cap: int | None) -> None:
    if cap:  # allocations past the memory the check allowed fail in this process instead of squeezing the machine
        resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))
    print("RESULT " + json.dumps(measure_point(method, width, batch_size, budget_s, steps)), flush=True)


# --- the grid ------------------------------------------------------------------------------------------------------


def machine_available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise OSError("no MemAvailable in /proc/meminfo")


def machine_total_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise OSError("no MemTotal in /proc/meminfo")


def commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=30)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "src"], capture_output=True,
                               text=True, cwd=Path(__file__).resolve().parents[3], timeout=30).stdout.strip()
        return out.stdout.strip() + ("+changes" if dirty else "") if out.returncode == 0 else ""
    except OSError:
        return ""


def memory_check(method: str, width: int, batch_size: int) -> tuple[int, int | None, str | None]:
    """(estimate, available, refusal): the project's own check (rppnets.resources.memory_refusal, which a run makes
    before it builds its model) of the point's config, with the estimate and the available memory it compares."""
    from rppnets.resources import available_memory_bytes, estimate_training_bytes, memory_refusal

    model = model_config(method, width)
    estimate, available = estimate_training_bytes(model, batch_size), available_memory_bytes()
    return estimate, available, memory_refusal(model | {"in_features": IN_FEATURES, "num_classes": NUM_CLASSES},
                                               batch_size)


def run_point(method: str, width: int, batch_size: int, budget_s: float, steps: int, available: int | None,
              timeout_s: float = POINT_TIMEOUT_S) -> dict:
    """Measures one point in a fresh process, capped at the memory available now, watched from here: stopped
    when the machine runs low on memory or the point outlasts timeout_s. Returns its row (status failed if it
    did not finish)."""
    cap = None if available is None else max(available - CAP_MARGIN, MIN_CAP)
    command = [sys.executable, "-m", "rppnets.analysis.width_limit", "--point", method, str(width),
               "--batch-size", str(batch_size), "--time-budget", str(budget_s), "--steps", str(steps)]
    if cap:
        command += ["--cap", str(cap)]
    env = {**os.environ, "KINETO_LOG_LEVEL": os.environ.get("KINETO_LOG_LEVEL", "6")}
    began = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    reason = None
    try:
        while process.poll() is None:
            time.sleep(0.2)
            if machine_available_bytes() < LOW_MEMORY:
                reason = f"stopped: the machine's available memory fell below {LOW_MEMORY >> 20} MiB"
            elif time.monotonic() - began > timeout_s:
                reason = f"stopped: still running after {timeout_s:.0f} s"
            if reason:
                process.kill()
                break
        stdout, stderr = process.communicate()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    row = {"wall_s": time.monotonic() - began}
    result = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    if result and process.returncode == 0:
        return {**json.loads(result[-1][len("RESULT "):]), **row}
    last = [line for line in stderr.strip().splitlines() if line.strip()][-1:] or [f"exit status {process.returncode}"]
    return {**row, "status": "failed", "note": reason or last[0][:300]}


def read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def append_row(path: Path, row: dict) -> None:
    new = not path.is_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=COLUMNS, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow(row)


def point_row(method: str, width: int, batch_size: int, budget_s: float, steps: int) -> dict:
    """Checks one point with the project's memory check, measures it if allowed, and returns its CSV row."""
    kind, permutation = METHODS[method]
    config = model_config(method, width)
    row = {"method": method, "width": width, "kind": kind, "permutation": permutation or "",
           "k": config.get("k", ""), "batch_size": batch_size, "time_budget_s": budget_s, "commit": commit(),
           "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
           "loadavg": f"{os.getloadavg()[0]:.2f}"}
    estimate, available, refusal = memory_check(method, width, batch_size)
    row.update(estimate_bytes=estimate, available_bytes=available if available is not None else "")
    if refusal:
        return {**row, "status": "refused", "note": refusal}
    row.update(run_point(method, width, batch_size, budget_s, steps, available))
    total = measured_bytes(row)
    if total:
        row.update(measured_bytes=total, estimate_ratio=f"{estimate / total:.3f}")
    return row


def _fmt_bytes(value) -> str:
    if value in (None, ""):
        return ""
    value = int(value)
    return f"{value / 2**30:.2f} GiB" if value >= 2**30 else f"{value / 2**20:.1f} MiB"


def run_grid(out: Path, methods: list[str], widths: list[int], batch_size: int = BATCH_SIZE,
             budget_s: float = TIME_BUDGET_S, steps: int = MEASURED_STEPS, refine: bool = True) -> list[dict]:
    """Each method over `widths` in order until a width is refused, over the time budget or fails; then, with
    `refine`, the width halfway (log scale) between the widest that trained and that one. Points already in
    out/width_limit.csv are skipped (an interrupted run continues). Returns every row of the CSV."""
    path = out / CSV_NAME
    done = {(row["method"], int(row["width"])): row for row in read_rows(path)}

    def visit(method: str, width: int) -> dict:
        if (method, width) in done:
            return done[(method, width)]
        print(f"{method:<14} {width:>10,}  ...", end="", flush=True)
        row = point_row(method, width, batch_size, budget_s, steps)
        append_row(path, row)
        done[(method, width)] = row
        step = f"{float(row['step_s']):.2f} s/step" if row.get("step_s") not in (None, "") else ""
        print(f"\r{method:<14} {width:>10,}  {row['status']:<9} state {_fmt_bytes(row.get('state_bytes')):>10}  "
              f"peak {_fmt_bytes(row.get('step_peak_bytes')):>10}  estimate {_fmt_bytes(row['estimate_bytes']):>10}"
              f"  {step}  {row.get('note') or ''}"[:200], flush=True)
        return row

    for method in methods:
        widest = stop = None
        for width in widths:
            row = visit(method, width)
            if row["status"] in STOPS:
                stop = width
                break
            widest = width
        if refine and widest is not None and stop is not None and (middle := midpoint(widest, stop)):
            visit(method, middle)
    return read_rows(path)


# --- what the grid found -------------------------------------------------------------------------------------------


def limits(rows: list[dict]) -> dict[str, dict]:
    """Per method: its widest row that trained ("widest") and the narrowest row that did not ("stop")."""
    found = {}
    for method in METHODS:
        mine = sorted((row for row in rows if row["method"] == method), key=lambda row: int(row["width"]))
        ok = [row for row in mine if row["status"] == "ok"]
        stops = [row for row in mine if row["status"] in STOPS]
        if mine:
            found[method] = {"widest": ok[-1] if ok else None, "stop": stops[0] if stops else None}
    return found


def stop_reason(row: dict | None) -> str:
    if row is None:
        return "none within the grid"
    width = f"{int(row['width']):,}"
    if row["status"] == "refused":
        return (f"{width}: refused by the memory check, estimate {_fmt_bytes(row['estimate_bytes'])} > "
                f"{_fmt_bytes(row['available_bytes'])} available")
    if row["status"] == "over_time":
        return (f"{width}: {float(row['step_s']):.1f} s per step, over the {float(row['time_budget_s']):g} s budget "
                f"(memory: estimate {_fmt_bytes(row['estimate_bytes'])}, measured "
                f"{_fmt_bytes(row.get('measured_bytes'))}, {_fmt_bytes(row['available_bytes'])} available)")
    return f"{width}: failed ({row.get('note')})"


def summary_markdown(rows: list[dict]) -> str:
    lines = ["| method | widest that trains | state | step peak | construction peak | measured peak | estimate | "
             "s/step | what stops the next width |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for method, found in limits(rows).items():
        widest = found["widest"] or {}
        lines.append(
            f"| {method} | {int(widest['width']):,} |" if widest else f"| {method} | none |")
        lines[-1] += (f" {_fmt_bytes(widest.get('state_bytes'))} | {_fmt_bytes(widest.get('step_peak_bytes'))} |"
                      f" {_fmt_bytes(widest.get('build_peak_bytes'))} | {_fmt_bytes(widest.get('measured_bytes'))} |"
                      f" {_fmt_bytes(widest.get('estimate_bytes'))} | {float(widest['step_s']):.2f} |"
                      if widest else " | | | | | |")
        lines[-1] += f" {stop_reason(found['stop'])} |"
    lines += ["", "Every point (state and peak in MiB, measured = max(construction peak, state + step peak)):", "",
              "| method | width | status | state | step peak | construction peak | measured | estimate | "
              "estimate / measured | s/step | CPU s/step | load | available |",
              "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    mib = lambda value: "" if value in (None, "") else f"{int(value) / 2**20:,.1f}"  # noqa: E731
    for row in sorted(rows, key=lambda row: (list(METHODS).index(row["method"]), int(row["width"]))):
        step = f"{float(row['step_s']):.3f}" if row.get("step_s") not in (None, "") else ""
        cpu = f"{float(row['step_cpu_s']):.3f}" if row.get("step_cpu_s") not in (None, "") else ""
        lines.append(f"| {row['method']} | {int(row['width']):,} | {row['status']} | {mib(row.get('state_bytes'))} |"
                     f" {mib(row.get('step_peak_bytes'))} | {mib(row.get('build_peak_bytes'))} |"
                     f" {mib(row.get('measured_bytes'))} | {mib(row['estimate_bytes'])} |"
                     f" {row.get('estimate_ratio') or ''} | {step} | {cpu} | {row.get('loadavg', '')} |"
                     f" {mib(row.get('available_bytes'))} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], png: Path, machine_bytes: int, budget_s: float) -> None:
    """Log-log against width, per method: the state and a step's peak, the run's measured peak with the estimate,
    the machine's memory as a line; and the step time with the budget. Hollow markers: over the time budget."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    figure = Figure(figsize=(13, 9), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, 2, sharex=True).ravel()
    styles = dict(zip(METHODS, (("black", "o", "-"), ("tab:blue", "s", "-"), ("tab:cyan", "^", ":"),
                                ("tab:purple", "D", "-"), ("tab:orange", "o", "-"), ("tab:green", "o", "-"))))
    keys = ("state_bytes", "step_peak_bytes", "measured_bytes", "step_s")
    for method, (color, marker, line) in styles.items():
        mine = sorted((row for row in rows if row["method"] == method), key=lambda row: int(row["width"]))
        for ax, key in zip(axes, keys):
            points = [(int(row["width"]), float(row[key]), row["status"] == "ok") for row in mine
                      if row.get(key) not in (None, "")]
            if not points:
                continue
            widths, values, trained = zip(*points)
            ax.plot(widths, values, color=color, linestyle=line, linewidth=1.2)
            for width, value, ok in points:
                ax.plot(width, value, marker=marker, color=color, markerfacecolor=color if ok else "white",
                        markersize=6)
        estimates = [(int(row["width"]), int(row["estimate_bytes"])) for row in mine]
        axes[2].plot(*zip(*estimates), color=color, linestyle="none", marker="_", markersize=14)
        for row in mine:
            if row["status"] == "refused":
                axes[2].plot(int(row["width"]), int(row["estimate_bytes"]), marker="x", color=color, markersize=9)
    for ax in axes[:3]:
        ax.axhline(machine_bytes, color="red", linestyle="--", linewidth=1)
        ax.text(1000, machine_bytes * 1.15, f"machine memory {machine_bytes / 2**30:.1f} GiB", color="red",
                fontsize=8)
    axes[3].axhline(budget_s, color="red", linestyle="--", linewidth=1)
    axes[3].text(1000, budget_s * 1.15, f"time budget {budget_s:g} s per step", color="red", fontsize=8)
    titles = ("state kept between steps (parameters, gradients, Adam, index)", "a training step's peak above the state",
              "the run's peak, measured: max(construction, state + step)\n"
              "bars: the memory check's estimate; x: refused by it", "time per training step (wall)")
    for ax, title, unit in zip(axes, titles, ("bytes", "bytes", "bytes", "seconds")):
        ax.set(xscale="log", yscale="log", title=title, ylabel=unit)
        ax.title.set_fontsize(10)
        ax.grid(True, which="major", alpha=0.3)
    for ax in axes[2:]:
        ax.set_xlabel("hidden width (k * 10 for RPP, hashed, low-rank)")
    handles = [Line2D([], [], color=color, marker=marker, linestyle=line, label=method)
               for method, (color, marker, line) in styles.items()]
    handles.append(Line2D([], [], color="gray", marker="o", markerfacecolor="white", linestyle="none",
                          label="over the time budget"))
    axes[0].legend(handles=handles, fontsize=8)
    figure.savefig(png, dpi=120)


def write_outputs(out: Path, rows: list[dict], budget_s: float) -> None:
    (out / "summary.md").write_text(summary_markdown(rows))
    plot(rows, out / "width_limit.png", machine_total_bytes(), budget_s)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, help=f"folder of {CSV_NAME}, summary.md and width_limit.png")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated, from: " + ", ".join(METHODS))
    parser.add_argument("--widths", default=None, help="comma-separated widths (default: 1,000 doubling to "
                        f"{default_widths()[-1]:,})")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--time-budget", type=float, default=TIME_BUDGET_S, help="seconds per training step")
    parser.add_argument("--steps", type=int, default=MEASURED_STEPS, help="profiled steps for the step peak")
    parser.add_argument("--no-refine", action="store_true", help="no midpoint between the widest and the stop")
    parser.add_argument("--point", nargs=2, metavar=("METHOD", "WIDTH"), help=argparse.SUPPRESS)
    parser.add_argument("--cap", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.point:
        _point_main(args.point[0], int(args.point[1]), args.batch_size, args.time_budget, args.steps, args.cap)
        return
    if args.out is None:
        parser.error("--out is required")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))  # the point's process is ended too
    methods = args.methods.split(",")
    unknown = [method for method in methods if method not in METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}; allowed: {', '.join(METHODS)}")
    widths = [int(w) for w in args.widths.split(",")] if args.widths else default_widths()
    print(f"{platform.node()}: {os.cpu_count()} cores, {machine_total_bytes() / 2**30:.1f} GiB; batch "
          f"{args.batch_size}, budget {args.time_budget:g} s per step; {args.out / CSV_NAME}")
    began = time.monotonic()
    rows = run_grid(args.out, methods, widths, args.batch_size, args.time_budget, args.steps, not args.no_refine)
    write_outputs(args.out, rows, args.time_budget)
    print(f"wrote {args.out / 'summary.md'} and {args.out / 'width_limit.png'} ({time.monotonic() - began:.0f} s)")


if __name__ == "__main__":
    main()
