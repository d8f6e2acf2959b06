"""The SLURM route through a real one-node cluster (scripts/slurm-local): sweeps through sbatch, the time limit's
signal, pre-emption, scancel, requeue, DDP ranks started by srun, and `make reproduce LAUNCHER=slurm`."""

import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pytorch_lightning import Callback

from rppnets.data import SYSTEM_DIR
from slurm_cluster import scontrol_job, start_cluster, stop_cluster, wait_until
from test_ddp import probes, quick as ddp_quick
from test_launchers import MEASURED, ROOT, job_results, metric_rows, quick, sweep, train_py
from test_reproduce import NETWORKS

pytestmark = pytest.mark.slow
# One CPU and 2 GB per job: two jobs share this 2-core node at once (the launcher's defaults ask 4 cores, 8 GB).
ON_SLURM = ["hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2"]


class Brake(Callback):
    """Test helper: touches `started` at the first training step, then sleeps `seconds` after each step while the
    file `brake` exists, so that a job is still training when the scheduler's signal comes. Sleeping changes no
    number: the braked and unbraked runs train alike."""

    def __init__(self, brake: str, started: str, seconds: float = 3.0):
        self.brake, self.started, self.seconds = Path(brake), Path(started), seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.started.touch()
        if self.brake.exists():
            time.sleep(self.seconds)


