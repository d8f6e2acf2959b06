"""The memory estimate that refuses runs against memory measured: live at small widths and over the committed grid."""

import csv
from pathlib import Path

import pytest
import torch

from rppnets.analysis import width_limit
from rppnets.analysis.width_limit import METHODS, measure_point, measured_bytes, model_config
from rppnets import resources
from rppnets.resources import estimate_training_bytes, index_build_bytes

RECORD = Path(__file__).resolve().parents[1] / "experiments" / "width_limit" / width_limit.CSV_NAME
LIMIT = 1.5  # the estimate must stay within this factor of what is measured, either way
# and models the record more closely than that (0.998 to 1.029 when it was made): a term left out, such as Adam's
# update temporaries (2/3 to 3/4 of dense's peak), shows here long before it reaches LIMIT
RECORD_BAND = (0.95, 1.25)


def ratio(row: dict) -> float:
    """The estimate of the row's config, with the row's thread count, over the row's measured peak."""
    threads = torch.get_num_threads()
    torch.set_num_threads(int(row["threads"]))
    try:
        estimate = estimate_training_bytes(model_config(row["method"], int(row["width"])), int(row["batch_size"]))
    finally:
        torch.set_num_threads(threads)
    return estimate / measured_bytes(row)


# 1,030 = 103 * 10: a stored index over m = 1,030 rows walks cycles in a domain of 2,048 (the costliest build)
LIVE_POINTS = [(method, 1000) for method in METHODS] + [("rpp_stored", 1030), ("rpp_shared", 2000)]


@pytest.mark.parametrize("method, width", LIVE_POINTS)
def test_estimate_is_within_its_limit_of_a_live_measurement(method, width):
    row = measure_point(method, width, batch_size=64, measured_steps=2)
    assert row["status"] == "ok" and row["step_peak_bytes"] > 0
    row.update(method=method, width=width, batch_size=64)
    assert 1 / LIMIT <= ratio(row) <= LIMIT, (method, width, ratio(row))


def record_rows() -> list[dict]:
    with open(RECORD, newline="") as file:
        return list(csv.DictReader(file))


def test_record_covers_every_method_with_a_measured_widest_and_a_stop():
    rows = record_rows()
    assert {row["method"] for row in rows} == set(METHODS)
    for method, found in width_limit.limits(rows).items():
        assert found["widest"] is not None and measured_bytes(found["widest"]), method
        assert found["stop"] is not None and found["stop"]["status"] in ("refused", "over_time"), method
        assert int(found["stop"]["width"]) > int(found["widest"]["width"]), method


def test_estimate_is_within_its_limit_of_every_point_of_the_record():
    measured = [row for row in record_rows() if measured_bytes(row)]
    assert len(measured) >= 3 * len(METHODS)
    off = {(row["method"], row["width"]): round(ratio(row), 3) for row in measured
           if not 1 / LIMIT <= ratio(row) <= LIMIT}
    assert not off, off


def test_estimate_models_every_point_of_the_record_closely():
    off = {(row["method"], row["width"]): round(ratio(row), 3) for row in record_rows()
           if measured_bytes(row) and not RECORD_BAND[0] <= ratio(row) <= RECORD_BAND[1]}
    assert not off, off


def test_every_refusal_of_the_record_is_still_a_refusal():
    # the record's stops by memory stand only while the estimate still exceeds the memory that was available
    refused = [row for row in record_rows() if row["status"] == "refused"]
    assert refused
    for row in refused:
        threads = torch.get_num_threads()
        torch.set_num_threads(int(row["threads"] or threads))
        try:
            estimate = estimate_training_bytes(model_config(row["method"], int(row["width"])),
                                               int(row["batch_size"]))
        finally:
            torch.set_num_threads(threads)
        assert estimate > int(row["available_bytes"]), (row["method"], row["width"])


