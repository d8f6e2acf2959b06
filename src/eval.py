"""Hydra entry point: `python src/eval.py run=<run folder>` tests a finished run's checkpoint (its own data set's test
set, or `data=mnist` ...) and writes <run folder>/eval.json; `checkpoint=best` evaluates checkpoints/best.ckpt."""

import sys
import traceback

import hydra
from omegaconf import DictConfig

import rppnets.schemas  # noqa: F401  (registers the config schemas before Hydra composes)
from rppnets.console import shell_word
from rppnets.data import DataNotFoundError
from rppnets.training.evaluation import EVAL, EvalRefused, evaluate
from rppnets.training.pipeline import ConfigError

# Exit statuses, as src/train.py's: 1 the evaluation failed, 2 refused (bad input: nothing was evaluated).
FAILED, INVALID = 1, 2


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig) -> dict:
    global job_started
    job_started = True
    try:
        record = evaluate(cfg)
    except EvalRefused as err:
        print(f"Refused: {err}", file=sys.stderr)
        sys.exit(INVALID)
    except ConfigError as err:
        what = "no data" if isinstance(err.__cause__, DataNotFoundError) else "invalid config"
        print(f"{what.capitalize()}: {err}", file=sys.stderr)
        sys.exit(INVALID)
    except Exception as err:
        expected = type(err).__module__.startswith("rppnets") or (isinstance(err, OSError) and err.errno is not None)
        print(f"Evaluation failed: {err}" if expected else traceback.format_exc(), file=sys.stderr)
        sys.exit(FAILED)
    metrics = "  ".join(f"{key} {value:.4g}" for key, value in record["metrics"].items())
    print(f"{record['run_name']} ({record['checkpoint']}, epoch {record['epochs_done']}) on {record['data']['name']}: "
          f"{metrics}\n  written: {shell_word(str(cfg.run).rstrip('/') + '/' + EVAL)}")
    return record


def run_main() -> None:
    """main(), with a config Hydra could not compose (run= missing, a misspelt key) exiting with status 2."""
    try:
        main()
    except SystemExit as stop:
        if stop.code == 1 and not job_started:  # Hydra's own exit before any evaluation
            sys.exit(INVALID)
        raise


job_started = False  # set when main() runs: a composed config reached the evaluation


if __name__ == "__main__":
    run_main()
