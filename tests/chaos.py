"""Fault injection at random moments: a small real job is killed, signalled (itself, or every process of it as SLURM
signals a job step), damaged or starved of disk, then rerun until it finishes; its records must equal an
uninterrupted run's. `python tests/chaos.py --rounds 500` (make chaos) ends with a table of the faults by kind and
by the phase of the job's life they landed in.

Each fault is aimed at a phase (the job prints where it is: helpers.PhaseLine) and must land in a job still running,
shown by how it ended (killed, or stopped with exit 128 + signal); the phase it landed in is read from what the job
had printed by then. A fault that found the job ended has proved nothing: its round is drawn again, never passed."""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from helpers import PHASE_MARK, descendants

ROOT = Path(__file__).resolve().parents[1]
# A job of 3 epochs of 14 steps with W&B offline; WATCHED, it prints the phases of its life (a fault is aimed at each).
JOB = ["model.width=16", "trainer.max_epochs=3", "data.batch_size=16", "logger=wandb"]
WATCHED = ["+callbacks.phase._target_=helpers.PhaseLine"]
CATCHABLE = [signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2,
             signal.SIGALRM, signal.SIGXCPU]
DAMAGEABLE = ["checkpoints/last.ckpt", "checkpoints/previous.ckpt", "csv/metrics.csv", "csv/run.json", "results.json",
              "run_state.json"]
VARYING = ("time/", "memory/peak_rss", "_runtime", "_timestamp")  # differ between any two runs
MAX_ATTEMPTS = 6
RESUMED = re.compile(r": resuming (in|after|before) epoch \d")  # the run's resume line (rppnets.training.pipeline.resume_line)
MAX_DRAWS = 5  # a round whose faults keep finding the job ended this many times fails
KINDS = ("kill", "signal", "step-signal", "damage", "disk")
# The phases of a job's life, in order, as the job's output tells them (phase_of).
STARTING, FIRST_EPOCH, TRAINING, EPOCH_END, TESTING, AFTER = PHASES = (
    "starting up", "training, no checkpoint yet", "training mid-epoch", "validation / epoch end", "testing",
    "after testing")


def phase_of(lines: list[str]) -> str:
    """The phase of its life a job was in once it had printed `lines` (PhaseLine's, and the run's own)."""
    marks = [line[len(PHASE_MARK):] for line in lines if line.startswith(PHASE_MARK)]
    if not marks:
        return STARTING  # imports, data, model, resume, loggers
    if marks[-1] == "training epoch 1" and not any(RESUMED.search(line) for line in lines):
        return FIRST_EPOCH
    if marks[-1].startswith("training"):
        return TRAINING
    if marks[-1].startswith("validation"):
        return EPOCH_END  # validation, then the epoch's checkpoint
    return TESTING if marks[-1] == "testing" else AFTER  # after testing: results.json, the summary, W&B's end


class Job:
    """A job in the background whose output is read as it comes: each line with its time since the start."""

    def __init__(self, args: list[str]):
        self.started = time.monotonic()
        self.process = subprocess.Popen(args, cwd=ROOT, env=environment(), stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        self.lines: list[tuple[float, str]] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            with self._changed:
                self.lines.append((time.monotonic() - self.started, line.rstrip("\n")))
                self._changed.notify_all()
        with self._changed:
            self.lines.append((time.monotonic() - self.started, None))  # the end of the output
            self._changed.notify_all()

    def wait_for_line(self, wanted, timeout: float = 600) -> bool:
        """Wait until a line for which `wanted(line)` holds is printed: False if the output ended first."""
        seen = 0
        with self._changed:
            while True:
                for _, line in self.lines[seen:]:
                    if line is None:
                        return False
                    if wanted(line):
                        return True
                seen = len(self.lines)
                if not self._changed.wait(timeout):
                    raise TimeoutError(f"no line wanted within {timeout} s")

    def end(self, timeout: float = 300) -> int:
        self.process.wait(timeout)
        self._reader.join(timeout)
        return self.process.returncode

    @property
    def output(self) -> list[str]:
        return [line for _, line in self.lines if line is not None]


def command(fake_root: Path, folder: Path, *extra: str) -> list[str]:
    return [sys.executable, "src/train.py", f"hydra.run.dir={folder}", f"data.root={fake_root}", "data.system_dir=null",
            "data.download=false", "data.verify_md5=false", "data.val_size=32", "data.eval_batch_size=64",
            "trainer.accelerator=cpu", "~callbacks.progress_bar", *JOB, *extra]


def environment() -> dict:
    path = os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])  # helpers.PhaseLine
    return dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", OMP_NUM_THREADS="1", PYTHONPATH=path)


