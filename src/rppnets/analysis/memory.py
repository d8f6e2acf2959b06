"""Memory of training, measured from the tensors and the allocator: the state kept between steps and a step's peak.

Plain PyTorch, no Lightning: `state_breakdown` sums the distinct storages a run keeps between steps (parameters,
gradients, optimizer state, kept permutation indices, buffers); `StepPeakMeter` measures the peak of tensor memory
during each of a few steps above what was allocated when it began (CUDA: the allocator's peak statistic after a
reset; CPU: torch.profiler's allocation and free events); `measure_training` runs a model for a few steps and
returns both. `python -m rppnets.analysis.memory` measures every network of the figure, RPP in each way of holding P, and
writes the CSV that the report plots (rppnets.analysis.report).
"""

from __future__ import annotations

import argparse
import csv
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

from rppnets.console import silence_known_noise

STATE_PARTS = ("parameters", "gradients", "optimizer", "index", "buffers")
MODES = ("stored", "shared", "generated")  # the three ways of holding the same P (rppnets.layers.rpp_linear)
STEP_RANGE = "rppnets.analysis.memory.step"  # the profiler range that marks one measured step
CSV_COLUMNS = ["network", "permutation", "params_trainable", *STATE_PARTS, "state_bytes", "step_peak_bytes",
               "batch_size", "device", "loss"]
CONF_DIR = Path(__file__).resolve().parents[3] / "conf"  # the repository's configs (an editable install)


def storage_bytes(tensors: Iterable[torch.Tensor | None], seen: set | None = None) -> int:
    """Bytes of the distinct storages behind `tensors`, skipping those already in `seen` (which is updated)."""
    seen = set() if seen is None else seen
    total = 0
    for tensor in tensors:
        if tensor is None:
            continue
        storage = tensor.untyped_storage()
        key = (tensor.device, storage.data_ptr())
        if key not in seen:
            seen.add(key)
            total += storage.nbytes()
    return total


def index_tensors(module: nn.Module) -> list[torch.Tensor]:
    """The permutation indices the RPP layers of `module` keep in memory (a shared one once per layer using it)."""
    from rppnets.layers.rpp_linear import RPPLinear

    indices = [layer.index_tensor() for layer in module.modules() if isinstance(layer, RPPLinear)]
    return [index for index in indices if index is not None]


def optimizer_tensors(optimizers: Iterable[torch.optim.Optimizer]) -> list[torch.Tensor]:
    """The tensors of the optimizers' state (Adam: exp_avg, exp_avg_sq, step), which exist after their first step."""
    return [value for optimizer in optimizers for state in optimizer.state.values()
            for value in state.values() if torch.is_tensor(value)]


def state_breakdown(module: nn.Module, optimizers: Iterable[torch.optim.Optimizer] = ()) -> dict[str, int]:
    """Bytes kept between training steps, by part (STATE_PARTS), each storage counted once across all parts.

    Summed from the tensors themselves: an index shared by several layers counts once, and the stored index (a
    buffer) counts as index, not buffer. Gradients count when present, so call this after a backward; Adam's state
    appears in its first step.
    """
    if isinstance(optimizers, torch.optim.Optimizer):
        optimizers = [optimizers]
    parameters = list(module.parameters())
    parts = {
        "parameters": parameters,
        "gradients": [p.grad for p in parameters],
        "optimizer": optimizer_tensors(optimizers),
        "index": index_tensors(module),
        "buffers": list(module.buffers()),
    }
    seen: set = set()
    return {name: storage_bytes(tensors, seen) for name, tensors in parts.items()}


def state_bytes(module: nn.Module, optimizers: Iterable[torch.optim.Optimizer] = ()) -> int:
    """Total bytes kept between training steps (see state_breakdown)."""
    return sum(state_breakdown(module, optimizers).values())


def tensor_attribute_bytes(obj) -> int:
    """Bytes of the tensors held as attributes of `obj` (a datamodule's x_train, y_train, x_val, ...), storages once."""
    return storage_bytes(value for value in vars(obj).values() if torch.is_tensor(value))


