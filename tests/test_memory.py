"""Memory measured from tensors and allocations: training state by part, a step's peak, the per-mode CLI."""

import csv

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from helpers import compose_train
from rppnets.layers import cpu_kernels
from rppnets.analysis.memory import main, measure_training, sweep_configs
from rppnets.meters import STATE_PARTS, StepPeakMeter, state_breakdown, state_bytes, tensor_attribute_bytes
from rppnets.layers.rpp_linear import RPPLinear, index_storage

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]


def adam_step(model: nn.Module, x: torch.Tensor) -> torch.optim.Optimizer:
    optimizer = torch.optim.Adam(model.parameters())
    model(x).square().mean().backward()
    optimizer.step()
    return optimizer


def test_state_of_a_tiny_model_with_adam_matches_the_count_by_hand():
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    optimizer = adam_step(model, torch.randn(4, 3))
    # Linear: 6 + 2 floats, BatchNorm: 2 + 2 floats -> 12 floats of parameters, as many of gradients.
    # Adam: exp_avg and exp_avg_sq per parameter (24 floats) and one float32 step per parameter tensor (4).
    # BatchNorm buffers: running_mean and running_var (2 floats each), num_batches_tracked (one int64).
    expected = {"parameters": 48, "gradients": 48, "optimizer": 24 * 4 + 4 * 4, "index": 0, "buffers": 16 + 8}
    assert state_breakdown(model, [optimizer]) == expected
    assert state_bytes(model, optimizer) == 232
    assert state_breakdown(model)["optimizer"] == 0  # no optimizer given: no optimizer state


def test_state_before_a_backward_has_no_gradients():
    model = nn.Linear(3, 2)
    assert state_breakdown(model) == {"parameters": 32, "gradients": 0, "optimizer": 0, "index": 0, "buffers": 0}


@pytest.mark.parametrize("permutation, copies", [("stored", 2), ("shared", 1), ("generated", 0)])
def test_permutation_index_counts_once_per_storage(permutation, copies):
    # Two layers of the same shape: stored keeps an index each, shared one for both, generated none.
    model = nn.Sequential(RPPLinear(8, 4, k=3, permutation=permutation, layer=0),
                          RPPLinear(8, 4, k=3, permutation=permutation, layer=1))
    parts = state_breakdown(model)
    one_index = 8 * 4 * 3 * 1  # m * k * n entries of uint8 (m = 8 fits)
    assert parts["index"] == copies * one_index == index_storage(model)[1]
    keys = 0 if permutation != "generated" else sum(b.numel() * b.element_size() for b in model.buffers())
    assert parts["buffers"] == keys  # the stored index is a buffer, but counted as index only


def test_data_bytes_count_each_storage_once():
    class Data:
        pass

    data = Data()
    data.x_train, data.y_train = torch.zeros(10, 784), torch.zeros(10, dtype=torch.long)
    data.x_view = data.x_train[:5]  # a view: no new memory
    data.name = "not a tensor"
    assert tensor_attribute_bytes(data) == 10 * 784 * 4 + 10 * 8


