"""scripts/slurm-local as the README runs it: as root it starts the cluster (tests/test_slurm.py), as a user it starts
itself again through sudo, and where there is no sudo it says to run it as root before touching anything."""

import os
import shutil
import subprocess

import pytest

from slurm_cluster import SCRIPT


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("runuser"), reason="switching to another user needs root")
@pytest.mark.skipif(shutil.which("sudo") is not None, reason="with sudo here, a user's call would ask for a password")
@pytest.mark.parametrize("command", ["up", "down"])
def test_a_user_without_sudo_is_told_to_run_it_as_root_and_nothing_is_started(command, tmp_path):
    folder = tmp_path / "cluster"
    done = subprocess.run(["runuser", "-u", "nobody", "--", "bash", str(SCRIPT), command, str(folder)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "no sudo here: run it as root" in done.stderr, done.stderr
    assert not folder.exists() and done.stdout == ""  # no `export SLURM_CONF=...` for the eval to take
