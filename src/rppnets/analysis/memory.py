"""Memory of training, measured from the tensors and the allocator: the state kept between steps and a step's peak.

Plain PyTorch, no Lightning: `measure_training` runs a model for a few steps and returns its state (by part) and
step peak, measured by rppnets.meters. `python -m rppnets.analysis.memory` measures every network of the figure, RPP in each way of holding P, and
writes the CSV that the report plots (rppnets.analysis.report).
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from rppnets.console import silence_known_noise
from rppnets.meters import STATE_PARTS, StepPeakMeter, state_breakdown

MODES = ("stored", "shared", "generated")  # the three ways of holding the same P (rppnets.layers.rpp_linear)
CSV_COLUMNS = ["network", "permutation", "params_trainable", *STATE_PARTS, "state_bytes", "step_peak_bytes",
               "batch_size", "device", "loss"]
CONF_DIR = Path(__file__).resolve().parents[3] / "conf"  # the repository's configs (an editable install)


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
