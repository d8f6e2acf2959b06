"""Where a run continues (rppnets.training.resume): the newest checkpoint that loads and is this run's, and what is
said about each one refused. A wrong pick resumes another run's weights, or throws a good checkpoint away."""

import torch
from torch import nn

from rppnets.training.resume import differing_keys, find_resume_point

CONFIG = {"model": {"kind": "rpp", "width": 10}, "optimizer": {"lr": 0.01}, "seed": 0}
IDENTITY = {"config_hash": "abc", "run_name": "rpp-w10-s0", "wandb_id": "w1", "config": CONFIG}


def net() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))


def write(path, module=None, identity=IDENTITY, history=None, processed=2, started=2, step=16, state_dict=None,
          run=True, attempts=None):
    """A checkpoint as LastCheckpoint writes it: Lightning's loops and weights, and the run's identity and history."""
    checkpoint = {"loops": {"fit_loop": {"epoch_progress": {"current": {"processed": processed, "started": started}}}},
                  "global_step": step,
                  "state_dict": state_dict if state_dict is not None else (module or net()).state_dict()}
    if run:
        checkpoint["run"] = {"identity": identity, "history": history, "attempts": attempts}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path


def test_the_newest_checkpoint_of_this_run_is_resumed_with_its_progress_identity_and_history(tmp_path):
    rows = [{"train/loss_step": 2.5, "step": 0}, {"val/acc": 0.25, "step": 7}]
    attempts = [{"torch_threads": 4, "resumed_at_step": None, "wall_s": 12.5}]
    last = write(tmp_path / "last.ckpt", history=rows, processed=2, started=3, step=20, attempts=attempts)
    write(tmp_path / "previous.ckpt", step=10)
    point, refused = find_resume_point([last, tmp_path / "previous.ckpt"], IDENTITY, net())
    assert refused == {}
    assert point.path == last
    assert point.progress == {"epochs_done": 2, "global_step": 20, "mid_epoch": True}
    assert point.identity == IDENTITY and point.history == rows and point.attempts == attempts


def test_a_missing_checkpoint_is_passed_over_silently_and_the_next_one_resumed(tmp_path):
    previous = write(tmp_path / "previous.ckpt", history=None)
    point, refused = find_resume_point([tmp_path / "last.ckpt", previous], IDENTITY, net())
    assert point.path == previous and refused == {}
    assert point.history == [] and point.attempts == [] and point.progress["mid_epoch"] is False
    assert find_resume_point([tmp_path / "none.ckpt"], IDENTITY, net()) == (None, {})


def test_a_damaged_last_checkpoint_is_refused_by_name_and_the_previous_one_resumed(tmp_path):
    last = tmp_path / "last.ckpt"
    last.write_bytes(b"PK\x03\x04 cut short")
    previous = write(tmp_path / "previous.ckpt")
    point, refused = find_resume_point([last, previous], IDENTITY, net())
    assert point.path == previous
    assert list(refused) == [last] and refused[last].startswith(f"{last} cannot be read (")


def test_a_checkpoint_without_an_identity_is_refused(tmp_path):
    for n, run in enumerate(({"identity": None}, {"identity": {"run_name": "x"}}, None)):
        path = tmp_path / f"{n}.ckpt"
        torch.save({"loops": {}, "global_step": 0, "state_dict": net().state_dict(), "run": run}, path)
        point, refused = find_resume_point([path], IDENTITY, net())
        assert point is None
        assert refused == {path: f"{path} carries no run identity (written by an older version or another program): "
                                 "whose run it holds cannot be checked"}
    bare = write(tmp_path / "bare.ckpt", run=False)
    assert "carries no run identity" in find_resume_point([bare], IDENTITY, net())[1][bare]


