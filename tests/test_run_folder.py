"""A job's run folder (rppnets.records.run_folder): its one writer, its JSON files, what results.json vouches for, and
what a fresh start sets aside. A wrong answer here counts a damaged job as finished, or deletes an attempt's files."""

import hashlib
import json
import os
import re
import socket

import pytest

from rppnets.records.run_folder import FolderBusyError, FolderNotWritableError, RunFolder, file_digest, finite_or_none


def test_the_folders_files_are_where_the_other_modules_look(tmp_path):
    folder = RunFolder(str(tmp_path))
    assert folder.path == tmp_path
    assert folder.results_path == tmp_path / "results.json"
    assert folder.checkpoint_path == tmp_path / "checkpoints" / "last.ckpt"
    assert folder.previous_checkpoint_path == tmp_path / "checkpoints" / "previous.ckpt"
    assert folder.csv_path == tmp_path / "csv" / "metrics.csv"


def test_a_folder_that_cannot_be_made_is_named_with_the_fix(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(FolderNotWritableError) as err:
        RunFolder(tmp_path / "file" / "run").check_writable()
    assert str(err.value) == (f"run folder {tmp_path / 'file' / 'run'} is not writable (Not a directory); choose "
                              "another with hydra.run.dir=... or fix its permissions")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoints").write_text("")  # checkpoints/ is checked too
    with pytest.raises(FolderNotWritableError, match=f"run folder {tmp_path / 'run' / 'checkpoints'} is not"):
        RunFolder(tmp_path / "run").check_writable()


def test_one_writer_at_a_time_and_the_busy_folder_names_its_holder(tmp_path):
    first, second = RunFolder(tmp_path / "run"), RunFolder(tmp_path / "run")
    first.unlock()  # never locked: nothing to release
    first.lock()
    holder = (tmp_path / "run" / ".lock").read_text()
    assert re.fullmatch(rf"pid {os.getpid()} on {re.escape(socket.gethostname())} since "
                        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", holder)
    with pytest.raises(FolderBusyError) as err:
        second.lock()
    assert str(err.value) == (f"run folder {tmp_path / 'run'} is in use by another process ({holder}); wait for it "
                              "to finish, or run elsewhere with hydra.run.dir=...")
    assert err.value.__cause__ is None and err.value.__suppress_context__
    first.unlock()
    first.unlock()  # twice is harmless
    second.lock()  # free again
    assert (tmp_path / "run" / ".lock").read_text().startswith(f"pid {os.getpid()} on ")
    with pytest.raises(FolderBusyError):
        RunFolder(tmp_path / "run").lock()
    second.unlock()


def test_a_lock_file_without_a_holder_says_unknown_process(tmp_path):
    first = RunFolder(tmp_path)
    first.lock()
    (tmp_path / ".lock").write_text("")
    with pytest.raises(FolderBusyError, match=r"in use by another process \(unknown process\)"):
        RunFolder(tmp_path).lock()
    first.unlock()


def test_json_files_read_back_or_say_why_not(tmp_path):
    folder = RunFolder(tmp_path)
    assert folder.read_json_or_reason("results.json") == (None, None)  # not there: no reason to give
    (tmp_path / "results.json").write_text('{"status": "finished"')
    content, reason = folder.read_json_or_reason("results.json")
    assert content is None and reason.startswith(f"{tmp_path / 'results.json'} is damaged (JSONDecodeError: ")
    (tmp_path / "results.json").write_text("[1, 2]")
    assert folder.read_json_or_reason("results.json") == (None, f"{tmp_path / 'results.json'} is damaged (not a "
                                                                "JSON object)")
    (tmp_path / "results.json").write_bytes(b"\xff\xfe")
    assert "is damaged (UnicodeDecodeError: " in folder.read_json_or_reason("results.json")[1]
    (tmp_path / "state").mkdir()
    assert "is damaged (IsADirectoryError: " in folder.read_json_or_reason("state")[1]
    folder.write_json("results.json", {"a": 1})
    assert folder.read_json_or_reason("results.json") == ({"a": 1}, None)
    assert folder.read_json("results.json") == {"a": 1}


def test_json_is_written_strict_and_indented(tmp_path):
    folder = RunFolder(tmp_path)
    folder.write_json("run_state.json", {"loss": float("inf"), "n": 1})
    assert (tmp_path / "run_state.json").read_text() == '{\n  "loss": null,\n  "n": 1\n}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run_state.json"]


def write(folder, name, text):
    path = folder.path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_results_vouch_for_the_files_they_list(tmp_path):
    folder = RunFolder(tmp_path)
    write(folder, "csv/metrics.csv", "step\n0\n")
    write(folder, "checkpoints/last.ckpt", "weights")
    assert set(folder.digests()) == {"checkpoints/last.ckpt", "csv/metrics.csv"}
    results = {"status": "finished", "config_hash": "abc", "files": folder.digests()}
    folder.write_json("results.json", results)
    assert folder.finished_results("abc") == results
    (tmp_path / "checkpoints" / "last.ckpt").unlink()  # space freed after the run: still finished
    assert folder.finished_results("abc") == results
    write(folder, "checkpoints/last.ckpt", "another run's weights")  # but a different one is not
    assert folder.finished_results("abc") is None
    (tmp_path / "checkpoints" / "last.ckpt").unlink()
    write(folder, "csv/metrics.csv", "step\n0\n1\n")  # a changed CSV
    assert folder.finished_results("abc") is None
    (tmp_path / "csv" / "metrics.csv").unlink()  # a missing CSV
    assert folder.finished_results("abc") is None
    folder.write_json("results.json", {"status": "finished", "config_hash": "abc", "files": None})
    assert folder.finished_results("abc") == {"status": "finished", "config_hash": "abc", "files": None}


def test_digests_are_of_the_files_that_exist(tmp_path):
    folder = RunFolder(tmp_path)
    assert folder.digests() == {}
    write(folder, "csv/metrics.csv", "step\n")
    assert folder.digests() == {"csv/metrics.csv": hashlib.sha1(b"step\n").hexdigest()}
    write(folder, "other.txt", "x")
    assert folder.digests(names=("other.txt", "none.txt")) == {"other.txt": hashlib.sha1(b"x").hexdigest()}


def test_file_digest_is_the_sha1_of_every_block(tmp_path):
    data = os.urandom(3 * (1 << 20) + 5)
    (tmp_path / "big").write_bytes(data)
    assert file_digest(tmp_path / "big") == hashlib.sha1(data).hexdigest()
    (tmp_path / "empty").write_bytes(b"")
    assert file_digest(tmp_path / "empty") == hashlib.sha1(b"").hexdigest()


def test_set_aside_keeps_two_attempts_of_one_second_and_moves_links_and_only_what_is_named(tmp_path, monkeypatch):
    folder = RunFolder(tmp_path)
    monkeypatch.setattr("rppnets.records.run_folder.time.strftime", lambda fmt: "20261207-120000")
    write(folder, "results.json", "1")
    (tmp_path / "wandb").symlink_to(tmp_path / "gone")  # a dangling link still moves
    first = folder.set_aside("first")
    assert first == tmp_path / "replaced-20261207-120000"
    assert (first / "wandb").is_symlink() and (first / "results.json").read_text() == "1"
    write(folder, "results.json", "2")
    write(folder, "csv/metrics.csv", "x")
    second = folder.set_aside("second", names=("csv/metrics.csv", "missing.json"))
    assert second == tmp_path / "replaced-20261207-120000-1"
    assert (second / "csv" / "metrics.csv").read_text() == "x" and (second / "REASON").read_text() == "second\n"
    assert (tmp_path / "results.json").read_text() == "2" and (first / "REASON").read_text() == "first\n"
    third = folder.set_aside("third")
    assert third == tmp_path / "replaced-20261207-120000-2" and (third / "results.json").read_text() == "2"
    assert folder.set_aside("nothing left") is None


def test_finite_or_none_replaces_every_non_finite_number_at_any_depth():
    assert finite_or_none(float("-inf")) is None and finite_or_none(float("nan")) is None
    assert finite_or_none({"a": {"b": [1.5, (float("inf"), "x")]}}) == {"a": {"b": [1.5, [None, "x"]]}}
    assert finite_or_none(3) == 3 and finite_or_none("inf") == "inf"
    assert json.dumps(finite_or_none([float("nan")])) == "[null]"


def test_a_run_folder_deep_in_a_new_sweep_is_made_with_its_parents(tmp_path):
    folder = RunFolder(tmp_path / "multirun" / "2026-12-07" / "0")
    folder.check_writable()
    assert (tmp_path / "multirun" / "2026-12-07" / "0" / "checkpoints").is_dir()
    other = RunFolder(tmp_path / "elsewhere" / "sweep" / "1")
    other.lock()  # taking the lock makes the folder too
    assert (tmp_path / "elsewhere" / "sweep" / "1" / ".lock").is_file()
    other.unlock()