@dataclass
class Record:
    """What a finished run left: metrics (varying ones by key only), CSV rows, W&B history, whether its checkpoint loads."""

    metrics: dict
    csv_rows: list
    wandb_history: list
    problems: list = field(default_factory=list)


def _steady(row: dict) -> dict:
    return {key: ("<varies>" if key.startswith(VARYING) else value) for key, value in row.items()
            if value not in ("", None)}


def read_record(folder: Path) -> Record:
    problems = []
    results = json.loads((folder / "results.json").read_text())
    if results.get("status") != "finished":
        problems.append(f"results.json status {results.get('status')}: {results.get('error')}")
    with open(folder / "csv" / "metrics.csv", newline="") as file:
        rows = [_steady(row) for row in csv.DictReader(file)]
    history = []
    for run in sorted((folder / "wandb").glob("offline-run-*")):
        out = subprocess.run([str(Path(sys.executable).parent / "wandb"), "leet", "inspect", "--json", str(run)],
                             capture_output=True, text=True, timeout=120)
        for line in out.stdout.splitlines():
            record = json.loads(line)
            if record.get("type") == "history":
                history.append(_steady(record["history"]["item"]))
    checkpoint = folder / "checkpoints" / "last.ckpt"
    if checkpoint.is_file():
        probe = subprocess.run([sys.executable, "-c", "import sys, torch; c = torch.load(sys.argv[1], "
                                "weights_only=True); assert 'state_dict' in c and c['run']['identity']",
                                str(checkpoint)], capture_output=True, text=True)
        if probe.returncode:
            problems.append(f"last.ckpt does not load: {probe.stderr.strip().splitlines()[-1:]}")
    return Record(_steady(results.get("metrics") or {}), rows, history, problems)


def compare(got: Record, want: Record) -> list[str]:
    diffs = list(got.problems)
    if got.metrics != want.metrics:
        keys = sorted(k for k in got.metrics.keys() | want.metrics.keys() if got.metrics.get(k) != want.metrics.get(k))
        diffs.append(f"results.json metrics differ in {keys}")
    if got.csv_rows != want.csv_rows:
        diffs.append(f"metrics.csv differs: {len(got.csv_rows)} rows against {len(want.csv_rows)}")
    if got.wandb_history != want.wandb_history:
        diffs.append(f"W&B history differs: {len(got.wandb_history)} records against {len(want.wandb_history)}")
    return diffs


def damage(path: Path, rng: random.Random) -> str:
    how = rng.choice(["truncate", "garbage", "delete"])
    if how == "delete":
        path.unlink()
    elif how == "truncate":
        size = path.stat().st_size
        with open(path, "r+b") as file:
            file.truncate(rng.randrange(0, max(size, 1)))
    else:
        data = bytearray(path.read_bytes())
        for _ in range(rng.randint(1, 8)):
            if data:
                data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.5 or not data:
            data = bytearray(rng.randbytes(rng.randint(1, 4096)))
        path.write_bytes(bytes(data))
    return f"{how} {path.name}"


@dataclass
class Fault:
    """One fault of a round: its kind, what exactly was done, and the phase of the job's life it landed in (None: the
    job had ended before it, so it proved nothing)."""

    kind: str
    detail: str
    phase: str | None


