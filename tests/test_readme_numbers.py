"""The numbers the experiments' READMEs state, recomputed from the committed record beside them.

Each check finds a number in the prose (the numbers after a phrase that occurs once) or a README table's cells and
compares it with the value the record's CSVs, per-job files or logs give, rounded as the prose rounds it. Editing a
record or its prose alone turns a check red. Runs that one record shares with another are checked as shared: their
per-job numbers equal to every digit. Provenance (commits, dates, how long a sweep took) is not checked here.
"""

import csv
import json
import re
import statistics
from functools import cache
from pathlib import Path

import pytest

from rppnets.analysis import frontier_report, report, width_limit
from rppnets.analysis.report_data import read_memory_csv
from rppnets.records.jobs import read_curve

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:,\d{3})*(?:\.\d+)?")
KS = (1, 2, 5, 10, 20, 50, 100, 200)


# --- reading prose and records -------------------------------------------------------------------------------------

def prose(path: str) -> str:
    """The README's text with line breaks folded into spaces, so a phrase may span lines."""
    return re.sub(r"\s+", " ", (EXPERIMENTS / path).read_text())


def stated(text: str, phrase: str, count: int = 1) -> list[str]:
    """The `count` numbers that follow the one occurrence of `phrase`."""
    assert text.count(phrase) == 1, f"{phrase!r} occurs {text.count(phrase)} times"
    found = NUMBER.findall(text[text.index(phrase) + len(phrase):])[:count]
    assert len(found) == count, (phrase, found)
    return found


def agrees(number: str, value: float) -> bool:
    """The stated number is the value rounded to the number's decimals (either way at a tie)."""
    decimals = len(number.split(".")[1]) if "." in number else 0
    return abs(float(number.replace(",", "")) - value) <= 0.5 * 10 ** -decimals + 1e-9


def check(text: str, phrase: str, *values: float) -> None:
    numbers = stated(text, phrase, len(values))
    assert all(agrees(number, value) for number, value in zip(numbers, values)), \
        f"after {phrase!r} the README says {numbers}, the record gives {[round(v, 6) for v in values]}"


def check_bound(text: str, phrase: str, value: float) -> None:
    """A stated bound ("within 0.003") holds and is tight: the value is at most the bound, by less than its last
    digit."""
    number = stated(text, phrase)[0]
    decimals = len(number.split(".")[1]) if "." in number else 0
    assert 0 <= float(number) - value < 10 ** -decimals, f"after {phrase!r} the README says {number}, the record " \
                                                          f"gives {value:.6f}"