class StepPeakMeter:
    """Peak tensor memory of each measured step above what was allocated when the step began, on one device.

    Use: `open()`, then `begin_step()` / `end_step()` around each measured step, then `close()` for the highest
    peak. CUDA: the caching allocator's peak statistic, reset as each step begins (`prior_peak` keeps the peak
    from before the first reset, for a run-wide maximum). CPU: torch.profiler with profile_memory=True records
    every allocation and free between `open` and `close` only; each step is a record_function range, and its
    peak is the highest running sum of the memory events inside it. The profiler cannot size the free of a
    tensor allocated before it started (PyTorch warns about it once), so run one unmeasured step after `open`.
    """

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.peaks: list[int] = []
        self.prior_peak = 0
        self._profiler: profile | None = None
        self._range: record_function | None = None
        self._start = 0

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def open(self) -> None:
        """Starts measuring (CPU: starts the profiler)."""
        if not self.is_cuda:
            os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # quiets Kineto's device probing on machines without GPU
            self._profiler = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
            self._profiler.start()

    def begin_step(self) -> None:
        """Marks the start of a measured step: what is allocated now is its baseline."""
        if self.is_cuda:
            self.prior_peak = max(self.prior_peak, torch.cuda.max_memory_allocated(self.device))
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        else:
            self._range = record_function(STEP_RANGE)
            self._range.__enter__()

    def end_step(self) -> None:
        """Marks the end of a measured step."""
        if self.is_cuda:
            self.peaks.append(torch.cuda.max_memory_allocated(self.device) - self._start)
        else:
            self._range.__exit__(None, None, None)
            self._range = None

    def close(self) -> int | None:
        """Stops measuring; the highest peak of the measured steps (None if no step was measured)."""
        if self._profiler is not None:
            unfinished = self._range is not None
            if unfinished:  # a step begun but not ended: its range is closed here and not measured
                self._range.__exit__(None, None, None)
                self._range = None
            self._profiler.stop()
            self.peaks = profiled_step_peaks(self._profiler)[:-1 if unfinished else None]
            self._profiler = None
        return max(self.peaks, default=None)


def profiled_step_peaks(prof: profile) -> list[int]:
    """Per STEP_RANGE range of a stopped CPU profile: the peak of the running sum of CPU memory events in it."""
    events = prof.profiler.kineto_results.events()
    steps = sorted((e.start_ns(), e.end_ns()) for e in events if e.name() == STEP_RANGE)
    # sorted() is stable: events of the same nanosecond keep the order in which they were recorded
    memory = sorted(((e.start_ns(), e.nbytes()) for e in events
                     if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU),
                    key=lambda event: event[0])
    peaks = []
    for start, end in steps:
        running = peak = 0
        for time_ns, nbytes in memory:
            if start <= time_ns <= end:
                running += nbytes
                peak = max(peak, running)
        peaks.append(peak)
    return peaks


def measure_training(model: nn.Module, optimizer: torch.optim.Optimizer, inputs: torch.Tensor,
                     targets: torch.Tensor, loss_fn: Callable = F.cross_entropy, measured_steps: int = 3) -> dict:
    """Trains `model` for 2 + measured_steps steps on one batch; returns its state and step peak in bytes.

    Each step is Lightning's automatic optimisation: forward, loss, zero_grad (gradients set to None), backward,
    optimizer step. The state (by part and as `state_bytes`) is counted after the first step, when the optimizer
    state exists; the second step is the profiler's warm-up; `step_peak_bytes` is the highest peak of the rest.
    `loss` is the last step's loss, for comparing runs that should train alike.
    """
    def step() -> torch.Tensor:
        loss = loss_fn(model(inputs), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    step()
    state = state_breakdown(model, [optimizer])
    meter = StepPeakMeter(inputs.device)
    meter.open()
    try:
        step()
        for _ in range(measured_steps):
            meter.begin_step()
            loss = step()
            meter.end_step()
    finally:
        peak = meter.close()
    return {**state, "state_bytes": sum(state.values()), "step_peak_bytes": peak, "loss": loss.item()}


def measure_network(cfg, device: str = "cpu", measured_steps: int = 3) -> dict:
    """Builds the model and optimizer of a composed train config and measures a few steps on a random batch."""
    from hydra.utils import instantiate

    torch.manual_seed(cfg.seed)
    model = instantiate(cfg.model).to(device)
    optimizer = instantiate(cfg.optimizer)(model.parameters())
    batch_size = cfg.data.batch_size
    inputs = torch.rand(batch_size, cfg.model.get("in_features", 784), device=device)
    targets = torch.randint(0, cfg.model.get("num_classes", 10), (batch_size,), device=device)
    row = measure_training(model, optimizer, inputs, targets, measured_steps=measured_steps)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"params_trainable": params, **row, "batch_size": batch_size, "device": device}


