"""hparams_search= (the project's Optuna sweeper): the search space from Hydra's override grammar, one study per sweep
folder, trials' values, and a search killed mid-trial that ends with the trials of one that never stopped."""

import csv
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from omegaconf import OmegaConf

from hydra_plugins.rppnets_optuna import optuna_sweeper
from hydra_plugins.rppnets_optuna.optuna_sweeper import consecutive
from rppnets.records.best_params import best_overrides, main as best_params_main
from test_launchers import ROOT, quick, train_py

def search_error() -> type:
    """The sweeper's SearchError as its module holds it now: Hydra's plugin discovery executes the modules under
    hydra_plugins again, so the class imported when this file was may no longer be the one raised."""
    return optuna_sweeper.SearchError


def search_space(overrides):
    return optuna_sweeper.search_space(overrides)


SAMPLER = OmegaConf.create({"_target_": "optuna.samplers.TPESampler", "seed": 0, "n_startup_trials": 8})


def parsed(*overrides):
    return search_space(OverridesParser.create().parse_overrides(list(overrides)))


def sweeper(**settings):
    return optuna_sweeper.OptunaSweeper(**({"sampler": SAMPLER, "direction": "minimize", "metric": "val/loss",
                                            "study_name": "s", "storage": None, "n_trials": 4, "n_jobs": 1}
                                           | settings))


def test_the_search_space_is_read_from_hydras_override_grammar():
    space, fixed = parsed("optimizer.lr=tag(log, interval(1e-4, 1e-1))", "model.k=range(10, 101, 30)",
                          "data.batch_size=64,128", "model=choice(rpp, dense)", "trainer.max_epochs=5",
                          "+x.depth=tag(int, interval(1, 4))", "model.width=interval(8, 16)")
    assert space == {"optimizer.lr": FloatDistribution(1e-4, 1e-1, log=True),
                     "model.k": IntDistribution(10, 100, step=30),
                     "data.batch_size": CategoricalDistribution(["64", "128"]),
                     "model": CategoricalDistribution(["rpp", "dense"]),
                     "+x.depth": IntDistribution(1, 4),  # a key added by the override: each job adds it
                     "model.width": FloatDistribution(8.0, 16.0)}
    assert fixed == ["trainer.max_epochs=5"]


@pytest.mark.parametrize("override, named", [("optimizer.lr=interval(0.1, 0.01)", "start < end"),
                                             ("optimizer.lr=tag(log, interval(0, 1))", "start > 0 on a log scale"),
                                             ("model.k=range(5, 5)", "at least one value"),
                                             ("model.k=range(0.5, 2.5)", "a range of integers")])
def test_a_search_space_optuna_cannot_take_is_refused_naming_the_key(override, named):
    with pytest.raises(search_error(), match=rf"^{override.split('=')[0]}: .*{named}"):
        parsed(override)


@pytest.mark.parametrize("setting, value", [("direction", "up"), ("n_trials", 0), ("n_jobs", 1.5),
                                            ("n_trials", True)])
def test_bad_sweeper_settings_are_refused_naming_the_field(setting, value):
    with pytest.raises(search_error(), match=rf"hydra.sweeper.{setting}={value!r} is invalid; allowed"):
        sweeper(**{setting: value})


def test_a_sweep_folder_holds_one_study_and_other_settings_are_refused(tmp_path):
    space, fixed = parsed("optimizer.lr=tag(log, interval(1e-4, 1e-1))", "model.width=16", "logger=csv")
    sweeper().check_settings(tmp_path, space, fixed)
    sweeper().check_settings(tmp_path, space, list(reversed(fixed)))  # the same settings, in another order
    with pytest.raises(search_error(), match=r"without model.width=16; with model.width=8\)"):
        sweeper().check_settings(tmp_path, space, ["model.width=8", "logger=csv"])
    with pytest.raises(search_error(), match=r"study_name: 's' there, 'other' now"):
        sweeper(study_name="other").check_settings(tmp_path, space, fixed)
    with pytest.raises(search_error(), match=r"metric: 'val/loss' there, 'val/acc' now"):
        sweeper(metric="val/acc").check_settings(tmp_path, space, fixed)
    with pytest.raises(search_error(), match=r"space: .*0.01"):
        sweeper().check_settings(tmp_path, parsed("optimizer.lr=tag(log, interval(1e-4, 1e-2))")[0], fixed)


def test_a_trials_value_is_its_metric_and_a_failed_or_non_finite_one_has_none():
    search = sweeper(metric="val/acc")
    done = {"val/loss": 0.5, "val/acc": 0.75}
    assert search.value_of(JobReturn(status=JobStatus.COMPLETED, _return_value=done)) == 0.75
    assert search.value_of(JobReturn(status=JobStatus.COMPLETED, _return_value=None)) is None  # failed inside
    assert search.value_of(JobReturn(status=JobStatus.FAILED, _return_value=RuntimeError("x"))) is None
    assert search.value_of(JobReturn(status=JobStatus.COMPLETED, _return_value={"val/acc": math.nan})) is None
    assert search.value_of(JobReturn(status=JobStatus.COMPLETED, _return_value={"val/loss": 0.5})) is None


