"""hydra/sweeper=optuna: a hyperparameter search on current Optuna whose study, stored in the sweep folder, continues
where a killed search stopped: its finished trials are kept, its interrupted ones resume in their own run folders."""

from __future__ import annotations

import csv
import inspect
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import CompactHydraException
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from rppnets.records.best_params import BEST, override_of

log = logging.getLogger(__name__)

TRIALS = "trials.csv"  # written beside the study (and BEST) at the end of every invocation
SETTINGS = "search.yaml"  # what the study in a sweep folder was started with


class SearchError(CompactHydraException, ValueError):
    """A search that cannot start as asked: a search space Optuna cannot take, or a stored study of other settings."""


def search_space(overrides: Sequence[Override]) -> tuple[dict[str, Any], list[str]]:
    """Optuna distributions of the swept overrides, by key, and the fixed overrides, as Hydra's override grammar
    writes them (that of Hydra's own Optuna sweeper):

    - ``interval(a, b)``: a float in [a, b]; ``tag(log, interval(a, b))`` on a log scale; tag ``int``: integers
    - ``range(a, b[, step])``: integers from a, by step, below b
    - ``a,b,c`` or ``choice(a, b, c)``: one of these values (a config group's options too: ``model=rpp,dense``)
    """
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    space: dict[str, Any] = {}
    fixed: list[str] = []
    for override in overrides:
        key = override.get_key_element()
        value = override.value()
        written = (override.input_line or "").partition("=")[2] or str(value)  # as the user wrote it
        if not override.is_sweep_override():
            fixed.append(f"{key}={override.get_value_element_as_str()}")
        elif isinstance(value, IntervalSweep):
            kind = IntDistribution if "int" in value.tags else FloatDistribution
            low, high = (int(value.start), int(value.end)) if kind is IntDistribution else (value.start, value.end)
            if not low < high or ("log" in value.tags and low <= 0):
                raise SearchError(f"{key}: interval({value.start}, {value.end}) is invalid; allowed: start < end, "
                                  "and start > 0 on a log scale")
            space[key] = kind(low, high, log="log" in value.tags)
        elif isinstance(value, RangeSweep):
            values = list(value.range())
            if not values or not all(isinstance(v, int) for v in values):
                raise SearchError(f"{key}: {written} is invalid; allowed: a range of "
                                  "integers with at least one value (use interval(a, b) for floats)")
            space[key] = IntDistribution(values[0], values[-1], step=value.step)
        elif isinstance(value, ChoiceSweep):
            space[key] = CategoricalDistribution(list(override.sweep_string_iterator()))
        else:
            raise SearchError(f"{key}: {written} cannot be searched; allowed: "
                              "interval(a, b), tag(log, interval(a, b)), range(a, b), a,b,c or choice(a, b, c)")
    return space, fixed