def with_modes(configs: dict) -> list[tuple[str, str, object]]:
    """(network, permutation, config) for each config; RPP networks once per mode in MODES, others once with ''."""
    from omegaconf import open_dict

    runs = []
    for network, cfg in configs.items():
        if cfg.model.get("kind") != "rpp":
            runs.append((network, "", cfg))
            continue
        for mode in MODES:
            copy = cfg.copy()
            with open_dict(copy):
                copy.model.permutation = mode
            runs.append((network, mode, copy))
    return runs


def composed_configs(networks: Iterable[str] | None = None, overrides: Iterable[str] = (),
                     conf_dir: Path = CONF_DIR) -> dict:
    """Network name -> the train config composed with `network=<name>` (default: every conf/network/*.yaml)."""
    from hydra import compose, initialize_config_dir

    import rppnets.schemas  # noqa: F401  (registers the config schemas)

    if networks is None:
        networks = [path.stem for path in sorted((Path(conf_dir) / "network").glob("*.yaml"))]
    with initialize_config_dir(config_dir=str(Path(conf_dir).resolve()), version_base="1.3"):
        return {name: compose("train", overrides=[f"network={name}", *overrides]) for name in networks}


def sweep_configs(sweep_dir: Path) -> dict:
    """Network name -> the config of the sweep's first job of that network (its .hydra/config.yaml)."""
    from omegaconf import OmegaConf

    configs = {}
    for path in sorted(Path(sweep_dir).glob("*/.hydra/config.yaml")):
        cfg = OmegaConf.load(path)
        if cfg.get("network") is not None:
            configs.setdefault(cfg.network, cfg)
    if not configs:
        raise FileNotFoundError(f"no job of a named network below {sweep_dir} (no */.hydra/config.yaml with network)")
    return configs


def write_rows(path: Path, rows: list[dict]) -> None:
    """The measured rows as CSV_COLUMNS."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Measure each network's training state and step peak from a few steps (RPP in every mode).")
    parser.add_argument("--sweep", type=Path, default=None,
                        help="take the networks' configs from this sweep's jobs and write <sweep>/memory.csv")
    parser.add_argument("--out", type=Path, default=None, help="CSV to write (default: <sweep>/memory.csv or memory.csv)")
    parser.add_argument("--networks", default=None,
                        help="comma-separated conf/network names to compose (default: all; not with --sweep)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=3, help="measured steps (after the first and a warm-up)")
    parser.add_argument("overrides", nargs="*", help="config overrides when composing from conf/ (no --sweep)")
    args = parser.parse_args(argv)
    silence_known_noise()  # the profiler's and the extension loader's known log lines
    if args.sweep:
        configs = sweep_configs(args.sweep)
    else:
        networks = args.networks.split(",") if args.networks else None
        configs = composed_configs(networks, args.overrides)
    out = args.out or (args.sweep / "memory.csv" if args.sweep else Path("memory.csv"))

    rows = []
    print(f"{'network':<14} {'permutation':<11} {'state bytes':>13} {'step peak bytes':>15} {'loss':>8}")
    for network, mode, cfg in with_modes(configs):
        row = {"network": network, "permutation": mode, **measure_network(cfg, args.device, args.steps)}
        rows.append(row)
        print(f"{network:<14} {mode:<11} {row['state_bytes']:>13,} {row['step_peak_bytes']:>15,} {row['loss']:>8.5f}")
    write_rows(out, rows)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