def test_a_trials_parameters_depend_on_its_number_and_the_finished_trials_only():
    space = {"lr": FloatDistribution(1e-4, 1e-1, log=True)}

    def first_trials(n):
        study = optuna.create_study()
        for number in range(n):
            study.sampler = sweeper().sampler(number)
            trial = study.ask(fixed_distributions=space)
            study.tell(trial, trial.params["lr"])
        return [t.params["lr"] for t in study.trials]

    assert first_trials(10) == first_trials(10)  # each run of the same study draws the same trials
    assert len(set(first_trials(10))) == 10
    assert sweeper().sampler(3)._rng.rng.uniform() != sweeper().sampler(0)._rng.rng.uniform()


def test_trials_are_launched_in_runs_of_consecutive_numbers():
    trials = [(n, {}) for n in (3, 4, 6, 8, 9, 10)]
    assert [[n for n, _ in run] for run in consecutive(trials)] == [[3, 4], [6], [8, 9, 10]]


def test_best_params_prints_overrides_and_says_when_a_search_has_none(tmp_path, capsys):
    OmegaConf.save(OmegaConf.create({"best_params": {"optimizer.lr": 0.0012345678901234, "data.batch_size": "64"}}),
                   tmp_path / "best.yaml")
    assert best_overrides(tmp_path) == ["optimizer.lr=0.0012345678901234", "data.batch_size=64"]
    assert best_params_main([str(tmp_path / "none")]) == 1
    assert "has not ended with a finished trial" in capsys.readouterr().err


def search_command(fake_root: Path, sweep_dir: Path, trials: int) -> list[str]:
    return ["-m", "hparams_search=lr", *quick(fake_root), "trainer.max_epochs=2", "+callbacks.phase._target_="
            "helpers.PhaseLine", f"hydra.sweeper.n_trials={trials}", f"hydra.sweep.dir={sweep_dir}"]


def trial_rows(sweep_dir: Path) -> list[dict]:
    with open(sweep_dir / "trials.csv", newline="") as file:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(file)]


@pytest.mark.slow
def test_a_search_killed_mid_trial_continues_to_the_trials_of_one_never_stopped(tmp_path, fake_root):
    whole = train_py(search_command(fake_root, tmp_path / "whole", 3))
    assert whole.returncode == 0, whole.stderr[-3000:]

    killed_dir = tmp_path / "killed"
    env = {"PYTHONPATH": f"{ROOT / 'src'}:{ROOT / 'tests'}", "WANDB_MODE": "offline"}
    search = subprocess.Popen([sys.executable, "src/train.py", *search_command(fake_root, killed_dir, 3)], cwd=ROOT,
                              env=env | {k: v for k, v in __import__("os").environ.items() if k not in env},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = 0
    for line in search.stdout:  # trial 0 trains 2 epochs; kill in trial 1's second
        seen += line.strip() == "job phase: training epoch 2"
        if seen == 2:
            search.send_signal(signal.SIGKILL)
            break
    assert search.wait(timeout=60) == -signal.SIGKILL
    assert (killed_dir / "trial-1" / "checkpoints" / "last.ckpt").is_file()
    assert not (killed_dir / "trial-1" / "results.json").exists()  # trial 1 was still training when killed
    finished_first = (killed_dir / "trial-0" / "results.json").stat().st_mtime_ns

    again = train_py(search_command(fake_root, killed_dir, 3))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "continuing 1 trial(s) a stopped search left running: 1" in again.stdout + again.stderr
    assert "resuming" in (again.stdout + again.stderr).lower()
    assert (killed_dir / "trial-0" / "results.json").stat().st_mtime_ns == finished_first  # not trained again
    assert trial_rows(killed_dir) == trial_rows(tmp_path / "whole")  # same parameters, same values, every digit
    assert [row["state"] for row in trial_rows(killed_dir)] == ["complete"] * 3
    best = OmegaConf.load(killed_dir / "best.yaml")
    assert best == OmegaConf.load(tmp_path / "whole" / "best.yaml")
    assert best.best_value == min(float(row["val/loss"]) for row in trial_rows(killed_dir))


def test_the_search_report_sets_each_best_value_beside_the_default_runs_value_after_the_same_epochs(tmp_path):
    from rppnets.analysis.search_report import search_rows, summary_markdown

    search = tmp_path / "searches" / "rpp-k10"
    search.mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"study": "lr-rpp-w10-k10-e2-s0", "metric": "val/loss", "best_value": 0.4,
                                     "best_params": {"optimizer.lr": 0.003}, "trials_complete": 2}),
                   search / "best.yaml")
    (search / "trials.csv").write_text("trial,state,val/loss,optimizer.lr,seconds\n0,complete,0.4,0.003,1\n"
                                       "1,complete,0.9,0.05,1\n2,fail,,0.2,1\n")
    untuned = tmp_path / "untuned" / "rpp-k10-seed0"  # a committed record: metrics.csv beside results.json
    untuned.mkdir(parents=True)
    (untuned / "results.json").write_text('{"status": "finished", "run_name": "rpp-w10-k10-s0", "metrics": {}}')
    (untuned / "metrics.csv").write_text("epoch,val/loss,step\n0,0.7,10\n1,0.5,20\n2,0.45,30\n")
    (row,) = search_rows(tmp_path / "searches", tmp_path / "untuned")
    assert row == {"search": "rpp-k10", "study": "lr-rpp-w10-k10-e2-s0", "trials": 2, "best_lr": 0.003,
                   "best_value": 0.4, "worst_value": 0.9, "default_value": 0.5}  # epoch 2 is the CSV's epoch 1
    assert "| rpp-k10 | 2 | 0.003 | 0.4000 | 0.5000 | 0.800 | 0.9000 |" in summary_markdown([row])