@pytest.mark.parametrize("m", [784, 1000, 1030, 1500, 2049, 3000])
def test_index_build_estimate_matches_the_measured_build(m):
    from rppnets.meters import StepPeakMeter
    from rppnets.layers.permutation import build_index

    meter = StepPeakMeter("cpu")
    meter.open()
    meter.begin_step()
    build_index(m, 10, 20, seed=0, layer=1)
    meter.end_step()
    peak = meter.close()
    assert 0.95 <= index_build_bytes(m, 200) / peak <= 1.1, (m, peak)


def test_widths_and_configs_of_the_grid():
    assert width_limit.default_widths()[:4] == [1000, 2000, 4000, 8000]
    assert model_config("dense", 4000) == {"kind": "dense", "depth": 2, "bias": "full", "width": 4000}
    assert model_config("rpp_generated", 4000) == {"kind": "rpp", "depth": 2, "bias": "full", "width": 10, "k": 400,
                                                   "seed": 0, "permutation": "generated"}
    with pytest.raises(ValueError, match="a multiple of 10"):
        model_config("hashed", 1005)
    assert width_limit.midpoint(16000, 32000) == 22630
    assert width_limit.midpoint(10, 20) is None


def test_grid_stops_at_a_refusal_and_a_rerun_measures_nothing_again(tmp_path, monkeypatch):
    # 60 MB available: dense 1,000 (about 37 MB) trains, 2,000 (about 120 MB) is refused by the pipeline's own check,
    # and the midpoint 1,410 (about 70 MB) too
    monkeypatch.setattr(resources, "available_memory_bytes", lambda: 60_000_000)
    rows = width_limit.run_grid(tmp_path, ["dense"], [1000, 2000, 4000], batch_size=32, budget_s=30, steps=1)
    assert [(row["width"], row["status"]) for row in rows] == [("1000", "ok"), ("2000", "refused"),
                                                               ("1410", "refused")]
    assert "needs about" in rows[1]["note"] and int(rows[1]["estimate_bytes"]) > 60_000_000
    assert int(rows[0]["state_bytes"]) > 0 and float(rows[0]["step_s"]) > 0

    def not_again(*args, **kwargs):
        raise AssertionError("a point already in the CSV was measured again")

    monkeypatch.setattr(width_limit, "run_point", not_again)
    monkeypatch.setattr(width_limit, "memory_check", not_again)
    assert width_limit.run_grid(tmp_path, ["dense"], [1000, 2000, 4000], batch_size=32) == rows
    width_limit.write_outputs(tmp_path, rows, 30.0)
    assert (tmp_path / "width_limit.png").stat().st_size > 0
    assert "| dense | 1,000 |" in (tmp_path / "summary.md").read_text()


# --- the grid's summary: what each method reached and what stopped it (no measuring) --------------------------------


def grid_row(method, width, status, **values):
    row = {"method": method, "width": str(width), "status": status}
    return row | {key: str(value) for key, value in values.items()}


SUMMARY_ROWS = [
    grid_row("dense", 2000, "refused", estimate_bytes=3 * 2**30, available_bytes=2**31),
    grid_row("dense", 1000, "ok", state_bytes=2**20, step_peak_bytes=3 * 2**20, build_peak_bytes=2**19,
             measured_bytes=4 * 2**20, estimate_bytes=5 * 2**20, estimate_ratio="1.250", step_s=0.125,
             step_cpu_s=0.25, loadavg="1.50", available_bytes=2**31),
    grid_row("dense", 1410, "ok", state_bytes=2 * 2**20, step_peak_bytes=2**20, build_peak_bytes="",
             measured_bytes=3 * 2**20, estimate_bytes=2**30, step_s=0.5, available_bytes=2**31),
    grid_row("hashed", 1000, "over_time", step_s=45.25, time_budget_s=30.0, estimate_bytes=2**20,
             measured_bytes=2 * 2**20, available_bytes=2**30),
    grid_row("hashed", 2000, "failed", note="killed", estimate_bytes=2**20),
    grid_row("lowrank", 1000, "failed", note="exit status -9", estimate_bytes=2**20),
    grid_row("rpp_stored", 1000, "skipped", estimate_bytes=2**20),
]


