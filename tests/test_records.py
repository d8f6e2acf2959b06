"""What the committed records depend on: their columns are the ones the reports write today, and the configs that
made them mean what the records say (budgets, seeds, bars, the compile mode)."""

import csv
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from helpers import compose_train
from rppnets.analysis.memory import CSV_COLUMNS as MEMORY_COLUMNS
from rppnets.analysis.report import CURVE_HEADER
from rppnets.analysis.report_data import SUMMARY_COLUMNS
from rppnets.models import count_trainable
from rppnets.training.pipeline import train

RECORD = Path(__file__).resolve().parents[1] / "experiments" / "fashion_mnist_plot"


@pytest.mark.parametrize("name,columns", [("summary.csv", SUMMARY_COLUMNS), ("curves.csv", CURVE_HEADER),
                                          ("memory.csv", MEMORY_COLUMNS)])
def test_the_committed_figure_record_has_the_columns_the_report_writes(name, columns):
    with open(RECORD / name, newline="") as file:
        assert next(csv.reader(file)) == list(columns)


@pytest.mark.parametrize("k", [100, 200])
def test_the_dense_network_of_the_rpp_budget_has_no_biases_when_rpp_has_none(k):
    def count(network):
        return count_trainable(instantiate(compose_train([f"network={network}", f"model.k={k}", "model.bias=none",
                                                          "model.permutation=generated"
                                                          if network == "rpp" else "seed=0"]).model))
    rpp, dense = count("rpp"), count("dense_matched")
    assert abs(dense - rpp) <= 0.05 * rpp, (dense, rpp)  # sized with biases it would be 6-9% over


def test_the_permutations_follow_the_run_seed():
    def first_index(seed):
        net = instantiate(compose_train(["network=rpp", "model.k=2", f"seed={seed}"]).model)
        return next(buffer for name, buffer in net.named_buffers() if name.endswith("index")).clone()

    assert torch.equal(first_index(0), first_index(0))
    assert not torch.equal(first_index(0), first_index(1))  # every seed of a figure draws its own P


def test_the_controls_bars_span_min_to_max_around_an_uneven_mean(tmp_path):
    from test_frontier_report import write_job

    from rppnets.analysis.frontier_report import controls_figure, read_jobs, summarize

    sweep = tmp_path / "controls"
    for seed, acc in enumerate((0.6, 0.65, 0.9)):  # mean 0.7167: not the midpoint of 0.6 and 0.9
        write_job(sweep, f"random-seed{seed}", "rpp_random", seed, 10, acc, 1.0 - acc, permutation="random")
    jobs = read_jobs(sweep)
    accuracy = controls_figure(summarize(jobs, "permutation"), jobs).axes[0]
    assert list(accuracy.get_lines()[0].get_ydata()) == pytest.approx([(0.6 + 0.65 + 0.9) / 3])
    assert accuracy.collections[0].get_segments()[0][:, 1].tolist() == pytest.approx([0.6, 0.9])


def test_the_compile_mode_asked_for_reaches_torch_compile(fake_root, tmp_path, monkeypatch):
    modes = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kwargs: modes.append(kwargs))  # a spy, eager run
    train(compose_train(["compile=reduce-overhead", "model.width=16", "logger=csv"], output_dir=tmp_path,
                        fake_root=fake_root))
    assert modes == [{"mode": "reduce-overhead", "fullgraph": True}]
