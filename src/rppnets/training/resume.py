"""Where a run continues: the newest checkpoint that loads and is this run's, else afresh; nothing is trimmed before."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from rppnets.training.checkpointing import CheckpointError, checkpoint_progress, read_checkpoint


@dataclass
class ResumePoint:
    """A checkpoint checked to load, to be this run's (same config hash) and to fit this model."""

    path: Path
    progress: dict  # epochs_done, global_step, mid_epoch
    identity: dict  # config_hash, run_name, wandb_id, config
    history: list[dict] = field(default_factory=list)  # the logged rows up to the checkpoint
    attempts: list[dict] = field(default_factory=list)  # the attempts that trained up to it (threads, time)


def find_resume_point(candidates: list[Path], identity: dict, module: torch.nn.Module
                      ) -> tuple[ResumePoint | None, dict[Path, str]]:
    """The first of `candidates` (newest first) that can resume this run, and why each one before it cannot.

    A checkpoint is refused when it cannot be read, is not a Lightning checkpoint, carries no identity or another
    run's (the differing config keys are named), or holds tensors of other shapes than `module`'s.
    """
    refused: dict[Path, str] = {}
    for path in candidates:
        if not path.is_file():
            continue
        try:
            checkpoint = read_checkpoint(path)
            stamp = (checkpoint.get("run") or {}).get("identity")
            if not isinstance(stamp, dict) or "config_hash" not in stamp:
                raise CheckpointError(f"{path} carries no run identity (written by an older version or another "
                                      "program): whose run it holds cannot be checked")
            if stamp["config_hash"] != identity["config_hash"]:
                keys = differing_keys(stamp.get("config") or {}, identity["config"])
                raise CheckpointError(f"{path} holds another run ({'; '.join(keys) or 'its config hash differs'})")
            _check_shapes(path, checkpoint.get("state_dict") or {}, module.state_dict())
            run = checkpoint.get("run") or {}
            return ResumePoint(path, checkpoint_progress(checkpoint), stamp, list(run.get("history") or []),
                               list(run.get("attempts") or [])), refused
        except CheckpointError as err:
            refused[path] = str(err)
    return None, refused


def differing_keys(theirs: dict, ours: dict, limit: int = 4) -> list[str]:
    """``key: theirs -> ours`` for each dotted key whose value differs (at most `limit`, then a count)."""
    a, b = _flatten(theirs), _flatten(ours)
    keys = sorted(key for key in a.keys() | b.keys() if a.get(key, "<absent>") != b.get(key, "<absent>"))
    shown = [f"{key}: {a.get(key, '<absent>')!r} there, {b.get(key, '<absent>')!r} here" for key in keys[:limit]]
    return shown + ([f"{len(keys) - limit} more keys"] if len(keys) > limit else [])


def _flatten(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        flat = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: value}


def _check_shapes(path: Path, saved: dict, expected: dict) -> None:
    missing = sorted(expected.keys() - saved.keys())
    if missing:
        raise CheckpointError(f"{path} lacks the model's {', '.join(missing[:3])}")
    for key, tensor in expected.items():
        if tuple(saved[key].shape) != tuple(tensor.shape):
            raise CheckpointError(f"{path} holds {key} of shape {tuple(saved[key].shape)}, this model "
                                  f"{tuple(tensor.shape)}")