@dataclass
class RoundResult:
    seed: int
    faults: list[Fault]  # those of the draw that landed (or of the last draw)
    problems: list[str]  # empty: the records equal the uninterrupted run's
    draws: int = 1  # 2 and more: earlier draws had a fault that found the job ended

    @property
    def passed(self) -> bool:
        return not self.problems

    def describe(self) -> str:
        faults = ", ".join(f"{f.detail} [{f.phase or 'the job had ended'}]" for f in self.faults)
        drawn = f" (drawn {self.draws} times)" if self.draws > 1 else ""
        return f"round {self.seed}{drawn}: {faults}: " + (
            "equal to the uninterrupted run" if self.passed else "\n  " + "\n  ".join(self.problems))


@dataclass
class Chaos:
    fake_root: Path
    work: Path
    reference: Record | None = None
    # The reference's life: (seconds since its start, the PhaseLine mark then; None: the start), then its end.
    timeline: list = field(default_factory=lambda: [(0.0, None), (20.0, "end")])
    disk: bool = False  # fill the disk too (needs root to mount a tmpfs): can_fill_disk()
    mounts: list = field(default_factory=list)

    def run_reference(self) -> Record:
        folder = self.work / "reference"
        job = Job(command(self.fake_root, folder, *WATCHED))
        returncode = job.end(timeout=600)
        assert returncode == 0, "\n".join(job.output)
        self.timeline = [(0.0, None)] + [(t, line[len(PHASE_MARK):]) for t, line in job.lines
                                          if line is not None and line.startswith(PHASE_MARK)]
        self.timeline.append((time.monotonic() - job.started, "end"))
        self.reference = read_record(folder)
        return self.reference

    def draw_moment(self, rng: random.Random) -> tuple[int, float]:
        """A moment to strike: a phase drawn evenly, then one of the reference's moments of entering it (the index of
        its mark in `timeline`, 0 the start) and a delay after it within the time the reference spent there."""
        marks = [mark for _, mark in self.timeline[:-1]]
        where = {i: phase_of([PHASE_MARK + m for m in marks[1 : i + 1]]) for i in range(len(marks))}
        phase = rng.choice(sorted(set(where.values()), key=PHASES.index))
        index = rng.choice([i for i, p in where.items() if p == phase])
        return index, rng.uniform(0, self.timeline[index + 1][0] - self.timeline[index][0])

    def attempt(self, folder: Path, rng: random.Random, kind: str, log: list, problems: list) -> Fault:
        """Start the job, strike at a drawn moment (SIGKILL, a stop signal, or SIGKILL then a damaged file), wait for
        its end; the fault with the phase it landed in, or None for the phase if the job had ended before it."""
        index, delay = self.draw_moment(rng)
        marks = [mark for _, mark in self.timeline]
        job = Job(command(self.fake_root, folder, *WATCHED))
        # the reference's mark `index` or any later one: a resumed job skips the epochs already done
        if index == 0 or job.wait_for_line(lambda line: line.startswith(PHASE_MARK)
                                           and line[len(PHASE_MARK):] in marks[index:]):
            with contextlib.suppress(subprocess.TimeoutExpired):
                job.process.wait(timeout=delay)
        signum = signal.SIGKILL if kind in ("kill", "damage") else rng.choice(CATCHABLE)
        detail = signum.name + (" to every process of the run" if kind == "step-signal" else "")
        if job.process.poll() is None:
            if kind == "step-signal":  # as SLURM signals a job step: every process, W&B's service too
                for pid in [job.process.pid, *descendants(job.process.pid)]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signum)
            else:
                job.process.send_signal(signum)
            if kind == "signal" and rng.random() < 0.2:  # asked twice, as an impatient user would
                time.sleep(rng.uniform(0, 1))
                if job.process.poll() is None:
                    job.process.send_signal(signum)
                    detail += " twice"
        returncode = job.end()
        output = job.output
        # where it landed: what the job printed before it said it received the signal (or before it was killed)
        said = next((i for i, line in enumerate(output) if signum.name in line), len(output))
        phase = phase_of(output[:said])
        if signum == signal.SIGKILL:
            landed = returncode == -signal.SIGKILL
            if returncode not in (0, -signal.SIGKILL):
                problems.append(f"{detail} in {phase}: exit {returncode}:\n" + "\n".join(output[-40:]))
        elif returncode == 128 + signum:  # stopped at a safe point, as the signal asked
            landed = True
        elif returncode == -signum and (phase in (STARTING, AFTER)
                                        or any(line.startswith(f"stopped by {signum.name}") for line in output)):
            # the signal's default action: before or after the run's stop handler was in, or a second signal that
            # came once the run had stopped (checkpoint saved, stop line printed), as its process ended
            landed = True
        elif returncode == 0 and said == len(output) and phase == AFTER:  # ended before the signal came
            landed = False
        else:
            landed = True
            problems.append(f"{detail} in {phase}: exit {returncode}, not 128 + {signum.value}:\n"
                            + "\n".join(output[-40:]))
        log.append(f"{detail} in {phase}: exit {returncode}" if landed else f"{detail}: the job had ended (exit 0)")
        if kind == "damage" and landed:
            present = [name for name in DAMAGEABLE if (folder / name).is_file()]
            if present:
                detail += ", then " + damage(folder / rng.choice(present), rng)
                log.append(detail)
        return Fault(kind, detail, phase if landed else None)

    def fill_disk(self, folder: Path, rng: random.Random, log: list, size_kb: int | None = None
                  ) -> subprocess.CompletedProcess:
        """Run an attempt on a disk (a tmpfs mounted at the run folder) that fills at a random point; then grow it.

        The attempt must end with the full disk named as the last line it prints; the reruns go on, on a larger disk.
        """
        folder.mkdir(parents=True, exist_ok=True)
        size_kb = size_kb or rng.randint(64, 4096)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(folder)], check=True)
        self.mounts.append(folder)
        done = subprocess.run(command(self.fake_root, folder, *WATCHED), cwd=ROOT, env=environment(),
                              capture_output=True, text=True, timeout=600)
        log.append(f"disk of {size_kb} KiB: exit {done.returncode}")
        last = (done.stdout + done.stderr).strip().splitlines()[-1:] or [""]
        if done.returncode != 0 and "No space left" not in last[0]:
            log.append(f"the full disk is not the last line: {(done.stdout + done.stderr)[-3000:]}")
        subprocess.run(["mount", "-o", "remount,size=256m", str(folder)], check=True)
        return done

    def disk_fault(self, folder: Path, rng: random.Random, log: list, problems: list) -> Fault:
        said = len(log)
        done = self.fill_disk(folder, rng, log)
        detail = log[said].split(":")[0]  # "disk of 400 KiB"
        if done.returncode == 0:
            return Fault("disk", detail, None)  # the disk was large enough: nothing was starved
        problems += [line for line in log[said + 1:] if line.startswith("the full disk is not the last line")]
        return Fault("disk", detail, phase_of(done.stdout.splitlines()))

    def finish(self, folder: Path, log: list) -> list[str]:
        """Rerun until the job finishes; the differences of its records from the reference's, after `log`."""
        for _ in range(MAX_ATTEMPTS):
            done = subprocess.run(command(self.fake_root, folder, *WATCHED), cwd=ROOT, env=environment(),
                                  capture_output=True, text=True, timeout=600)
            if done.returncode == 0:
                break
            log.append(f"rerun exit {done.returncode}: {(done.stdout + done.stderr)[-2000:]}")
        else:
            return log + ["never finished"]
        diffs = compare(read_record(folder), self.reference)
        return log + diffs if diffs else []

    def unmount(self, folder: Path) -> None:
        if folder in self.mounts:
            subprocess.run(["umount", str(folder)], check=False)
            self.mounts.remove(folder)

    def round(self, seed: int) -> RoundResult:
        """One round: 1-3 faults, each landing in the job while it runs, then reruns until the job finishes. A fault
        that found the job ended draws the round again, in a new folder, with the same random stream going on."""
        rng = random.Random(seed)
        faults: list[Fault] = []
        for draw in range(MAX_DRAWS):
            folder = self.work / (f"round-{seed}" if draw == 0 else f"round-{seed}-draw{draw}")
            shutil.rmtree(folder, ignore_errors=True)  # a round of an earlier run of chaos.py in this work folder
            log: list[str] = [f"round {seed}" + (f", draw {draw + 1}" if draw else "")]
            problems: list[str] = []
            faults = []
            try:
                for _ in range(rng.randint(1, 3)):
                    if finished(folder):
                        break  # a fault after the job's end lands in no running job: the round has no more
                    kind = rng.choice(KINDS if self.disk else KINDS[:-1])
                    if kind == "disk" and folder not in self.mounts:
                        fault = self.disk_fault(folder, rng, log, problems)
                    else:
                        fault = self.attempt(folder, rng, "kill" if kind == "disk" else kind, log, problems)
                    faults.append(fault)
                    if fault.phase is None:
                        break
                if faults[-1].phase is None:
                    continue  # drawn again
                diffs = self.finish(folder, log)
                return RoundResult(seed, faults, (log if problems else []) + problems + diffs, draw + 1)
            finally:
                self.unmount(folder)
        return RoundResult(seed, faults, [f"no draw of {MAX_DRAWS} had every fault land in a running job"], MAX_DRAWS)