def test_limits_are_the_widest_point_that_trained_and_the_narrowest_that_stopped():
    found = width_limit.limits(SUMMARY_ROWS)
    assert list(found) == ["dense", "rpp_stored", "hashed", "lowrank"]  # in METHODS' order; methods without rows out
    assert found["dense"]["widest"]["width"] == "1410" and found["dense"]["stop"]["width"] == "2000"
    assert found["hashed"] == {"widest": None, "stop": SUMMARY_ROWS[3]}
    assert found["rpp_stored"] == {"widest": None, "stop": None}


def test_what_stops_the_next_width_is_said_with_its_numbers():
    assert width_limit.stop_reason(None) == "none within the grid"
    assert width_limit.stop_reason(SUMMARY_ROWS[0]) == ("2,000: refused by the memory check, estimate 3.00 GiB > "
                                                         "2.00 GiB available")
    assert width_limit.stop_reason(SUMMARY_ROWS[3]) == ("1,000: 45.2 s per step, over the 30 s budget (memory: "
                                                         "estimate 1.0 MiB, measured 2.0 MiB, 1.00 GiB available)")
    assert width_limit.stop_reason(SUMMARY_ROWS[4]) == "2,000: failed (killed)"


def test_bytes_are_shown_in_mib_below_a_gib_and_in_gib_from_there():
    assert [width_limit._fmt_bytes(v) for v in (None, "", 0, "1048576", 2**30 - 1, 2**30, 5 * 2**30 // 2)] == [
        "", "", "0.0 MiB", "1.0 MiB", "1024.0 MiB", "1.00 GiB", "2.50 GiB"]


def test_the_summary_table_has_a_line_per_method_and_one_per_point():
    lines = width_limit.summary_markdown(SUMMARY_ROWS).splitlines()
    assert lines[:2] == ["| method | widest that trains | state | step peak | construction peak | measured peak | "
                         "estimate | s/step | what stops the next width |",
                         "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    assert lines[2] == ("| dense | 1,410 | 2.0 MiB | 1.0 MiB |  | 3.0 MiB | 1.00 GiB | 0.50 | 2,000: refused by the "
                        "memory check, estimate 3.00 GiB > 2.00 GiB available |")
    assert lines[3] == "| rpp_stored | none | | | | | | | none within the grid |"
    assert lines[4].startswith("| hashed | none | | | | | | | 1,000: 45.2 s per step")
    assert lines[5] == "| lowrank | none | | | | | | | 1,000: failed (exit status -9) |"
    assert lines[6:10] == ["", "Every point (state and peak in MiB, measured = max(construction peak, state + step "
                           "peak)):", "", "| method | width | status | state | step peak | construction peak | "
                           "measured | estimate | estimate / measured | s/step | CPU s/step | load | available |"]
    assert lines[10] == "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    points = lines[11:]
    assert [line.split(" | ")[:3] for line in points] == [
        ["| dense", "1,000", "ok"], ["| dense", "1,410", "ok"], ["| dense", "2,000", "refused"],
        ["| rpp_stored", "1,000", "skipped"], ["| hashed", "1,000", "over_time"], ["| hashed", "2,000", "failed"],
        ["| lowrank", "1,000", "failed"]]
    assert points[0] == ("| dense | 1,000 | ok | 1.0 | 3.0 | 0.5 | 4.0 | 5.0 | 1.250 | 0.125 | 0.250 | 1.50 | "
                         "2,048.0 |")
    assert points[1].endswith("| 3.0 | 1,024.0 |  | 0.500 |  |  | 2,048.0 |")
    assert points[3] == "| rpp_stored | 1,000 | skipped |  |  |  |  | 1.0 |  |  |  |  |  |"
    assert width_limit.summary_markdown(SUMMARY_ROWS).endswith("|\n")


def test_a_points_measured_peak_is_the_larger_of_building_and_training():
    assert measured_bytes({"state_bytes": "10", "step_peak_bytes": "5", "build_peak_bytes": "12"}) == 15
    assert measured_bytes({"state_bytes": "10", "step_peak_bytes": "5", "build_peak_bytes": "16"}) == 16
    assert measured_bytes({"state_bytes": "10", "step_peak_bytes": "5", "build_peak_bytes": ""}) == 15
    assert measured_bytes({"state_bytes": "10", "step_peak_bytes": "5"}) == 15
    for missing in ({"state_bytes": "10"}, {"state_bytes": "10", "step_peak_bytes": ""},
                    {"step_peak_bytes": "5", "state_bytes": ""},
                    {"step_peak_bytes": "5", "state_bytes": None}, {"step_peak_bytes": "5"}):
        assert measured_bytes(missing) is None


def test_the_midpoint_is_halfway_on_a_log_scale_in_steps_of_the_rpp_width():
    assert width_limit.midpoint(1000, 2000) == 1410  # sqrt(2e6) = 1414.2
    assert width_limit.midpoint(1000, 4000) == 2000
    assert width_limit.midpoint(1000, 1010) is None and width_limit.midpoint(1000, 1020) == 1010
    assert width_limit.midpoint(1001, 1009) is None  # sqrt 1,005.0 rounds to 1,000, not between them
    assert width_limit.midpoint(995, 1000) is None  # sqrt 997.5 rounds to 1,000: the upper width, measured already


def test_rows_are_appended_with_the_header_once_and_read_back(tmp_path):
    path = tmp_path / "out" / "width_limit.csv"
    assert width_limit.read_rows(path) == []
    width_limit.append_row(path, {"method": "dense", "width": 1000, "status": "ok", "unknown": "left out"})
    width_limit.append_row(path, {"method": "hashed", "width": 2000, "note": "a, b"})
    text = path.read_text().splitlines()
    assert text[0] == ",".join(width_limit.COLUMNS) and len(text) == 3
    rows = width_limit.read_rows(path)
    assert [(row["method"], row["width"], row["status"], row["note"]) for row in rows] == [
        ("dense", "1000", "ok", ""), ("hashed", "2000", "", "a, b")]
    assert list(rows[0]) == width_limit.COLUMNS


def test_the_widest_of_several_is_the_last_and_its_construction_peak_is_shown():
    rows = [grid_row("rpp_stored", width, "ok", state_bytes=2**20, step_peak_bytes=2**20, build_peak_bytes=width * 2**10,
                     measured_bytes=2**21, estimate_bytes=2**21, step_s=0.25, step_cpu_s="")
            for width in (1000, 2000, 4000)]
    assert width_limit.limits(rows)["rpp_stored"]["widest"] is rows[2]
    lines = width_limit.summary_markdown(rows).splitlines()
    assert lines[2] == ("| rpp_stored | 4,000 | 1.0 MiB | 1.0 MiB | 3.9 MiB | 2.0 MiB | 2.0 MiB | 0.25 | "
                        "none within the grid |")
    rows[0]["step_s"] = ""  # not timed: blank, as the CPU time of every row here
    assert width_limit.summary_markdown(rows).splitlines()[-3] == (
        "| rpp_stored | 1,000 | ok | 1.0 | 1.0 | 1.0 | 2.0 | 2.0 |  |  |  |  |  |")


def test_rows_are_appended_into_folders_not_made_yet_and_keep_line_breaks_in_their_text(tmp_path):
    path = tmp_path / "grid" / "machine" / "width_limit.csv"
    width_limit.append_row(path, {"method": "dense", "width": 1000, "note": "first line\r\nsecond, quoted"})
    assert [row["note"] for row in width_limit.read_rows(path)] == ["first line\r\nsecond, quoted"]


def test_the_grids_widths_and_model_configs():
    assert width_limit.default_widths() == [1000 * 2**i for i in range(15)]
    assert model_config("rpp_stored", 20) == {"kind": "rpp", "depth": 2, "bias": "full", "width": 10, "k": 2,
                                              "seed": 0, "permutation": "stored"}
    assert model_config("lowrank", 1000) == {"kind": "lowrank", "depth": 2, "bias": "full", "width": 10, "k": 100,
                                             "seed": 0}
    with pytest.raises(ValueError) as err:
        model_config("rpp_shared", 15)
    assert str(err.value) == "width=15 is invalid for rpp_shared; allowed: a multiple of 10"
