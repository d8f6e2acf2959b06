"""`python -m rppnets.records.best_params SEARCH_DIR`: a finished search's best parameters as Hydra overrides.

Prints, on one line, what hparams_search= found best (its best.yaml), ready for the command line of the runs that
use it: `python src/train.py optimizer.lr=0.0021 ... $(python -m rppnets.records.best_params outputs/search/X)`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from omegaconf import OmegaConf

BEST = "best.yaml"


def override_of(key: str, value) -> str:
    """A job's override for one parameter's value: floats in full (repr), choices as Hydra wrote them."""
    return f"{key}={value!r}" if isinstance(value, float) else f"{key}={value}"


def best_overrides(search_dir: Path) -> list[str]:
    """`key=value` for each parameter of the best trial; floats written in full."""
    path = Path(search_dir) / BEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: the search in {search_dir} has not ended with a finished "
                                "trial (run its command again to continue it)")
    params = OmegaConf.to_container(OmegaConf.load(path)).get("best_params") or {}
    return [override_of(key, value) for key, value in params.items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("search_dir", type=Path, help="the search's sweep folder (holds best.yaml)")
    args = parser.parse_args(argv)
    try:
        print(" ".join(best_overrides(args.search_dir)))
    except FileNotFoundError as err:
        print(f"best_params: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