def finished(folder: Path) -> bool:
    """Whether the job in `folder` recorded its end as finished."""
    with contextlib.suppress(OSError, ValueError):
        return json.loads((folder / "results.json").read_text()).get("status") == "finished"
    return False


def table(results: list[RoundResult]) -> str:
    """The faults of `results` by kind and by the phase they landed in: how many were in passed and failed rounds."""
    counts = Counter((fault.kind, fault.phase, result.passed) for result in results for fault in result.faults
                     if fault.phase is not None)
    cells = sorted({(kind, phase) for kind, phase, _ in counts}, key=lambda c: (KINDS.index(c[0]), PHASES.index(c[1])))
    lines = [f"{'fault':<12} {'phase':<27} {'passed':>7} {'failed':>7}"]
    lines += [f"{kind:<12} {phase:<27} {counts[kind, phase, True]:>7} {counts[kind, phase, False]:>7}"
              for kind, phase in cells]
    redrawn = sum(result.draws - 1 for result in results)
    passed = sum(result.passed for result in results)
    lines.append(f"{passed} of {len(results)} rounds passed ({sum(len(r.faults) for r in results)} faults); "
                 f"{redrawn} draws found the job ended and were drawn again")
    return "\n".join(lines)


def can_fill_disk(probe: Path) -> bool:
    """Whether this process may mount a small tmpfs (root, with the capability to mount)."""
    probe.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)], capture_output=True).returncode:
        return False
    subprocess.run(["umount", str(probe)], check=True)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0, help="first round's seed; round i uses seed + i")
    parser.add_argument("--work", type=Path, default=Path("outputs/chaos"))
    args = parser.parse_args()
    from helpers import write_fake_fashion_mnist

    args.work.mkdir(parents=True, exist_ok=True)
    fake_root = write_fake_fashion_mnist(args.work / "data")
    chaos = Chaos(fake_root, args.work, disk=can_fill_disk(args.work / "mount-probe"))
    chaos.run_reference()
    results = []
    for seed in range(args.seed, args.seed + args.rounds):
        results.append(chaos.round(seed))
        print(results[-1].describe(), flush=True)
    print("\n" + table(results))
    sys.exit(0 if all(result.passed for result in results) else 1)


if __name__ == "__main__":
    main()