def table(path: str, header: str) -> list[list[str]]:
    """The body of the Markdown table whose header line starts with `header`: one list of cells per row."""
    lines = (EXPERIMENTS / path).read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    body = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        body.append([cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", line)[1:-1]])
    return body


def cell_numbers(cell: str) -> list[str]:
    return NUMBER.findall(cell)


@cache
def rows(path: str) -> list[dict]:  # read once per session; no check changes them
    with open(EXPERIMENTS / path, newline="") as file:
        return list(csv.DictReader(file))


def mean(values) -> float:
    return statistics.fmean(values)


def per_seed(records: list[dict], column: str, **match) -> list[float]:
    """The column's values of the matching rows, in seed order."""
    chosen = [row for row in records if all(str(row[key]) == str(value) for key, value in match.items())]
    assert chosen, match
    return [float(row[column]) for row in sorted(chosen, key=lambda row: int(row["seed"]))]


@cache
def job_curve(folder: str) -> dict[int, tuple[float, float, float]]:
    """Epoch -> (training loss, validation loss, validation accuracy) of a committed job's metrics.csv."""
    curve = read_curve(EXPERIMENTS / folder / "metrics.csv")
    return {epoch: (v["train_loss"], v["val_loss"], v["val_acc"]) for epoch, v in curve.items()}


@cache
def figure_curve(path: str, network: str, seed: int) -> dict[int, tuple[float, float, float]]:
    return {int(row["epoch"]): (float(row["train_loss"]), float(row["val_loss"]), float(row["val_acc"]))
            for row in rows(path) if row["network"] == network and int(row["seed"]) == seed}


def frontier_jobs(path: str) -> list[frontier_report.Job]:
    """The jobs of a frontier CSV as the report read them from their folders."""
    return [frontier_report.Job(network=row["network"], k=int(row["k"]) if row["k"] else None,
                                permutation=row["permutation"] or None, seed=int(row["seed"]),
                                params_trainable=int(row["params_trainable"]), test_acc=float(row["test_acc"]),
                                final_train_loss=float(row["final_train_loss"]), folder=row["folder"])
            for row in rows(path)]


FIGURE = "fashion_mnist_plot/curves.csv"


# --- summary.md files: what the report code writes from the committed CSVs -----------------------------------------

@pytest.mark.parametrize("folder,by", [("frontier", "k"), ("frontier/signed", "k"), ("frontier30", "k"),
                                       ("controls", "permutation"), ("controls/epochs5", "permutation")])
def test_each_frontier_summary_is_what_the_report_writes_from_its_csv(folder, by):
    csv_name = "frontier.csv" if by == "k" else "controls.csv"
    jobs = frontier_jobs(f"{folder}/{csv_name}")
    expected = frontier_report.summary_markdown(frontier_report.summarize(jobs, by), by)
    assert (EXPERIMENTS / folder / "summary.md").read_text() == expected


def test_the_figure_summary_is_what_the_report_writes_from_its_csvs():
    def typed(row: dict) -> dict:
        ints = ("seeds", "jobs", "params_trainable", "index_bytes", "state_bytes", "step_peak_bytes", "data_bytes",
                "peak_memory_bytes")
        floats = ("final_train_loss", "test_acc", "test_acc_min", "test_acc_max", "epoch_s", "wall_s")
        return {**row, **{key: int(row[key]) for key in ints}, **{key: float(row[key]) for key in floats}}

    summary_rows = [typed(row) for row in rows("fashion_mnist_plot/summary.csv")]
    expected = report.summary_markdown(summary_rows, measured=read_memory_csv(EXPERIMENTS / "fashion_mnist_plot"
                                                                              / "memory.csv"))
    written = (EXPERIMENTS / "fashion_mnist_plot" / "summary.md").read_text()
    assert written.split("\n## Jobs")[0] == expected  # the jobs' list needs the sweep, not committed
    assert "15 jobs: 15 finished, 0 failed, 0 unfinished, 0 missing" in written


def test_the_width_limit_summary_is_what_the_report_writes_from_its_csv():
    points = width_limit.read_rows(EXPERIMENTS / "width_limit" / "width_limit.csv")
    assert (EXPERIMENTS / "width_limit" / "summary.md").read_text() == width_limit.summary_markdown(points)


# --- runs shared between records -----------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_shared_runs_are_the_same_runs_to_every_digit(seed):
    figure_rpp = figure_curve(FIGURE, "rpp", seed)
    assert job_curve(f"frontier30/jobs/rpp-k100-seed{seed}") == figure_rpp  # 30 epochs, three columns
    f30 = rows("frontier30/frontier.csv")
    controls = [row for row in rows("controls/controls.csv") if row["permutation"] == "stored"]
    assert per_seed(controls, "final_train_loss", seed=seed) == per_seed(f30, "final_train_loss", network="rpp",
                                                                         k=100, seed=seed)
    assert per_seed(controls, "test_acc", seed=seed) == per_seed(f30, "test_acc", network="rpp", k=100, seed=seed)
    ablation = rows("init_ablation/jobs.csv")
    signed_k100 = job_curve(f"frontier30/jobs/rpp_signed-k100-seed{seed}")
    for init in ("hidden_fan_in", "wide_fan_in"):
        for signs, reference in (("False", figure_rpp), ("True", signed_k100)):
            job = next(row for row in ablation if row["init"] == init and row["signs"] == signs
                       and int(row["seed"]) == seed)
            assert [float(job[f"train_loss_epoch{e}"]) for e in range(3)] == [reference[e][0] for e in range(3)]
    five = rows("frontier/frontier.csv") + rows("frontier/signed/frontier.csv")
    for network in ("rpp", "rpp_signed", "hashed", "dense", "lowrank"):
        for k in (10, 100):
            assert per_seed(five, "final_train_loss", network=network, k=k, seed=seed) == \
                [job_curve(f"frontier30/jobs/{network}-k{k}-seed{seed}")[4][0]]
    epochs5 = [row for row in rows("controls/epochs5/controls.csv") if row["permutation"] == "stored"]
    for column in ("final_train_loss", "test_acc"):
        assert per_seed(epochs5, column, seed=seed) == per_seed(five, column, network="rpp", k=100, seed=seed)
        assert per_seed(five, column, network="dense", k=1, seed=seed) == \
            per_seed(five, column, network="dense", k=2, seed=seed)
    assert per_seed(five, "final_train_loss", network="dense", k=1, seed=seed) == \
        [figure_curve(FIGURE, "dense_narrow", seed)[4][0]]


@pytest.mark.parametrize("path,phrases", [
    ("fashion_mnist_plot/README.md", ["`experiments/frontier30/`'s RPP k = 100 jobs",
                                      "`experiments/controls/`'s `stored` jobs", "init ablation's default"]),
    ("frontier/README.md", ["first 5 epochs of `experiments/frontier30/`'s", "`experiments/controls/epochs5/`"]),
    ("frontier30/README.md", ["the 5-epoch frontier's k = 10 and k = 100 jobs", "main figure's Permuted runs"]),
    ("controls/README.md", ["`experiments/frontier30/`'s RPP k = 100 jobs", "5-epoch frontier's RPP k = 100"]),
    ("init_ablation/README.md", ["main figure's three-seed RPP runs", "`experiments/frontier30/`'s signed"]),
])
def test_each_readme_says_which_of_its_runs_another_record_shares(path, phrases):
    text = prose(path)
    for phrase in phrases:
        assert phrase in text, phrase
    assert "not independent" in text or "not further replications" in text


# --- frontier (5 epochs) -------------------------------------------------------------------------------------------

def frontier_means() -> dict[tuple[str, int], dict[str, float]]:
    records = rows("frontier/frontier.csv") + rows("frontier/signed/frontier.csv")
    return {(network, k): {"acc": mean(per_seed(records, "test_acc", network=network, k=k)),
                           "loss": mean(per_seed(records, "final_train_loss", network=network, k=k)),
                           "params": per_seed(records, "params_trainable", network=network, k=k)[0]}
            for network in ("rpp", "dense", "hashed", "lowrank", "rpp_signed") for k in KS}


def test_frontier_prose_numbers():
    text, m = prose("frontier/README.md"), frontier_means()
    records = rows("frontier/frontier.csv") + rows("frontier/signed/frontier.csv")
    assert len(rows("frontier/frontier.csv")) == 96 and "the 96-job grid" in text
    check(text, "parameters per method and k are in `summary.md` (RPP", m["rpp", 1]["params"], 1,
          m["rpp", 200]["params"])
    lowrank_share = [m["lowrank", k]["params"] / m["rpp", k]["params"] * 100 for k in KS]
    check(text, "(so slightly fewer parameters:", min(lowrank_share), max(lowrank_share))
    # a dense MLP of width w: 784*w + w, w*w + w, 10*w + 10
    for k, width in ((1, 10), (2, 10), (100, 36), (200, 61)):
        assert m["dense", k]["params"] == 784 * width + width + width * width + width + 10 * width + 10
    check(text, "`models.matched_dense_width`: width", 10, 1, 2, 36, 100, 61, 200)
    # RPP against dense: ahead from k = 2 on in both measures, by how much
    assert all(m["rpp", k]["acc"] > m["dense", k]["acc"] and m["rpp", k]["loss"] < m["dense", k]["loss"]
               for k in KS[1:])
    assert m["rpp", 1]["acc"] < m["dense", 1]["acc"]
    acc_gap = [m["rpp", k]["acc"] - m["dense", k]["acc"] for k in KS[1:]]
    loss_gap = [m["dense", k]["loss"] - m["rpp", k]["loss"] for k in KS[1:]]
    check(text, "at every k ≥ 2** (by", min(acc_gap), max(acc_gap), min(loss_gap), max(loss_gap))
    assert acc_gap != sorted(acc_gap) and loss_gap != sorted(loss_gap)  # "not growing steadily with k"
    check(text, "at k = 100 (29,850 parameters) test accuracy", m["rpp", 100]["acc"], m["dense", 100]["acc"],
          m["rpp", 100]["loss"], m["dense", 100]["loss"])
    check(text, "the dense network is ahead: test accuracy", m["dense", 1]["acc"], m["rpp", 1]["acc"])
    # HashedNets against RPP
    hashed100 = per_seed(records, "test_acc", network="hashed", k=100)
    rpp100 = per_seed(records, "test_acc", network="rpp", k=100)
    check(text, "slightly better** at every budget here: at k = 100 test accuracy", m["hashed", 100]["acc"],
          min(hashed100), max(hashed100),
          m["rpp", 100]["acc"], min(rpp100), max(rpp100), m["hashed", 100]["loss"], m["rpp", 100]["loss"])
    gaps = {k: m["rpp", k]["loss"] - m["hashed", k]["loss"] for k in KS[2:]}
    check(text, "the training-loss gap (", min(gaps.values()), max(gaps.values()), 5, 200, gaps[200])
    assert max(gaps.values()) == gaps[200]
    for k in KS[2:]:  # the seeds' ranges do not overlap
        assert min(per_seed(records, "final_train_loss", network="rpp", k=k)) > \
            max(per_seed(records, "final_train_loss", network="hashed", k=k))
    # low-rank: accuracy best at k = 20, training loss at k = 50
    acc = {k: m["lowrank", k]["acc"] for k in KS}
    loss = {k: m["lowrank", k]["loss"] for k in KS}
    assert max(acc, key=acc.get) == 20 and min(loss, key=loss.get) == 50
    check(text, "and then gets worse** (k = 100:", acc[100], 200, acc[200])
    check(text, "the first layer's rank that fits the budget falls as the width grows (", 4, 100, 2, 200)
    for k, rank1, rank2 in ((100, 4, 5), (200, 2, 5)):  # low-rank layers at width w = 10 k, ranks r1 and r2
        w = 10 * k
        assert m["lowrank", k]["params"] == rank1 * (784 + w) + w + rank2 * 2 * w + w + 10 * w + 10
    check(text, "k = 200 included: RPP", m["rpp", 200]["acc"], m["rpp", 200]["loss"], m["hashed", 200]["acc"],
          m["hashed", 200]["loss"], m["dense", 200]["acc"], m["dense", 200]["loss"], m["lowrank", 200]["acc"],
          m["lowrank", 200]["loss"])
    check(text, "both still gain (RPP", m["rpp", 200]["acc"] - m["rpp", 100]["acc"],
          m["rpp", 200]["loss"] - m["rpp", 100]["loss"])
    assert m["hashed", 200]["acc"] > m["hashed", 100]["acc"] and m["hashed", 200]["loss"] < m["hashed", 100]["loss"]


def test_frontier_signed_table_matches_the_means():
    m = frontier_means()
    body = table("frontier/README.md", "| k | final train loss: RPP")
    assert [int(row[0]) for row in body] == list(KS)
    for row in body:
        k = int(row[0])
        cells = [cell.strip("*") for cell in row[1:]]
        expected = [m[n, k]["loss"] for n in ("rpp", "rpp_signed", "hashed")] + \
                   [m[n, k]["acc"] for n in ("rpp", "rpp_signed", "hashed")]
        assert cells == [f"{value:.4f}" for value in expected], k
        bold = [n for n, cell in zip(("rpp", "rpp_signed", "hashed"), row[1:4]) if cell.startswith("**")]
        assert bold == (["rpp_signed"] if m["rpp_signed", k]["loss"] < m["hashed", k]["loss"] else []), k


def test_frontier_signed_prose_numbers():
    text, m = prose("frontier/README.md"), frontier_means()
    records = rows("frontier/frontier.csv") + rows("frontier/signed/frontier.csv")

    def seed_differences(k):
        return [s - h for s, h in zip(per_seed(records, "final_train_loss", network="rpp_signed", k=k),
                                      per_seed(records, "final_train_loss", network="hashed", k=k))]

    on = KS[3:]  # k = 10 to 200
    signed_gap = [abs(m["rpp_signed", k]["loss"] - m["hashed", k]["loss"]) for k in on]
    check_bound(text, "signed RPP is within", max(signed_gap))
    differences = [d for k in on for d in seed_differences(k)]
    check(text, "changes sign across the seeds there (", min(differences), max(differences))
    unsigned = [m["rpp", k]["loss"] - m["hashed", k]["loss"] for k in on]
    check(text, "RPP without signs trails HashedNets by", min(unsigned), max(unsigned))
    assert all(d > 0 for d in seed_differences(5))
    check(text, "k = 5 signed RPP still trails by", m["rpp_signed", 5]["loss"] - m["hashed", 5]["loss"], 1,
          m["rpp_signed", 1]["loss"] - m["hashed", 1]["loss"], min(seed_differences(1)), max(seed_differences(1)))
    assert all(m["rpp_signed", k]["acc"] >= m["rpp", k]["acc"] for k in KS[1:])
    lead = [m["rpp_signed", k]["acc"] - m["rpp", k]["acc"] for k in on]
    check(text, "at or above unsigned RPP from k = 2 on (", min(lead), max(lead))
    check_bound(text, "and within", max(abs(m["rpp_signed", k]["acc"] - m["hashed", k]["acc"]) for k in KS))
    ablation = rows("init_ablation/jobs.csv")
    check(text, "also found signs lower the early loss (",
          mean(per_seed(ablation, "train_loss_epoch0", init="hidden_fan_in", signs=True)),
          mean(per_seed(ablation, "train_loss_epoch0", init="hidden_fan_in", signs=False)))
    assert len(rows("frontier/signed/frontier.csv")) == 24
    check(text, "31 minutes for the", 16)
    signed_log = benchmark_rows("cpu_signed_1thread_2026-12-02.log")[0]
    fused = [signed_log[m_, mode + "/cpu-fused+signs"]["signed"] for m_ in (784, 1000)
             for mode in ("stored", "shared", "generated")]
    check(text, "a signed step takes", min(fused), max(fused))
    idle = benchmark_rows("cpu_1thread_compiled_hashed_2026-11-29.log")[0]
    hashed_over_rpp = idle[784, "hashed"]["time"] / idle[784, "stored/cpu-fused"]["time"]
    check(text, "while a HashedNets step takes about", hashed_over_rpp)
    check(text, "a HashedLinear training step took", idle[784, "hashed"]["time"], idle[784, "stored/cpu-fused"]["time"],
          hashed_over_rpp)


# --- frontier30 -----------------------------------------------------------------------------------------------------

NAMES = {"RPP": "rpp", "signed RPP": "rpp_signed", "HashedNets": "hashed", "dense, same budget": "dense",
         "low-rank": "lowrank"}


def test_frontier30_table_matches_the_record_and_the_5_epoch_means():
    f30, five = rows("frontier30/frontier.csv"), frontier_means()
    body = table("frontier30/README.md", "| method | k | trainable params")
    assert len(body) == 10
    for method, k, params, acc, loss, early in body:
        network, k = NAMES[method], int(k)
        assert int(params.replace(",", "")) == per_seed(f30, "params_trainable", network=network, k=k)[0]
        assert acc.strip("*") == f"{mean(per_seed(f30, 'test_acc', network=network, k=k)):.4f}"
        assert loss.strip("*") == f"{mean(per_seed(f30, 'final_train_loss', network=network, k=k)):.4f}"
        assert early == f"{five[network, k]['acc']:.3f} / {five[network, k]['loss']:.3f}"
        for cell, column in ((acc, "test_acc"), (loss, "final_train_loss")):  # bold: the best of its k
            values = {n: mean(per_seed(f30, column, network=n, k=k)) for n in NAMES.values()}
            best = (max if column == "test_acc" else min)(values, key=values.get)
            assert cell.startswith("**") == (network == best), (method, k, column)


def test_frontier30_prose_numbers():
    text, f30, five = prose("frontier30/README.md"), rows("frontier30/frontier.csv"), frontier_means()

    def m(network, k, column="final_train_loss"):
        return mean(per_seed(f30, column, network=network, k=k))

    def differences(a, b, k, column="final_train_loss"):
        return [x - y for x, y in zip(per_seed(f30, column, network=a, k=k), per_seed(f30, column, network=b, k=k))]

    leads = [five["rpp", k]["loss"] - five[n, k]["loss"] for n in ("hashed", "rpp_signed") for k in (10, 100)]
    check(text, "led RPP in training loss by", min(leads), max(leads))
    level = [m(n, 10) for n in ("rpp", "rpp_signed", "hashed")]
    check(text, "the three are level at k = 10 (", min(level), max(level))
    for a, b in (("rpp", "hashed"), ("rpp_signed", "hashed"), ("rpp_signed", "rpp")):
        assert min(differences(a, b, 10)) < 0 < max(differences(a, b, 10))  # "changing sign across seeds"
    check(text, "at k = 100 RPP is lowest: RPP", m("rpp", 100), m("rpp_signed", 100), m("hashed", 100))
    below = [-d for d in differences("rpp", "hashed", 100)]
    assert min(below) > 0
    check(text, "RPP below HashedNets in each seed (by", min(below), max(below))
    curves = rows("frontier30/curves.csv")

    def curve(network, k, column):
        return {int(r["epoch"]): float(r[column]) for r in curves if r["network"] == network and int(r["k"]) == k}

    gap100 = {e: v - curve("hashed", 100, "train_loss")[e] for e, v in curve("rpp", 100, "train_loss").items()}
    passes = min(e for e in gap100 if all(gap100[later] < 0 for later in gap100 if later >= e))
    check(text, "In the curves RPP passes HashedNets at epoch", passes)
    gap10 = {e: v - curve("hashed", 10, "train_loss")[e] for e, v in curve("rpp", 10, "train_loss").items()}
    within = min(e for e in gap10 if all(abs(gap10[later]) <= 0.002 for later in gap10 if later >= e))
    check(text, "the gap shrinks from", gap10[10], 10, 0.002, within)
    accs = {k: [m(n, k, "test_acc") for n in ("rpp", "rpp_signed", "hashed")] for k in (10, 100)}
    check(text, "does not separate RPP, signed RPP and HashedNets**: within",
          max(max(a) - min(a) for a in accs.values()))
    check(text, "(RPP minus HashedNets:", min(differences("rpp", "hashed", 100, "test_acc")),
          max(differences("rpp", "hashed", 100, "test_acc")))
    assert min(differences("dense", "rpp", 100)) > 0.1 and max(differences("dense", "rpp", 10, "test_acc")) < 0
    d100 = differences("dense", "rpp", 100, "test_acc")
    assert min(d100) < 0 < max(d100)
    check(text, "far higher training loss (", m("dense", 100), m("rpp", 100))
    check(text, "behind in test accuracy at k = 10 (", m("dense", 10, "test_acc"), m("rpp", 10, "test_acc"))
    check(text, "level at k = 100 (", m("dense", 100, "test_acc"), m("rpp", 100, "test_acc"))
    trailing = {e: v - curve("rpp", 100, "val_acc")[e] for e, v in curve("dense", 100, "val_acc").items()}
    last_behind_run = max(e for e in trailing if all(trailing[earlier] < 0 for earlier in trailing if earlier <= e))
    after = [e for e in trailing if e > last_behind_run + 1 and trailing[e] < 0]
    check(text, "trails RPP's at every epoch up to", last_behind_run, *after)
    check(text, "is gone by epoch 30**: level at k = 10 (", m("rpp_signed", 10), m("rpp", 10))
    behind = differences("rpp_signed", "rpp", 100)
    assert min(behind) > 0
    check(text, "slightly behind at k = 100 (", m("rpp_signed", 100), m("rpp", 100), min(behind), max(behind))
    check(text, "Signs speed up the first epochs (", curve("rpp_signed", 100, "train_loss")[0],
          curve("rpp", 100, "train_loss")[0])
    check(text, "more so at k = 100 (rank 4):", m("lowrank", 100, "test_acc"))

    def walls(network):
        return [json.loads((EXPERIMENTS / f"frontier30/jobs/{network}-k100-seed{seed}/results.json").read_text())
                ["metrics"]["time/wall_s"] for seed in (1, 2)]

    check(text, "a k = 100 job took", min(walls("rpp")), max(walls("rpp")), min(walls("hashed")),
          max(walls("hashed")), 1, 2)


# --- controls -------------------------------------------------------------------------------------------------------

def test_controls_table_and_prose():
    text, controls, epochs5 = prose("controls/README.md"), rows("controls/controls.csv"), rows(
        "controls/epochs5/controls.csv")
    assert len(controls) == 9 and "9 jobs" in text
    names = {"identity": "identity", "random (randperm)": "random", "stored (Feistel)": "stored"}
    for label, acc, loss in table("controls/README.md", "| permutation | test accuracy"):
        for cell, column in ((acc, "test_acc"), (loss, "final_train_loss")):
            values = per_seed(controls, column, permutation=names[label])
            assert cell == f"{mean(values):.4f} ({min(values):.4f}–{max(values):.4f})", (label, column)

    def m(records, permutation, column):
        return mean(per_seed(records, column, permutation=permutation))

    check(text, "ends at a training loss of", m(controls, "identity", "final_train_loss"))
    check(text, "against", m(controls, "stored", "final_train_loss"),
          100 * (m(controls, "stored", "test_acc") - m(controls, "identity", "test_acc")))
    figure = {row["network"]: row for row in rows("fashion_mnist_plot/summary.csv")}
    check(text, "the dense network 10 wide of the main figure (", float(figure["dense_narrow"]["final_train_loss"]),
          float(figure["dense_narrow"]["test_acc"]))
    check(text, "end within the spread of the seeds (", m(controls, "random", "final_train_loss"),
          m(controls, "stored", "final_train_loss"), m(controls, "random", "test_acc"),
          m(controls, "stored", "test_acc"))
    check(text, "the picture was the same: identity", *[m(epochs5, p, c) for p in ("identity", "random", "stored")
                                                        for c in ("final_train_loss", "test_acc")])


# --- init ablation --------------------------------------------------------------------------------------------------

def test_init_ablation_tables_and_prose():
    text, jobs = prose("init_ablation/README.md"), rows("init_ablation/jobs.csv")
    assert len(jobs) == 24 and "24 jobs" in text
    bounds = {"hidden_fan_in": lambda m, w, k: m ** -0.5, "wide_fan_in": lambda m, w, k: m ** -0.5,
              "glorot_hidden": lambda m, w, k: (6 / (m + w)) ** 0.5,
              "glorot_wide": lambda m, w, k: (6 / (m + k * w)) ** 0.5}
    for row in table("init_ablation/README.md", "| init | weight bound"):
        init = row[0].split()[0].strip("`")
        first, second = bounds[init](784, 10, 100), bounds[init](1000, 10, 100)
        expected = [first] + ([first * 784 ** 0.5] if "x)" in row[2] else []) + \
                   [second] + ([second * 1000 ** 0.5] if "x)" in row[3] else [])
        numbers = cell_numbers(row[2]) + cell_numbers(row[3])
        assert len(numbers) == len(expected) and all(map(agrees, numbers, expected)), row

    def cell(values, digits):
        return f"{mean(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"

    body = table("init_ablation/README.md", "| network | init | train loss epoch 0")
    assert body[-1][:3] == ["the note's RPP", "?", "0.536"]
    for network, init, *cells in body[:-1]:
        init = init.split()[0]
        group = [j for j in jobs if j["network"] == network and j["init"] == init]
        assert len(group) == 3
        assert cells == [cell([float(j[f"train_loss_epoch{e}"]) for j in group], 3) for e in range(3)] + \
            [cell([float(j["test_acc"]) for j in group], 4)], (network, init)

    def m(column, init, signs=False):
        return mean(per_seed(jobs, column, init=init, signs=signs))

    def spread(column, init, signs=False):
        values = per_seed(jobs, column, init=init, signs=signs)
        return min(values), max(values)

    check(text, "ours starts at", m("train_loss_epoch0", "hidden_fan_in"),
          per_seed(jobs, "train_loss_epoch0", init="hidden_fan_in", signs=False, seed=0)[0])
    check(text, "The closest init alone, `glorot_hidden`, ends epoch 0 at", m("train_loss_epoch0", "glorot_hidden"),
          *spread("train_loss_epoch0", "glorot_hidden"), m("train_loss_epoch0", "glorot_hidden") - 0.536)
    check(text, "with signed RPP as well,", m("train_loss_epoch0", "glorot_hidden", True),
          *spread("train_loss_epoch0", "glorot_hidden", True), m("train_loss_epoch0", "glorot_hidden", True) - 0.536)
    assert spread("train_loss_epoch0", "glorot_hidden", True)[0] > 0.536
    for epoch in range(3):  # the order of epoch 0 holds at epochs 1 and 2
        column = f"train_loss_epoch{epoch}"
        for signs in (False, True):
            assert m(column, "glorot_hidden", signs) < m(column, "glorot_wide", signs) < m(column, "hidden_fan_in",
                                                                                              signs)
        assert all(m(column, init, True) < m(column, init) for init in bounds)
    signed_acc = [m("test_acc", init, True) for init in bounds]
    check(text, "test accuracy is no lower (", m("test_acc", "hidden_fan_in"), m("test_acc", "glorot_hidden"),
          m("test_acc", "glorot_wide"), min(signed_acc), max(signed_acc))
    check(text, "Signs alone (default init) take epoch 0 from", m("train_loss_epoch0", "hidden_fan_in"),
          m("train_loss_epoch0", "hidden_fan_in", True), 2, m("train_loss_epoch2", "hidden_fan_in"),
          m("train_loss_epoch2", "hidden_fan_in", True))
    check(text, "U(+-1/sqrt(10)) = U(+-", 10 ** -0.5, 10 ** -0.5 / 784 ** -0.5, 10 ** -0.5 / 1000 ** -0.5,
          10 ** -0.5 / bounds["glorot_hidden"](784, 10, 100), 10 ** -0.5 / bounds["glorot_hidden"](1000, 10, 100))


# --- fashion_mnist_plot ---------------------------------------------------------------------------------------------

def test_fashion_mnist_plot_tables_and_prose():
    text = prose("fashion_mnist_plot/README.md")
    single = {row["network"]: row for row in rows("fashion_mnist_plot/seed1-2026-11-28/summary.csv")}
    three = {row["network"]: row for row in rows("fashion_mnist_plot/summary.csv")}
    order = ["rpp", "rpp_nobias", "dense_wide", "dense_narrow", "softmax"]
    legend = table("fashion_mnist_plot/README.md", "| legend entry | network")
    assert [row[1].split(":")[0].strip("`") for row in legend] == order
    assert [int(row[2].replace(",", "")) for row in legend] == [int(three[n]["params_trainable"]) for n in order]

    def f(summary, network, column):
        return float(summary[network][column])

    params = {n: f(three, n, "params_trainable") for n in order}
    hidden = {n: params[n] - (1000 * 10 + 10) for n in ("rpp", "dense_wide")}  # less the last layer, 1000 -> 10
    check(text, "while holding ~1/", params["dense_wide"] / params["rpp"], 1, hidden["dense_wide"] / hidden["rpp"],
          hidden["rpp"], hidden["dense_wide"])
    walls = [f(single, n, "wall_s") for n in order]
    check(text, "Per-job wall times (training, validation and test): Permuted", walls[0], walls[1], 1000, walls[2],
          10, walls[3], walls[4])
    check(text, "cost a little more per epoch than the dense width-1000 network (",
          *[f(single, n, "epoch_s") for n in ("rpp", "rpp_nobias", "dense_wide")], 30)
    comparison = table("fashion_mnist_plot/README.md", "| network | final training loss | vs dense width 1000")
    for network, row in zip(order, comparison):
        loss = f(single, network, "final_train_loss")
        assert row[1] == f"{loss:.4f}" and row[4] == f"{f(single, network, 'test_acc'):.4f}", network
        if network.startswith("rpp"):
            assert row[2] == f"{loss - f(single, 'dense_wide', 'final_train_loss'):+.4f}"
            assert row[3] == f"{loss - f(single, 'dense_narrow', 'final_train_loss'):+.4f}"
    above = [f(single, n, "final_train_loss") - f(single, "dense_wide", "final_train_loss") for n in order[:2]]
    below = [f(single, "dense_narrow", "final_train_loss") - f(single, n, "final_train_loss") for n in order[:2]]
    check(text, "Both RPP curves end within 0.03 of the dense width-1000 curve (", *above)
    check(text, "against 1,796,010, and end", *below)
    first = "fashion_mnist_plot/seed1-2026-11-28/curves.csv"
    gap = [figure_curve(first, "rpp", 0)[e][0] - figure_curve(first, "dense_wide", 0)[e][0] for e in range(30)]
    assert all(figure_curve(first, n, 0)[e][0] > figure_curve(first, "dense_wide", 0)[e][0]
               for n in order[:2] for e in range(30))
    check(text, "(the gap shrinks from", gap[0], 0, gap[29], 29)
    check(text, "RPP reaches", *[f(single, n, "test_acc") for n in ("rpp", "rpp_nobias", "dense_wide")], 1000,
          f(single, "dense_narrow", "test_acc"))
    lowest = [min(range(30), key=lambda e: figure_curve(first, n, 0)[e][1]) for n in ("dense_wide", "rpp",
                                                                                      "rpp_nobias")]
    check(text, "validation loss is lowest at epoch", lowest[0], 1000, *lowest[1:])
    check(text, "Stored permutations take", f(three, "rpp", "index_bytes") / 1e6)
    # three seeds
    body = table("fashion_mnist_plot/README.md", "| network | seeds | final training loss (mean)")
    for network, row in zip(order, body):
        assert row[1:] == [three[network]["seeds"], f"{f(three, network, 'final_train_loss'):.4f}",
                           f"{f(three, network, 'test_acc'):.4f} ({f(three, network, 'test_acc_min'):.4f}–"
                           f"{f(three, network, 'test_acc_max'):.4f})",
                           f"{f(three, network, 'state_bytes') / 1e6:.2f}",
                           f"{f(three, network, 'step_peak_bytes') / 1e6:.2f}"], network
    assert sum(int(three[n]["jobs"]) for n in order) == 15 and "all 15 jobs finished" in text
    dense = f(three, "dense_wide", "final_train_loss")
    narrow = f(three, "dense_narrow", "final_train_loss")
    rpp, nobias = f(three, "rpp", "final_train_loss"), f(three, "rpp_nobias", "final_train_loss")
    check(text, "RPP ends", rpp - dense, 1000, nobias - dense, 0.03, narrow - rpp, 10, narrow - nobias)
    finals = {n: [figure_curve(FIGURE, n, seed)[29][0] for seed in range(3)] for n in order}
    spreads = [v for n in order[:4] for v in (min(finals[n]), max(finals[n]))]
    check(text, "the final losses spread", *spreads[:6], 1000, *spreads[6:], 10)
    bands = {e: min(figure_curve(FIGURE, "rpp", s)[e][0] for s in range(3))
             - max(figure_curve(FIGURE, "dense_wide", s)[e][0] for s in range(3)) for e in range(30)}
    assert [e for e, v in bands.items() if v <= 0] == [26]
    check(text, "stays above dense-1000's at every epoch but", 26, -bands[26])
    check(text, "is the more modest measure:", *[f(three, n, "test_acc") for n in ("rpp", "rpp_nobias",
                                                                                  "dense_wide")])
    memory = {(row["network"], row["permutation"]): row for row in rows("fashion_mnist_plot/memory.csv")}

    def mb(network, permutation, column):
        return int(memory[network, permutation][column]) / 1e6

    check(text, "RPP's training state is", mb("rpp", "stored", "state_bytes"), mb("dense_wide", "", "state_bytes"),
          1000, mb("rpp", "stored", "index"), mb("rpp", "generated", "state_bytes"))
    assert memory["rpp", "generated"]["loss"] == memory["rpp", "stored"]["loss"]
    check(text, "A training step's peak above its start is", mb("rpp", "stored", "step_peak_bytes"),
          mb("rpp", "generated", "step_peak_bytes"), mb("dense_wide", "", "step_peak_bytes"))
    peaks = [f(three, n, "peak_memory_bytes") / 1e9 for n in order]
    check(text, "The process's peak RSS (", min(peaks), max(peaks), f(three, "rpp", "data_bytes") / 1e6)
    seed0 = [figure_curve(FIGURE, n, 0)[29][0] for n in ("rpp", "dense_wide")]
    check(text, "seed 0 here (one thread per job) ends at", *seed0, 1000, f(single, "rpp", "final_train_loss"),
          f(single, "dense_wide", "final_train_loss"))


# --- width_limit ----------------------------------------------------------------------------------------------------

GIB, MIB = 2 ** 30, 2 ** 20


def width_points() -> dict[tuple[str, int], dict]:
    return {(row["method"], int(row["width"])): row for row in rows("width_limit/width_limit.csv")}


def test_width_limit_table_matches_the_generated_summary():
    readme = table("width_limit/README.md", "| method | widest that trains")
    summary = table("width_limit/summary.md", "| method | widest that trains")
    assert [row[0] for row in readme] == [row[0] for row in summary]
    for mine, written in zip(readme, summary):
        assert mine[1:7] == written[1:7], mine[0]
        assert agrees(mine[7], float(written[7])), mine[0]
        ours, theirs = cell_numbers(mine[8]), cell_numbers(written[8])
        if "refused" in mine[8]:
            assert ours == theirs, mine[0]
        else:  # the README leaves out the budget (30 s) and the estimate of the next width
            assert ours == theirs[:2] + theirs[4:], mine[0]


def test_width_limit_prose_numbers():
    text, points = prose("width_limit/README.md"), width_points()
    measured = [row for row in points.values() if row["status"] != "refused"]
    assert len(points) == 50 and len(measured) == 49

    def g(method, width, column, unit=GIB):
        return int(points[method, width][column]) / unit

    dense = points["dense", 1000]
    assert abs(int(dense["state_bytes"]) - 16 * int(dense["params_trainable"])) < 100  # and Adam's step counts
    check(text, "dense itself:", float(points["dense", 22630]["step_s"]), 22630)
    ranks = [max(1, 7840 // (784 + w)) for (method, w) in points if method == "lowrank"]
    for (method, w), row in points.items():  # low-rank: ranks r1 = 7840 // (784 + w) (at least 1) and 5
        if method == "lowrank":
            assert int(row["params_trainable"]) == max(1, 7840 // (784 + w)) * (784 + w) + 22 * w + 10
    check(text, "and at 5.8 million for low-rank (rank", min(ranks), max(ranks), 5)
    check(text, "int16 up to 32,768 rows) is", g("rpp_stored", 16000, "index"), 16000)
    check(text, "so the construction peak is", g("rpp_stored", 16000, "build_peak_bytes") / g("rpp_stored", 16000,
                                                                                              "index"), 16000,
          g("rpp_stored", 22630, "build_peak_bytes") / g("rpp_stored", 22630, "index"), 22630,
          g("rpp_stored", 22630, "index"), g("rpp_stored", 22630, "build_peak_bytes"))
    check(text, "Generated keeps no index:", g("rpp_generated", 22630, "measured_bytes", MIB), 22630)
    check(text, "at 32,000 stored needs", g("rpp_stored", 32000, "measured_bytes"),
          g("rpp_generated", 32000, "measured_bytes"))
    check(text, "16 bytes per virtual entry at the peak,", g("hashed", 16000, "measured_bytes"), 16000,
          g("hashed", 32000, "measured_bytes"), 32000, g("hashed", 32000, "available_bytes"),
          float(points["hashed", 32000]["step_s"]))
    check(text, "the same work took", float(points["rpp_stored", 16000]["step_s"]),
          float(points["rpp_shared", 16000]["step_s"]), 16000, float(points["rpp_stored", 16000]["step_cpu_s"]),
          float(points["rpp_shared", 16000]["step_cpu_s"]))
    ratios = [int(row["estimate_bytes"]) / int(row["measured_bytes"]) for row in measured]
    check(text, "estimate / measured =", min(ratios), max(ratios), len(measured))
    above = [(int(row["max_rss_bytes"]) - int(row["measured_bytes"])) / GIB for row in measured]
    check(text, "the peak resident memory of each point's process was", min(above), max(above))
    check(text, "(torch's libraries are", max(int(row["rss_before_bytes"]) / GIB for row in measured))
    loads = [float(row["loadavg"]) for row in points.values()]
    available = [int(row["available_bytes"]) / GIB for row in points.values()]
    check(text, "kept the load average at", min(loads), max(loads), 2, min(available), max(available))
    cpu = [float(row["step_cpu_s"]) / float(row["step_s"]) for row in measured]
    check(text, "the CPU time per step was", min(cpu), max(cpu))
    check(text, "one at", float(points["dense", 22630]["step_s"]))
    check(text, "22:04 UTC),", len(points))
    biggest = max(measured, key=lambda row: int(row["max_rss_bytes"]))
    check(text, "the largest point's process peaked at", int(biggest["max_rss_bytes"]) / GIB,
          int(biggest["width"]))
    assert biggest["method"] == "lowrank"


# --- rpp_layer_benchmark --------------------------------------------------------------------------------------------

ROW = re.compile(r"^\s*(\d+)\s+\d+\s+\d+\s+(\S+)\s*\|(.*)$")
COLUMNS = {  # a table's header, by its words after the first "|" -> the names of its numbers, cell by cell
    "dense ms": [("dense_ms", "ms", "time", "signed"), ("compiled_dense_ms", "compiled_ms", "compiled",
                                                        "compiled_signed")],
    "peak": [("peak", "sum", "persist", "saved"), ("peak_mb", "sum_mb"), ("dense_mb", "mb", "saved_kb")],
    "dense ms  rpp ms": [("dense_ms", "ms", "time"), ("persist", "saved"), ("dense_mb", "mb", "saved_kb")],
}


def benchmark_rows(log: str) -> list[dict[tuple[int, str], dict[str, float]]]:
    """Per run of benchmarks/rpp_layer.py in a log: (m, layer) -> its numbers (time, signed, compiled, peak, ...)."""
    runs: list[dict] = []
    names: list[tuple[str, ...]] = []
    for line in (EXPERIMENTS / "rpp_layer_benchmark" / log).read_text().splitlines():
        if line.startswith("device="):
            runs.append({})
        if line.lstrip().startswith("m ") and "|" in line:  # a table's header
            first = line.split("|")[1].split()
            names = COLUMNS["dense ms  rpp ms" if "rpp" in first else "peak" if first[0] == "peak" else "dense ms"]
            continue
        match = ROW.match(line)
        if match:
            fields = runs[-1].setdefault((int(match[1]), match[2]), {})
            for cell_names, cell in zip(names, match[3].split("|")):
                fields.update(zip(cell_names, map(float, cell.split())))
    return runs


def test_benchmark_signed_table_and_prose():
    text, run = prose("rpp_layer_benchmark/README.md"), benchmark_rows("cpu_signed_1thread_2026-12-02.log")[0]
    body = table("rpp_layer_benchmark/README.md", "| m, n, k | mode | cpu-fused (default)")
    assert len(body) == 10
    for shape, mode, fused, compiled, materialising in body:
        m = int(shape.split(",")[0])
        assert [fused, compiled, materialising] == [
            f"{run[m, f'{mode}/cpu-fused+signs']['signed']:.2f}",
            f"{run[m, f'{mode}/cpu-fused+signs']['compiled_signed']:.2f}",
            f"{run[m, f'{mode}/cpu+signs']['signed']:.2f}"], (m, mode)
    dense = [run[m, "stored/cpu-fused"]["dense_ms"] for m in (784, 1000)]
    idle = benchmark_rows("cpu_1thread_compiled_hashed_2026-11-29.log")[0]
    check(text, "so loaded that the dense step took", min(dense), max(dense), idle[784, "stored/cpu-fused"]["dense_ms"])
    modes = ("stored", "shared", "generated", "random")
    fused = [run[m, f"{mode}/cpu-fused+signs"]["signed"] for m in (784, 1000) for mode in modes]
    compiled = fused + [run[m, f"{mode}/cpu-fused+signs"]["compiled_signed"] for m in (784, 1000) for mode in modes]
    materialising = [run[m, f"{mode}/cpu+signs"]["signed"] for m in (784, 1000) for mode in modes]
    check(text, "On the default fused step the signs take", min(fused), max(fused), min(compiled), max(compiled),
          100 * (min(materialising) - 1), 100 * (max(materialising) - 1))
    check(text, "the signed rows are those of their twins (stored fused", run[784, "stored/cpu-fused+signs"]["time"],
          run[784, "stored/cpu-fused"]["time"], 784, run[784, "generated/cpu-fused+signs"]["time"],
          run[784, "generated/cpu-fused"]["time"])
    for m in (784, 1000):
        for mode in ("stored", "shared", "generated", "random"):
            for backend in ("cpu-fused", "cpu"):
                signed, twin = run[m, f"{mode}/{backend}+signs"], run[m, f"{mode}/{backend}"]
                assert (signed["peak"], signed["saved"]) == (twin["peak"], twin["saved"]), (m, mode, backend)
    check(text, "a `sum` peak of", run[784, "identity/cpu-fused+signs"]["sum_mb"],
          run[784, "identity/cpu+signs"]["sum_mb"], 784)
    identity = [run[m, f"identity/{b}+signs"][c] for m in (784, 1000) for b in ("cpu-fused", "cpu")
                for c in ("time", "compiled") if c in run[m, f"identity/{b}+signs"]]
    check(text, "m = 784), at", min(identity), max(identity))


def test_benchmark_fused_tables_and_prose():
    text = prose("rpp_layer_benchmark/README.md")
    run_a, run_b, one = benchmark_rows("cpu_fused_2026-11-29.log")
    body = table("rpp_layer_benchmark/README.md", "| m, n, k | mode | cpu-fused, 2 threads")
    assert len(body) == 10
    for shape, mode, fused2, cpu2, compiled2, fused1, cpu1 in body:
        m = int(shape.split(",")[0])
        for cell, layer, column in ((fused2, "cpu-fused", "time"), (cpu2, "cpu", "time"),
                                    (compiled2, "cpu-fused", "compiled")):  # the two runs' ratios, low to high
            pair = sorted(run[m, f"{mode}/{layer}"][column] for run in (run_a, run_b))
            assert cell == f"{pair[0]:.2f}, {pair[1]:.2f}", (m, mode, layer, column)
        assert [fused1, cpu1] == [f"{one[m, f'{mode}/{b}']['time']:.2f}" for b in ("cpu-fused", "cpu")], (m, mode)
    runs = (run_a, run_b, one)

    def cell(m, layers, backend, column):
        ratios = {run[m, f"{layer}/{backend}"][column] for run in runs for layer in layers}
        mbs = {run[m, f"{layer}/{backend}"][f"{column}_mb"] for run in runs for layer in layers}
        ratio = f"{min(ratios):.2f}" if len(ratios) == 1 else f"{min(ratios):.2f} to {max(ratios):.2f}"
        mb = f"{min(mbs):.2f} MB" if len(mbs) == 1 else f"{min(mbs):.2f} to {max(mbs):.2f} MB"
        return f"{ratio} ({mb})"

    body = table("rpp_layer_benchmark/README.md", "| m, n, k | mode | cpu-fused, square-mean loss")
    assert len(body) == 5
    for shape, modes, *cells in body:
        m, layers = int(shape.split(",")[0]), modes.split(", ")
        assert cells == [cell(m, layers, b, c) for c in ("peak", "sum") for b in ("cpu-fused", "cpu")], (m, modes)
    log = (EXPERIMENTS / "rpp_layer_benchmark" / "cpu_fused_2026-11-29.log").read_text()
    peaks = sorted(set(re.findall(r"dense step peak ([\d.]+) MB, with the sum loss \1 MB", log)), key=float)
    check(text, "Step peak above the step's start (dense:", float(peaks[0]), 784, float(peaks[1]), 1000)
    assert len(peaks) == 2  # the same with either loss
    check(text, "It takes the step's peak from", one[784, "stored/cpu"]["peak_mb"],
          one[784, "generated/cpu"]["peak_mb"], one[784, "stored/cpu-fused"]["peak_mb"])
    longer = [one[m, "stored/cpu-fused"]["time"] / one[m, "stored/cpu"]["time"] - 1 for m in (784, 1000)]
    assert one[784, "stored/cpu"]["time"] == one[1000, "stored/cpu"]["time"]
    check(text, "for about the same time: at 1 thread", 100 * min(longer), 100 * max(longer),
          one[784, "stored/cpu-fused"]["time"], one[1000, "stored/cpu-fused"]["time"], one[784, "stored/cpu"]["time"])
    fused_layers = [f"{mode}/cpu-fused" for mode in ("stored", "shared", "generated", "random")]
    sums = [run[m, layer]["sum"] for run in runs for m in (784, 1000) for layer in fused_layers]
    check(text, "met with the sum loss (", min(sums), max(sums), run_a[784, "stored/cpu-fused"]["peak"], 784,
          run_a[1000, "stored/cpu-fused"]["peak"], 1000)
    two = (run_a, run_b)
    assert max(run[m, f"{mode}/cpu-fused"]["time"] for run in two for m in (784, 1000)
               for mode in ("stored", "shared")) <= 1.35
    assert max(run[m, "generated/cpu-fused"]["time"] for run in two for m in (784, 1000)) <= 2.0
    check(text, "At 1 thread the 784-wide generated step is at", one[784, "generated/cpu-fused"]["time"])
    assert agrees("2.1", one[784, "generated/cpu"]["time"])
    dense1 = [one[m, "stored/cpu-fused"]["dense_ms"] for m in (784, 1000)]
    dense2 = [run[m, "stored/cpu-fused"]["dense_ms"] for run in two for m in (784, 1000)]
    before = [run[m, "stored"]["dense_ms"] for run in benchmark_rows("cpu_3runs.log") for m in (784, 1000)]
    check(text, "training runs: the dense step took", min(dense1), max(dense1), 1, min(dense2), max(dense2), 2,
          min(before), max(before))


def test_benchmark_idle_table_and_prose():
    text, run = prose("rpp_layer_benchmark/README.md"), benchmark_rows("cpu_1thread_compiled_hashed_2026-11-29.log")[0]
    layers = {"stored, cpu-fused": "stored/cpu-fused", "shared, cpu-fused": "shared/cpu-fused",
              "generated, cpu-fused": "generated/cpu-fused", "random, cpu-fused": "random/cpu-fused",
              "identity (control)": "identity/cpu-fused", "HashedLinear, same budget": "hashed",
              "LowRankLinear, same budget": "lowrank"}
    body = table("rpp_layer_benchmark/README.md", "| layer | eager | compiled | step peak / dense")
    assert [row[0] for row in body] == list(layers)
    for name, eager, compiled, peak in body:
        fields = run[784, layers[name]]
        assert [eager, compiled] == [f"{fields['time']:.2f}", f"{fields['compiled']:.2f}"], name
        assert cell_numbers(peak)[0] == f"{fields['peak']:.2f}", name
        if "MB" in peak:
            assert cell_numbers(peak)[1] == f"{fields['peak_mb']:.2f}", name
    fused = benchmark_rows("cpu_fused_2026-11-29.log")
    two = [r[784, "generated/cpu-fused"]["time"] for r in fused[:2]]
    check(text, "`generated` takes", run[784, "generated/cpu-fused"]["time"], fused[2][784, "generated/cpu-fused"]
          ["time"], 2.0, min(two), max(two), 1000, fused[2][1000, "generated/cpu-fused"]["time"])
    check(text, "test_hashed_linear.py`). It takes", run[784, "hashed"]["compiled"], run[784, "hashed"]["time"])
    assert run[784, "hashed"]["peak"] > 1


def test_benchmark_before_the_fused_step():
    text = prose("rpp_layer_benchmark/README.md")
    cpu = benchmark_rows("cpu_3runs.log")
    gpu = benchmark_rows("gpu_checks_h200.log")[0]
    body = table("rpp_layer_benchmark/README.md", "| m, n, k | mode | CPU step time (3 runs)")
    gpu_times = re.findall(r"stored (\d+) / (\d+) us \(([\d.]+)x\), shared \d+ / \d+ us \(([\d.]+)x\), "
                           r"generated \d+ / \d+ us \(([\d.]+)x\)",
                           (EXPERIMENTS / "rpp_layer_benchmark" / "gpu_checks_h200.log").read_text())
    gpu_ratio = {(m, mode): times[2 + i] for m, times in zip((784, 1000), gpu_times)
                 for i, mode in enumerate(("stored", "shared", "generated"))}
    assert len(body) == 6
    for shape, mode, cpu_time, h200, h200_gpu, persist, saved in body:
        m = int(shape.split(",")[0])
        times = [run[m, mode]["time"] for run in cpu]
        assert cpu_time == f"{min(times):.2f} to {max(times):.2f}", (m, mode)
        assert [h200, h200_gpu] == [f"{gpu[m, mode]['time']:.2f}", gpu_ratio[m, mode]], (m, mode)
        assert [persist, saved] == [f"{gpu[m, mode]['persist']:.3f}", f"{gpu[m, mode]['saved']:.2f}"], (m, mode)
    h200_times = [gpu[m, mode]["time"] for m in (784, 1000) for mode in ("stored", "shared", "generated")]
    check(text, "GPU step time at most 1.2: **not met** (", min(h200_times), max(h200_times))
    dense_ms = [gpu[m, "stored"]["dense_ms"] for m in (784, 1000)]
    dense_gpu = [int(x) / 1000 for x in re.findall(r"dense \d+ / (\d+) us",
                                                   (EXPERIMENTS / "rpp_layer_benchmark" / "gpu_checks_h200.log")
                                                   .read_text())]
    check(text, "the dense step takes", min(dense_ms), max(dense_ms), min(dense_gpu), max(dense_gpu))
    kernels = [int(x) for x in re.findall(r"dense (\d+) /", (EXPERIMENTS / "rpp_layer_benchmark" /
                                                            "gpu_checks_h200.log").read_text())]
    check(text, "RPP launches", int(gpu_times[0][0]), min(kernels), max(kernels), 0.73, 1.39)
    dense_cpu = [run[m, "stored"]["dense_ms"] for run in cpu for m in (784, 1000)]
    check(text, "(the dense step took", min(dense_cpu), max(dense_cpu))
