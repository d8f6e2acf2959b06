"""Fault injection at random moments: a small real job is killed, signalled (itself, or every process of it as SLURM
signals a job step), damaged or starved of disk, then rerun until it finishes; its records must equal an
uninterrupted run's. `python tests/chaos.py --rounds 500` (make chaos)."""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from helpers import descendants

ROOT = Path(__file__).resolve().parents[1]
# A job of 3 epochs of 14 steps with W&B offline: long enough that random moments land in every phase of its life.
JOB = ["model.width=16", "trainer.max_epochs=3", "data.batch_size=16", "logger=wandb"]
CATCHABLE = [signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2,
             signal.SIGALRM, signal.SIGXCPU]
DAMAGEABLE = ["checkpoints/last.ckpt", "checkpoints/previous.ckpt", "csv/metrics.csv", "csv/run.json", "results.json",
              "run_state.json"]
VARYING = ("time/", "memory/peak_rss", "_runtime", "_timestamp")  # differ between any two runs
MAX_ATTEMPTS = 6


def command(fake_root: Path, folder: Path) -> list[str]:
    return [sys.executable, "src/train.py", f"hydra.run.dir={folder}", f"data.root={fake_root}", "data.system_dir=null",
            "data.download=false", "data.verify_md5=false", "data.val_size=32", "data.eval_batch_size=64",
            "trainer.accelerator=cpu", "~callbacks.progress_bar", *JOB]


def environment() -> dict:
    return dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", OMP_NUM_THREADS="1")


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
class Chaos:
    fake_root: Path
    work: Path
    reference: Record | None = None
    life_s: float = 20.0  # an uninterrupted attempt's wall time, measured by the reference
    disk: bool = False  # fill the disk too (needs root to mount a tmpfs): can_fill_disk()
    mounts: list = field(default_factory=list)

    def run_reference(self) -> Record:
        folder = self.work / "reference"
        started = time.monotonic()
        done = subprocess.run(command(self.fake_root, folder), cwd=ROOT, env=environment(), capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
        self.life_s = time.monotonic() - started
        self.reference = read_record(folder)
        return self.reference

    def attempt(self, folder: Path, rng: random.Random, fault: str, log: list) -> None:
        process = subprocess.Popen(command(self.fake_root, folder), cwd=ROOT, env=environment(),
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        moment = rng.uniform(0, self.life_s)
        try:
            process.communicate(timeout=moment)
            log.append(f"{fault}: ended before {moment:.1f} s (rc {process.returncode})")
        except subprocess.TimeoutExpired:
            if fault == "kill":
                process.send_signal(signal.SIGKILL)
                log.append(f"SIGKILL at {moment:.1f} s")
            elif fault == "signal":
                signum = rng.choice(CATCHABLE)
                process.send_signal(signum)
                log.append(f"{signum.name} at {moment:.1f} s")
                if rng.random() < 0.2:  # asked twice, as an impatient user would
                    time.sleep(rng.uniform(0, 1))
                    if process.poll() is None:
                        process.send_signal(signum)
                        log.append(f"{signum.name} again")
            elif fault == "step-signal":  # as SLURM signals a job step: every process, W&B's service too
                signum = rng.choice(CATCHABLE)
                for pid in [process.pid, *descendants(process.pid)]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signum)
                log.append(f"{signum.name} to every process of the run at {moment:.1f} s")
            elif fault == "damage":
                process.send_signal(signal.SIGKILL)
                log.append(f"SIGKILL at {moment:.1f} s")
            output = process.communicate(timeout=300)[0]
            if fault in ("signal", "step-signal") and process.returncode not in (-signal.SIGKILL, 0) \
                    and process.returncode != 128 + signum:
                log.append(f"unexpected exit {process.returncode}:\n{output[-3000:]}")
        if fault == "damage":
            present = [name for name in DAMAGEABLE if (folder / name).is_file()]
            if present:
                log.append("damaged: " + damage(folder / rng.choice(present), rng))

    def fill_disk(self, folder: Path, rng: random.Random, log: list, size_kb: int | None = None
                  ) -> subprocess.CompletedProcess:
        """Run an attempt on a disk (a tmpfs mounted at the run folder) that fills at a random point; then grow it.

        The attempt must end with the full disk named as the last line it prints; the reruns go on, on a larger disk.
        """
        folder.mkdir(parents=True, exist_ok=True)
        size_kb = size_kb or rng.randint(64, 4096)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(folder)], check=True)
        self.mounts.append(folder)
        done = subprocess.run(command(self.fake_root, folder), cwd=ROOT, env=environment(), capture_output=True,
                              text=True, timeout=600)
        log.append(f"disk of {size_kb} KiB: exit {done.returncode}")
        last = (done.stdout + done.stderr).strip().splitlines()[-1:] or [""]
        if done.returncode != 0 and "No space left" not in last[0]:
            log.append(f"the full disk is not the last line: {(done.stdout + done.stderr)[-3000:]}")
        subprocess.run(["mount", "-o", "remount,size=256m", str(folder)], check=True)
        return done

    def finish(self, folder: Path, log: list) -> list[str]:
        """Rerun until the job finishes; the differences of its records from the reference's, after `log`."""
        for _ in range(MAX_ATTEMPTS):
            done = subprocess.run(command(self.fake_root, folder), cwd=ROOT, env=environment(),
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

    def round(self, seed: int) -> list[str]:
        """One round: 1-3 faults, then reruns until the job finishes; the differences from the reference, if any."""
        rng = random.Random(seed)
        folder = self.work / f"round-{seed}"
        log: list[str] = [f"round {seed}"]
        try:
            for _ in range(rng.randint(1, 3)):
                kinds = ["kill", "signal", "step-signal", "damage"] + (["disk"] if self.disk else [])
                kind = rng.choice(kinds)
                if kind == "disk" and folder not in self.mounts:
                    self.fill_disk(folder, rng, log)
                else:
                    self.attempt(folder, rng, "kill" if kind == "disk" else kind, log)
            return self.finish(folder, log)
        finally:
            self.unmount(folder)


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
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers import write_fake_fashion_mnist

    args.work.mkdir(parents=True, exist_ok=True)
    fake_root = write_fake_fashion_mnist(args.work / "data")
    chaos = Chaos(fake_root, args.work, disk=can_fill_disk(args.work / "mount-probe"))
    chaos.run_reference()
    failed = 0
    for seed in range(args.seed, args.seed + args.rounds):
        problems = chaos.round(seed)
        failed += bool(problems)
        print("\n  ".join(problems) if problems else f"round {seed}: equal to the uninterrupted run", flush=True)
    print(f"{args.rounds - failed} of {args.rounds} rounds passed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