def test_another_runs_checkpoint_is_refused_naming_the_keys_that_differ(tmp_path):
    theirs = dict(IDENTITY, config_hash="def", config={**CONFIG, "optimizer": {"lr": 0.1}})
    path = write(tmp_path / "last.ckpt", identity=theirs)
    point, refused = find_resume_point([path], IDENTITY, net())
    assert point is None
    assert refused[path] == f"{path} holds another run (optimizer.lr: 0.1 there, 0.01 here)"
    # a hash that differs where the configs do not still refuses; a stamp without a config differs in every key
    path = write(tmp_path / "same.ckpt", identity=dict(IDENTITY, config_hash="def"))
    assert find_resume_point([path], IDENTITY, net())[1][path] == f"{path} holds another run (its config hash differs)"
    path = write(tmp_path / "bare.ckpt", identity=dict(IDENTITY, config_hash="def", config=None))
    assert find_resume_point([path], IDENTITY, net())[1][path] == (
        f"{path} holds another run (model.kind: '<absent>' there, 'rpp' here; model.width: '<absent>' there, 10 here; "
        "optimizer.lr: '<absent>' there, 0.01 here; seed: '<absent>' there, 0 here)")


def test_a_checkpoint_of_other_shapes_is_refused_naming_the_tensor(tmp_path):
    other = nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 2))
    path = write(tmp_path / "last.ckpt", module=other)
    point, refused = find_resume_point([path], IDENTITY, net())
    assert point is None
    assert refused[path] == f"{path} holds 0.weight of shape (5, 4), this model (3, 4)"


def test_a_checkpoint_lacking_tensors_is_refused_naming_the_first_three(tmp_path):
    path = write(tmp_path / "last.ckpt", state_dict={"0.weight": torch.zeros(3, 4)})
    point, refused = find_resume_point([path], IDENTITY, net())
    assert point is None and refused[path] == f"{path} lacks the model's 0.bias, 1.bias, 1.weight"
    empty = write(tmp_path / "empty.ckpt", state_dict={})
    refused = find_resume_point([empty], IDENTITY, net())[1]
    assert refused[empty] == f"{empty} lacks the model's 0.bias, 0.weight, 1.bias"  # the first three of four


def test_extra_tensors_in_a_checkpoint_do_not_stop_a_resume(tmp_path):
    state = net().state_dict() | {"metrics.train_loss.mean_value": torch.tensor(1.0)}
    path = write(tmp_path / "last.ckpt", state_dict=state)
    assert find_resume_point([path], IDENTITY, net())[0].path == path


def test_every_refusal_before_the_resumed_checkpoint_is_reported(tmp_path):
    damaged = tmp_path / "a.ckpt"
    damaged.write_text("not a checkpoint")
    foreign = write(tmp_path / "b.ckpt", identity=dict(IDENTITY, config_hash="zzz"))
    good = write(tmp_path / "c.ckpt")
    point, refused = find_resume_point([damaged, foreign, good], IDENTITY, net())
    assert point.path == good and list(refused) == [damaged, foreign]


def test_differing_keys_lists_dotted_keys_in_order_up_to_the_limit_then_a_count():
    theirs = {"a": 1, "b": {"c": 2, "d": [1, 2]}, "e": "x", "f": 1, "g": 1, "same": 0}
    ours = {"a": 2, "b": {"c": 3, "d": [1, 3]}, "e": "y", "f": 2, "h": 1, "same": 0}
    assert differing_keys(theirs, ours) == ["a: 1 there, 2 here", "b.c: 2 there, 3 here",
                                            "b.d: [1, 2] there, [1, 3] here", "e: 'x' there, 'y' here",
                                            "3 more keys"]
    assert differing_keys(theirs, ours, limit=7) == differing_keys(theirs, ours, limit=10)[:7]
    assert differing_keys({"a": 1, "x": {"y": 2}}, {"a": 1}) == ["x.y: 2 there, '<absent>' here"]
    four = differing_keys({"a": 1, "b": 1, "c": 1, "d": 1}, {})
    assert len(four) == 4 and four[-1] == "d: 1 there, '<absent>' here"
    assert differing_keys({"a": {"b": 1}}, {"a": {"b": 1}}) == []
    # a key set to null on one side and absent on the other differs too
    assert differing_keys({"lr": None}, {}) == ["lr: None there, '<absent>' here"]
    assert differing_keys({}, {"lr": None}) == ["lr: '<absent>' there, None here"]
