"""`make reproduce-quick`: the whole chain (setup, data, five-network sweep, report) end to end on the real data."""

import csv
import subprocess
from pathlib import Path

import pytest

from rppnets.data import SYSTEM_DIR

ROOT = Path(__file__).resolve().parents[1]
NETWORKS = {"rpp", "rpp_nobias", "dense_wide", "dense_narrow", "softmax"}


@pytest.mark.slow
@pytest.mark.real_data
@pytest.mark.skipif(not Path(SYSTEM_DIR).is_dir() and not (ROOT / "data/FashionMNIST/raw").is_dir(),
                    reason="needs the real Fashion-MNIST (apt-get install dataset-fashion-mnist, or make data)")
def test_reproduce_quick_builds_figure_and_tables(tmp_path):
    sweep = tmp_path / "sweep"
    result = subprocess.run(["make", "reproduce-quick", f"QUICK_SWEEP={sweep}"], cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = sweep / "report"
    curves = list(csv.DictReader((report / "curves.csv").open()))
    assert {row["network"] for row in curves} == NETWORKS
    assert {row["epoch"] for row in curves} == {"0", "1"}
    assert (report / "figure.png").stat().st_size > 10_000
    assert len(list(csv.DictReader((report / "summary.csv").open()))) == 5
    assert str(report) in result.stdout  # tells the user where the results are

    # A second run finds every job finished and only rebuilds the report.
    again = subprocess.run(["make", "reproduce-quick", f"QUICK_SWEEP={sweep}"], cwd=ROOT, capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0 and again.stdout.count("already finished") == 5