@pytest.mark.parametrize("device", DEVICES)
def test_step_peak_is_the_highest_allocation_above_the_step_start(device):
    kept = torch.empty(1_000_000, device=device)  # 4 MB allocated before the step: not part of its peak
    meter = StepPeakMeter(device)
    meter.open()
    for size in (250_000, 500_000):
        meter.begin_step()
        a = torch.empty(size, device=device)  # size * 4 bytes
        b = torch.empty(2 * size, device=device)
        del a, b
        c = torch.empty(size // 2, device=device)
        del c
        meter.end_step()
    assert meter.close() == 6_000_000
    assert meter.peaks == [3_000_000, 6_000_000]
    del kept


def test_profiler_is_off_outside_the_window():
    meter = StepPeakMeter("cpu")
    meter.open()
    meter.begin_step()
    assert torch.autograd.profiler._is_profiler_enabled
    assert meter.close() is None  # a step left open is not measured
    assert not torch.autograd.profiler._is_profiler_enabled


@pytest.mark.parametrize("device", DEVICES)
def test_rpp_step_peak_is_well_below_the_dense_step_of_the_same_width(device):
    if device == "cpu" and cpu_kernels.kernel() is None:
        pytest.skip("the eager fallback folds the gradient through an int64 index as large as a dense weight")
    torch.manual_seed(0)
    x, y = torch.randn(128, 784, device=device), torch.randint(0, 1000, (128,), device=device)
    peaks = {}
    for name, layer in {"dense": nn.Linear(784, 1000), "stored": RPPLinear(784, 10, k=100)}.items():
        layer = layer.to(device)
        result = measure_training(layer, torch.optim.Adam(layer.parameters()), x, y)
        peaks[name] = result["step_peak_bytes"]
    # The dense step makes a (1000, 784) weight gradient after freeing the previous one: at least that much.
    assert peaks["dense"] >= 784 * 1000 * 4
    assert peaks["stored"] < 0.6 * peaks["dense"]


def test_measure_training_counts_state_after_the_first_step_and_trains():
    torch.manual_seed(0)
    model = nn.Linear(20, 3)
    x, y = torch.randn(16, 20), torch.randint(0, 3, (16,))
    before = nn.functional.cross_entropy(model(x), y).item()
    result = measure_training(model, torch.optim.Adam(model.parameters(), lr=0.1), x, y)
    params = 63 * 4
    assert result["parameters"] == result["gradients"] == params
    assert result["optimizer"] == 2 * params + 2 * 4  # Adam's moments and two step counters
    assert result["state_bytes"] == sum(result[part] for part in STATE_PARTS)
    assert result["loss"] < before  # five Adam steps on one batch
    assert result["step_peak_bytes"] > 0


def read_rows(path):
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def test_cli_measures_every_mode_of_the_rpp_networks(tmp_path, capsys):
    out = tmp_path / "memory.csv"
    main(["--networks", "rpp,softmax", "--out", str(out), "data.batch_size=16"])
    rows = read_rows(out)
    assert [(row["network"], row["permutation"]) for row in rows] == [
        ("rpp", "stored"), ("rpp", "shared"), ("rpp", "generated"), ("softmax", "")]
    by_mode = {row["permutation"]: row for row in rows}
    for row in rows:
        assert int(row["state_bytes"]) == sum(int(row[part]) for part in STATE_PARTS)
        assert int(row["step_peak_bytes"]) > 0 and row["batch_size"] == "16"
    assert int(by_mode[""]["params_trainable"]) == 784 * 10 + 10
    # Same parameters, gradients and Adam state in every mode; only the index differs.
    assert len({row["parameters"] + row["optimizer"] for row in rows[:3]}) == 1
    # The two RPP layers differ in shape (784 and 1000 inputs), so shared mode also keeps two indices.
    assert int(by_mode["generated"]["index"]) == 0 < int(by_mode["shared"]["index"]) == int(by_mode["stored"]["index"])
    # Stored and generated hold the same P: the same losses from the same start.
    assert by_mode["stored"]["loss"] == by_mode["generated"]["loss"]
    assert "wrote" in capsys.readouterr().out


def test_sweep_configs_take_each_networks_first_job(tmp_path):
    for folder, network, seed in [("a", "rpp", 0), ("b", "rpp", 1), ("c", "softmax", 0)]:
        cfg = compose_train([f"network={network}", f"seed={seed}"], output_dir=tmp_path / folder)
        (tmp_path / folder / ".hydra").mkdir(parents=True)
        OmegaConf.save(cfg, tmp_path / folder / ".hydra" / "config.yaml")
    configs = sweep_configs(tmp_path)
    assert sorted(configs) == ["rpp", "softmax"] and configs["rpp"].seed == 0
    assert configs["rpp"].model.seed == 0  # interpolations still resolve outside Hydra


def busy() -> None:
    while True:
        pass


@pytest.mark.skipif(cpu_kernels.kernel() is None, reason="the C++ kernels did not build")
@pytest.mark.parametrize("permutation", ["stored", "generated"])
def test_a_steps_peak_holds_still_on_a_busy_machine(permutation):
    """The logged step peak of one config is one figure, whatever the scheduler does: measured as MemoryStats does
    (a warm-up step, then 3 measured steps) three times at 2 threads while a busy process per core competes. The
    fused kernels made their per-thread tiles inside their parallel runs, so whether two were alive at once
    depended on when each thread started: 283,276 / 452,608 / 483,980 bytes for one config on a busy machine."""
    import multiprocessing

    from rppnets.models import MLP

    torch.manual_seed(0)
    net = MLP(kind="rpp", width=10, k=10, permutation=permutation)  # k = 10: the tiles weigh most in the step
    optimizer = torch.optim.Adam(net.parameters())
    x, y = torch.randn(128, 784), torch.randint(0, 10, (128,))

    def step():
        optimizer.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()

    threads = torch.get_num_threads()
    load = [multiprocessing.Process(target=busy, daemon=True) for _ in range(multiprocessing.cpu_count())]
    for process in load:
        process.start()
    try:
        torch.set_num_threads(2)
        step()
        peaks = []
        for _ in range(3):
            meter = StepPeakMeter("cpu")
            meter.open()
            step()  # warm-up, as MemoryStats runs it
            for _ in range(3):
                meter.begin_step()
                step()
                meter.end_step()
            peaks.append(meter.close())
    finally:
        torch.set_num_threads(threads)
        for process in load:
            process.terminate()
    assert len(set(peaks)) == 1, peaks