def braked(folder: Path) -> list[str]:
    """Overrides adding Brake to every job of a sweep: one `started-<seed>` marker per job."""
    return ["+callbacks.brake._target_=test_slurm.Brake", f"+callbacks.brake.brake={folder / 'brake'}",
            f"+callbacks.brake.started={folder}/started-${{seed}}"]


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A one-node SLURM cluster for the session; the environment pointing sbatch, squeue and scontrol at it."""
    folder = tmp_path_factory.mktemp("slurm")
    env = start_cluster(folder)
    yield env
    stop_cluster(folder)


@pytest.fixture
def start_sweep():
    """Starts a sweep command in the background (its launcher waits on the jobs like a user's terminal); a sweep
    still running when the test ends (it failed) is killed, and the cluster's teardown cancels its jobs."""
    started = []

    def start(args: list[str], env: dict) -> subprocess.Popen:
        path = os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])
        started.append(subprocess.Popen([sys.executable, "src/train.py", "-m", *args], cwd=ROOT, text=True,
                                        env=os.environ | {"PYTHONPATH": path, "WANDB_MODE": "offline"} | env,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
        return started[-1]

    yield start
    for run in started:
        if run.poll() is None:
            run.kill()
            run.communicate()


def array_tasks(sweep_dir: Path) -> list[str]:
    """The SLURM array tasks of a sweep (`<array>_<task>`), from submitit's folders (<sweep>/.submitit/<a>_<t>/)."""
    return sorted(p.name for p in sweep_dir.glob(".submitit/*") if re.fullmatch(r"\d+_\d+", p.name))


def array_job(sweep_dir: Path) -> str:
    """The SLURM array job id of a sweep."""
    return wait_until(lambda: next((task.split("_")[0] for task in array_tasks(sweep_dir)), None), 60,
                      "the sweep's submission")


def ended(job: str, env: dict) -> dict:
    """SLURM's record of a job once it has ended: the launcher returns on the result files, while the job's
    processes may still be exiting (RUNNING, COMPLETING)."""
    return wait_until(lambda: (shown := scontrol_job(job, env)).get("JobState") not in ("RUNNING", "COMPLETING")
                      and shown, 60, f"job {job} to end")


def logs(sweep_dir: Path, task: int) -> str:
    return "\n".join(path.read_text() for path in sorted(sweep_dir.glob(f".submitit/*_{task}/*_log.*")))


def logs_of_job(sweep_dir: Path) -> str:
    """The logs of a one-job sweep (not an array: <sweep>/.submitit/<job>/), every task's."""
    return "\n".join(path.read_text()[-3000:] for path in sorted(sweep_dir.glob(".submitit/*/*_log.*")))


def release_when_requeued(job: str, env: dict) -> bool:
    """SLURM holds a requeued job for 121 s (Reason=BeginTime); make it eligible now, as an admin can, so that the
    test takes seconds. True once the job has been requeued at least once."""
    shown = scontrol_job(job, env)
    if shown.get("Reason") == "BeginTime":
        subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=os.environ | env, check=True)
    return int(shown.get("Restarts", 0)) > 0


def sweep_output(run: subprocess.Popen, jobs: list[str], env: dict, timeout: float) -> str:
    """Wait for a background sweep to end, releasing its jobs whenever one is requeued again; its output."""
    def ended() -> bool:
        for job in jobs:
            release_when_requeued(job, env)
        return run.poll() is not None

    wait_until(ended, timeout, "the sweep's end")
    return run.communicate()[0]


def test_a_sweep_through_sbatch_finishes_each_job_like_the_same_job_run_locally(slurm, tmp_path, fake_root):
    on_slurm, local = tmp_path / "slurm", tmp_path / "local"
    result = sweep([*quick(fake_root), *ON_SLURM, "seed=0,1", f"hydra.sweep.dir={on_slurm}"], env=slurm)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 finished" in result.stdout
    assert sweep([*quick(fake_root), "seed=0,1", f"hydra.sweep.dir={local}"]).returncode == 0

    # Each job ran as its own task of one SLURM array, which SLURM records as completed with exit code 0.
    array = array_job(on_slurm)
    for task in (0, 1):
        shown = ended(f"{array}_{task}", slurm)
        assert (shown["JobState"], shown["ExitCode"], shown["Restarts"]) == ("COMPLETED", "0:0", "0")
        assert f"job_id={array}_{task}," in logs(on_slurm, task)  # submitit's view of SLURM's variables
    (script,) = on_slurm.glob(".submitit/*/*_submission.sh")
    lines = script.read_text().splitlines()
    for line in ("#SBATCH --signal=USR2@120", "#SBATCH --requeue", "#SBATCH --time=60", "#SBATCH --cpus-per-task=1",
                 "#SBATCH --ntasks-per-node=1", "#SBATCH --mem=2GB", "#SBATCH --array=0-1%2"):
        assert line in lines, line
    # Without an accounting database (this cluster, many small ones) sacct fails: said once, not at every poll.
    assert result.stderr.count("job states come from squeue") <= 1 and "Bypassing sacct error" not in result.stderr

    # The same folders and the same numbers as the same two jobs run on this machine without SLURM.
    assert sorted(p.parent.name for p in on_slurm.glob("*/results.json")) == sorted(
        p.parent.name for p in local.glob("*/results.json"))
    for slurm_job, local_job in zip(job_results(on_slurm), job_results(local)):
        assert slurm_job["status"] == local_job["status"] == "finished"
        assert {k: v for k, v in slurm_job["metrics"].items() if k not in MEASURED} == {
            k: v for k, v in local_job["metrics"].items() if k not in MEASURED}
    for folder in on_slurm.glob("*/results.json"):
        assert metric_rows(folder.parent) == metric_rows(local / folder.parent.name)


@pytest.mark.long  # 2 minutes; test_hparams_search runs a search in make test, this one's sweep test runs sbatch
def test_a_search_runs_its_trials_as_slurm_jobs_and_finds_what_it_finds_locally(slurm, tmp_path, fake_root):
    search = ["hparams_search=lr", *quick(fake_root), "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=2"]
    on_slurm, local = tmp_path / "slurm", tmp_path / "local"
    result = sweep([*search, *ON_SLURM, f"hydra.sweep.dir={on_slurm}"], env=slurm)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert sweep([*search, f"hydra.sweep.dir={local}"]).returncode == 0
    assert len(list(on_slurm.glob(".submitit/*/*_submission.sh"))) == 2  # trials 0-1 as one array, then trial 2
    assert (on_slurm / "trials.csv").read_text().count("complete") == 3
    rows = [[{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(open(folder / "trials.csv"))]
            for folder in (on_slurm, local)]
    assert rows[0] == rows[1]  # the same parameters and values, each trial a SLURM job or run here
    assert sweep([*search, *ON_SLURM, f"hydra.sweep.dir={on_slurm}"], env=slurm).returncode == 0  # study complete:
    assert len(list(on_slurm.glob(".submitit/*/*_submission.sh"))) == 2                        # nothing submitted


@pytest.mark.long  # 5 minutes, braked past SLURM's signal; make test's cancelled-job test stops and resumes a job
def test_time_limit_and_preemption_each_save_requeue_and_resume_to_the_uninterrupted_result(
        slurm, start_sweep, tmp_path, fake_root):
    """Job 0 runs into its 1-minute limit (SLURM sends SIGUSR2 `signal_delay_s` before it, early by up to its 30 s
    check interval); job 1 is pre-empted by SIGTERM from `scancel --signal=TERM`. Both save a checkpoint, requeue
    themselves, resume and end with the numbers and CSV rows of the same jobs run without a stop, each with one W&B
    run id across its attempts."""
    on_slurm, reference = tmp_path / "slurm", tmp_path / "reference"
    (tmp_path / "brake").touch()
    args = [*[a for a in quick(fake_root) if a != "logger=csv"], "data.eval_batch_size=8", "trainer.max_epochs=3",
            "trainer.log_every_n_steps=1", "seed=0,1"]  # 21 steps, 3 s each while braked: past the signal
    run = start_sweep([*args, *ON_SLURM, "hydra.launcher.timeout_min=1", "hydra.launcher.signal_delay_s=10",
                       *braked(tmp_path), f"hydra.sweep.dir={on_slurm}"], slurm)
    array = array_job(on_slurm)
    wait_until(lambda: (tmp_path / "started-1").exists(), 90, "job 1's first step")
    subprocess.run(["scancel", "--signal=TERM", f"{array}_1"], env=os.environ | slurm, check=True)
    wait_until(lambda: all(release_when_requeued(f"{array}_{task}", slurm) for task in (0, 1)), 150,
               "both jobs requeued")
    (tmp_path / "brake").unlink()  # the resumed attempts run at full speed (one more requeue is released too)
    output = sweep_output(run, [f"{array}_0", f"{array}_1"], slurm, 240)
    assert run.returncode == 0, output[-3000:] + logs(on_slurm, 0)[-3000:] + logs(on_slurm, 1)[-3000:]
    assert "2 finished" in output
    assert sweep([*args, f"hydra.sweep.dir={reference}"]).returncode == 0

    for task, signal in ((0, "SIGUSR2"), (1, "SIGTERM")):
        log = logs(on_slurm, task)
        assert f"received {signal}" in log and f"SLURM job {array}_{task} requeued" in log, log[-3000:]
        assert re.search(r": resuming (in|after|before) epoch \d", log), log[-3000:]
        shown = ended(f"{array}_{task}", slurm)
        assert shown["JobState"] == "COMPLETED" and int(shown["Restarts"]) >= 1
    jobs = [sorted(p.parent for p in sweep_dir.glob("*/results.json")) for sweep_dir in (on_slurm, reference)]
    assert [len(found) for found in jobs] == [2, 2]
    for folder, same in zip(*jobs):  # job 0 with job 0 (the folder names differ by the Brake overrides)
        assert metric_rows(folder) == metric_rows(same)
        finished, uninterrupted = (json.loads((f / "results.json").read_text()) for f in (folder, same))
        assert {k: v for k, v in finished["metrics"].items() if k not in MEASURED} == {
            k: v for k, v in uninterrupted["metrics"].items() if k not in MEASURED}
        # each attempt's W&B run: the earlier ones set aside (replaced-*/) when the next resumed; one run id
        attempts = list(folder.glob("wandb/offline-run-*")) + list(folder.glob("replaced-*/wandb/offline-run-*"))
        assert len(attempts) >= 2 and len({path.name.rsplit("-", 1)[1] for path in attempts}) == 1


def test_a_cancelled_job_is_listed_unfinished_and_the_rerun_sweep_resumes_it(slurm, start_sweep, tmp_path,
                                                                             fake_root):
    """`scancel` also sends SIGTERM: the job saves its checkpoint but must not requeue itself (SLURM would requeue a
    cancelled job); the other job finishes, the sweep's end and the report list the cancelled one, and the same
    sweep command run again skips the finished job and resumes the cancelled one."""
    on_slurm = tmp_path / "slurm"
    (tmp_path / "brake").touch()
    args = [*quick(fake_root), *ON_SLURM, "trainer.max_epochs=2", "seed=0,1", *braked(tmp_path),
            f"hydra.sweep.dir={on_slurm}"]
    run = start_sweep(args, slurm)
    array = array_job(on_slurm)
    wait_until(lambda: (tmp_path / "started-0").exists(), 90, "job 0's first step")
    subprocess.run(["scancel", f"{array}_0"], env=os.environ | slurm, check=True)
    wait_until(lambda: "not requeued: it is" in logs(on_slurm, 0), 60, "job 0's stop")  # COMPLETING
    wait_until(lambda: "stopped by SIGTERM" in logs(on_slurm, 0), 30, "job 0's stop line")
    (stop,) = [line for line in logs(on_slurm, 0).splitlines() if "stopped by SIGTERM" in line]
    # the job's own command line is submitit's (python -m submitit.core._submit <folder>/%j): never printed to rerun
    assert "resume: run the sweep's command again (finished jobs are skipped)" in stop and "_submit" not in stop, stop
    (tmp_path / "brake").unlink()
    output = sweep_output(run, [], slurm, 240)
    assert run.returncode == 1, output[-3000:] + logs(on_slurm, 0)[-3000:]
    assert "1 finished, 1 unfinished" in output
    (listed,) = [line for line in output.splitlines() if "unfinished (" in line]
    assert listed.strip().startswith("0-"), output[-3000:]  # job 0's folder (<job number>-<overrides>)
    assert ended(f"{array}_0", slurm)["JobState"] == "CANCELLED"  # not brought back by the job itself
    report = subprocess.run([sys.executable, "-m", "rppnets.analysis.report", str(on_slurm)], capture_output=True,
                            text=True, cwd=ROOT, env=os.environ | {"PYTHONPATH": str(ROOT / "src")})
    assert "1 unfinished" in report.stdout and listed.split(":")[0].strip() in report.stdout, report.stdout

    again = train_py(["-m", *args], env=slurm, timeout=240)
    assert again.returncode == 0 and "2 finished" in again.stdout, again.stdout[-3000:] + again.stderr[-3000:]
    # the finished job is not submitted again: the cancelled one alone is (submitit makes one job, not an array)
    every_log = "\n".join(path.read_text() for path in sorted(on_slurm.glob(".submitit/*/*_log.*")))
    assert re.search(r": resuming (in|after|before) epoch \d", every_log), every_log[-3000:]
    assert re.search(r"#1 already finished in .*; not submitted", again.stdout + again.stderr), again.stdout[-3000:]
    assert len([line for line in (again.stdout + again.stderr).splitlines() if "already finished" in line]) == 1


def test_ddp_under_slurm_runs_one_rank_per_task_started_by_srun_like_one_process(slurm, tmp_path, fake_root):
    """trainer=ddp asks SLURM for 2 tasks (tasks_per_node = trainer.devices): srun starts both ranks, Lightning's
    SLURMEnvironment reads their ranks from SLURM, rank 0 alone writes, and the result is one process's."""
    on_slurm = tmp_path / "slurm"
    result = sweep(["trainer=ddp", *ddp_quick(fake_root), *ON_SLURM, "logger=csv", "seed=0",
                    "+callbacks.probe._target_=test_ddp.RankProbe", "+callbacks.probe.out=${paths.output_dir}/probe",
                    f"hydra.sweep.dir={on_slurm}"], env=slurm)
    (job,) = [path.parent for path in on_slurm.glob("*/.hydra")]
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:] + logs_of_job(on_slurm)
    (script,) = on_slurm.glob(".submitit/*/*_submission.sh")
    assert "#SBATCH --ntasks-per-node=2" in script.read_text().splitlines()
    (shown,) = [ended(path.name, slurm) for path in on_slurm.glob(".submitit/*") if path.name.isdigit()]
    assert (shown["JobState"], shown["NumTasks"]) == ("COMPLETED", "2")

    rank0, rank1 = probes(job / "probe")
    assert [(p["global_rank"], p["world_size"], p["rank_before_trainer"], p["SLURM_PROCID"]) for p in (rank0, rank1)
            ] == [(0, 2, 0, "0"), (1, 2, 1, "1")]
    assert rank0["LOCAL_RANK"] is None  # the ranks came from SLURM, not from Lightning's own launcher
    assert rank0["permutations"] == rank1["permutations"] and rank0["parameters"] == rank1["parameters"]
    results = json.loads((job / "results.json").read_text())
    assert results["status"] == "finished"
    rows = list(csv.DictReader((job / "csv" / "metrics.csv").open()))
    assert [row["step"] for row in rows if row["train/loss_step"]] == [str(step) for step in range(7)]

    one = train_py([*ddp_quick(fake_root), "logger=csv", f"hydra.run.dir={tmp_path / 'one'}"])
    assert one.returncode == 0, one.stderr[-3000:]
    alone = json.loads((tmp_path / "one" / "results.json").read_text())["metrics"]
    for key in ("train/loss_epoch", "val/loss", "test/loss"):
        assert results["metrics"][key] == pytest.approx(alone[key], rel=1e-5), key


@pytest.mark.long  # two minutes: make test's sweep test sends jobs through sbatch, test_reproduce runs the chain
@pytest.mark.real_data
@pytest.mark.skipif(not Path(SYSTEM_DIR).is_dir() and not (ROOT / "data/FashionMNIST/raw").is_dir(),
                    reason="needs the real Fashion-MNIST (apt-get install dataset-fashion-mnist, or make data)")
def test_make_reproduce_through_slurm_runs_the_figure_and_writes_the_report(slurm, tmp_path):
    sweep_dir = tmp_path / "sweep"
    overrides = "data.train_size=1000 data.val_size=200 hydra.launcher.cpus_per_task=1 hydra.launcher.mem_gb=2"
    done = subprocess.run(["make", "reproduce", "LAUNCHER=slurm", "EPOCHS=1", f"SWEEP={sweep_dir}",
                           f"PY={sys.executable}", f"ARGS={overrides}"], cwd=ROOT, env=os.environ | slurm,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "5 finished" in done.stdout and str(sweep_dir / "report") in done.stdout
    assert len(array_tasks(sweep_dir)) == 5  # five tasks of one SLURM array
    curves = list(csv.DictReader((sweep_dir / "report" / "curves.csv").open()))
    assert {row["network"] for row in curves} == NETWORKS and {row["epoch"] for row in curves} == {"0"}
    assert (sweep_dir / "report" / "figure.png").stat().st_size > 10_000
