"""Hydra entry point: `python src/train.py model=rpp model.k=100` trains one network (add -m to sweep)."""

import sys

import hydra
from omegaconf import DictConfig

from rppnets.training import ConfigError, train


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float:
    try:
        metrics = train(cfg)
    except ConfigError as err:
        print(f"Invalid config: {err}", file=sys.stderr)
        sys.exit(2)
    return metrics.get("val/loss", metrics.get("train/loss"))  # for Hydra sweepers that optimise


if __name__ == "__main__":
    main()