class OptunaSweeper(Sweeper):
    """Samples `n_trials` trials of the search space (`params` and the command line's sweep overrides) with Optuna
    and launches each as an ordinary job of the sweep, in the folder of its trial number, through the configured
    launcher (in this process, joblib, SLURM: `n_jobs` trials at a time); the job's returned metrics give the value.

    Only this process opens the study's storage (SQLite in the sweep folder by default): jobs on other machines
    return their metrics to it, so no database is shared across nodes. Run one search command per study at a time.

    Run again, the same command continues the study: `n_trials` counts the study's trials in all, trials that
    finished are kept, and a trial that was running when the search was stopped is launched again with its own
    parameters, into its own folder, so its run resumes from its checkpoint (or is skipped if it had finished).
    The sampler is made afresh for each trial, seeded by `seed` and the trial's number: which parameters a trial
    gets depends only on the trials finished before it, so a search stopped and continued samples the same trials
    as one that never stopped.
    """

    def __init__(self, sampler: DictConfig | None, direction: str, metric: str, study_name: str,
                 storage: str | None, n_trials: int, n_jobs: int, params: DictConfig | None = None) -> None:
        if direction not in ("minimize", "maximize"):
            raise SearchError(f"hydra.sweeper.direction={direction!r} is invalid; allowed: 'minimize', 'maximize'")
        for name, value in (("n_trials", n_trials), ("n_jobs", n_jobs)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SearchError(f"hydra.sweeper.{name}={value!r} is invalid; allowed: an integer >= 1")
        self.sampler_config = sampler
        self.direction, self.metric, self.study_name = direction, metric, study_name
        self.storage, self.n_trials, self.n_jobs = storage, n_trials, n_jobs
        self.params = {str(k): str(v) for k, v in (params or {}).items()}
        self.config: DictConfig | None = None
        self.launcher = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        import optuna

        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides([f"{k}={v}" for k, v in self.params.items()] + list(arguments))
        # a later override of a key replaces an earlier one (the command line over the search's params)
        space, fixed = search_space(list({o.get_key_element(): o for o in overrides}.values()))
        if not space:
            raise SearchError("nothing to search: give hydra.sweeper.params or a sweep override such as "
                              "'optimizer.lr=tag(log, interval(1e-4, 1e-1))'")
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)  # before the storage opens: SQLite makes no folders
        self.check_settings(sweep_dir, space, fixed)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # the sweeper says what each trial got, once
        study = optuna.create_study(study_name=self.study_name, storage=self.storage, direction=self.direction,
                                    load_if_exists=True)
        self.rerun_interrupted(study, fixed)
        while (todo := self.n_trials - len(study.trials)) > 0:
            trials = []
            for _ in range(min(self.n_jobs, todo)):
                study.sampler = self.sampler(len(study.trials))
                trials.append(study.ask(fixed_distributions=space))
            self.run(study, [(trial.number, trial.params) for trial in trials], fixed)
        self.report(study, sweep_dir)

    def sampler(self, number: int):
        """The sampler for trial `number`: the configured one, seeded by its seed and the trial number."""
        if self.sampler_config is None:
            return None
        config = OmegaConf.to_container(self.sampler_config, resolve=True)
        target = instantiate({"_target_": config["_target_"], "_partial_": True}).func
        if "seed" in inspect.signature(target).parameters:  # not seed + number: numpy's first draws of 0 and 3 are alike
            config["seed"] = int(numpy.random.SeedSequence([config.get("seed") or 0, number]).generate_state(1)[0])
        return instantiate(config)

    def check_settings(self, sweep_dir: Path, space: dict, fixed: list[str]) -> None:
        """A sweep folder holds one study, continued only under the settings it was started with (its name, fixed
        overrides, search space and metric, kept in <sweep>/search.yaml): the trials' folders are named by trial
        number, so another search aimed at the same folder would train over them. It is refused before any trial."""
        from optuna.distributions import distribution_to_json

        settings = {"study_name": self.study_name, "metric": self.metric, "fixed": sorted(fixed),
                    "space": {key: distribution_to_json(d) for key, d in sorted(space.items())}}
        path = sweep_dir / SETTINGS
        if not path.is_file():
            temporary = path.with_suffix(".tmp")
            OmegaConf.save(OmegaConf.create(settings), temporary)
            temporary.replace(path)
            return
        stored = OmegaConf.to_container(OmegaConf.load(path))
        if stored != settings:
            changes = [f"{key}: {stored.get(key)!r} there, {settings[key]!r} now" for key in settings
                       if key != "fixed" and stored.get(key) != settings[key]]
            there, now = set(stored.get("fixed", [])), set(settings["fixed"])
            changes += [f"{which} {' '.join(sorted(overrides))}" for which, overrides in
                        (("without", there - now), ("with", now - there)) if overrides]
            raise SearchError(f"{sweep_dir} holds a search with other settings ({'; '.join(changes)}): give this "
                              f"one its own hydra.sweep.dir, or delete that folder to start its study again")

    def rerun_interrupted(self, study, fixed: list[str]) -> None:
        """Trials a stopped search left running: launched again under their own numbers and parameters."""
        from optuna.trial import TrialState

        stale = [(t.number, t.params) for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
        if stale:
            log.info(f"continuing {len(stale)} trial(s) a stopped search left running: "
                     f"{', '.join(str(number) for number, _ in stale)}")
        for start in range(0, len(stale), self.n_jobs):
            self.run(study, stale[start:start + self.n_jobs], fixed)

    def run(self, study, trials: list[tuple[int, dict]], fixed: list[str]) -> None:
        """Launch the trials (job number = trial number, so each trial keeps its folder) and tell their values."""
        from optuna.trial import TrialState

        for number, params in trials:
            log.info(f"trial {number}: " + " ".join(override_of(k, v) for k, v in params.items()))
        returns: list[JobReturn] = []
        for batch in consecutive(trials):  # a launcher numbers the jobs of one call consecutively
            jobs = [fixed + [override_of(k, v) for k, v in params.items()] for _, params in batch]
            returns += self.launcher.launch(jobs, initial_job_idx=batch[0][0])
        for (number, _), returned in zip(trials, returns):
            value = self.value_of(returned)
            if value is None:
                study.tell(number, state=TrialState.FAIL)
                log.warning(f"trial {number} failed: no finite {self.metric} (its run folder says why)")
            else:
                study.tell(number, value)

    def value_of(self, returned: JobReturn) -> float | None:
        """The job's `metric`, from the metrics src/train.py returns; None for a job that failed or has no value."""
        if returned.status != JobStatus.COMPLETED or not isinstance(returned.return_value, dict):
            return None
        value = returned.return_value.get(self.metric)
        return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None

    def report(self, study, sweep_dir: Path) -> None:
        """Print the trials and the best one; write them beside the study (trials.csv, best.yaml)."""
        from optuna.trial import TrialState

        trials = study.get_trials(deepcopy=False)
        names = sorted({name for trial in trials for name in trial.params})
        rows = [{"trial": t.number, "state": t.state.name.lower(), self.metric: t.value,
                 **{name: t.params.get(name) for name in names},
                 "seconds": round(t.duration.total_seconds(), 1) if t.duration else None} for t in trials]
        with open(sweep_dir / TRIALS, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=["trial", "state", self.metric, *names, "seconds"])
            writer.writeheader()
            writer.writerows(rows)
        print(f"\nstudy {self.study_name} ({len(trials)} trials, {self.direction} {self.metric}):")
        print("  " + "  ".join(f"{column:>12}" for column in rows[0]) if rows else "  no trials")
        for row in rows:
            print("  " + "  ".join(f"{cell:>12.6g}" if isinstance(cell, float) else f"{cell!s:>12}"
                                   for cell in row.values()))
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not complete:
            print("no trial finished: no best parameters")
            return
        best = study.best_trial
        record = {"study": self.study_name, "metric": self.metric, "direction": self.direction,
                  "best_trial": best.number, "best_value": best.value, "best_params": dict(best.params),
                  "trials_complete": len(complete), "trials": len(trials)}
        OmegaConf.save(OmegaConf.create(record), sweep_dir / BEST)
        print(f"best: trial {best.number}, {self.metric} {best.value:.6g}: "
              + " ".join(override_of(k, v) for k, v in best.params.items()) + f"  ({sweep_dir / BEST})")


def consecutive(trials: list[tuple[int, dict]]) -> list[list[tuple[int, dict]]]:
    """The trials in runs of consecutive numbers."""
    runs: list[list[tuple[int, dict]]] = []
    for trial in trials:
        if runs and runs[-1][-1][0] + 1 == trial[0]:
            runs[-1].append(trial)
        else:
            runs.append([trial])
    return runs
