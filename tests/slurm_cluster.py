"""Test helpers for the real one-node SLURM cluster of scripts/slurm-local: bring it up, ask it about jobs."""

import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "slurm-local"
INSTALL = "apt-get install -y slurm-wlm munge"


def free_port_pair() -> int:
    """A port p with p and p + 1 free (slurmctld and slurmd), so a cluster already up on this machine is left be."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("", 0))
            port = first.getsockname()[1]
            with socket.socket() as second:
                try:
                    second.bind(("", port + 1))
                except OSError:
                    continue
        return port
    raise RuntimeError("no two adjacent free ports")


def start_cluster(folder: Path) -> dict:
    """`scripts/slurm-local up folder`; the environment that points SLURM's commands at it. Skips (or, where
    RPPNETS_REQUIRE_SLURM=1 as in CI, fails) when the packages or root are missing."""
    missing = [name for name in ("munged", "slurmctld", "slurmd", "sbatch") if shutil.which(name) is None]
    reason = (f"SLURM not installed ({', '.join(missing)} missing): {INSTALL}" if missing
              else "starting slurmd needs root" if os.geteuid() != 0 else None)
    if reason:
        if os.environ.get("RPPNETS_REQUIRE_SLURM") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    env = os.environ | {"SLURM_LOCAL_PORT": str(free_port_pair())}
    up = subprocess.run([SCRIPT, "up", folder], capture_output=True, text=True, timeout=120, env=env)
    assert up.returncode == 0, up.stdout + up.stderr
    return {"SLURM_CONF": str(folder / "slurm.conf")}


def stop_cluster(folder: Path) -> None:
    subprocess.run([SCRIPT, "down", folder], capture_output=True, timeout=120)


def scontrol_job(job: str, env: dict) -> dict:
    """`scontrol show job <job>` as a dict (JobState, Restarts, ExitCode, ...); {} once SLURM has forgotten it."""
    shown = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, env=os.environ | env)
    return dict(re.findall(r"(\w+)=(\S*)", shown.stdout)) if shown.returncode == 0 else {}


def wait_until(condition, timeout: float, what: str, interval: float = 0.5):
    """Poll `condition()` until it returns something true; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
