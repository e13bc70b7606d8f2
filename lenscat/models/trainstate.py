"""Saved training states: what lets a long training run stop (Ctrl-C, SIGTERM, a crash) and resume.

A trainer given a ``state_dir`` keys its run by a hash of everything that defines it (options,
data size, seed, a caller's tag such as a training-set hash) and keeps one file per run,
``state_dir/<prefix>-<key>.state``, written atomically (``.part`` then rename), so a reader never
sees half a state. The trainer decides what goes in the state (weights, optimiser, random
generators, losses); this module only names, writes and reads the files.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from lenscat.errors import Interrupted, LenscatError

__all__ = ["interrupted", "read_state", "run_key", "saved_run", "state_file", "write_state"]


def run_key(record: dict[str, Any], *, ignore: tuple[str, ...] = ("device", "amp_dtype", "log_every")) -> str:
    """sha256 of the canonical JSON of ``record`` without the keys that do not change the result."""
    keyed = {k: v for k, v in record.items() if k not in ignore}
    return hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()


def state_file(state_dir: str | Path, prefix: str, key: str) -> Path:
    """The state file of run ``key`` (``state_dir/<prefix>-<key[:20]>.state``)."""
    return Path(state_dir).expanduser() / f"{prefix}-{key[:20]}.state"


def saved_run(
    state_dir: str | Path | None, prefix: str, record: dict[str, Any], *, resume: bool = True
) -> tuple[str, Path | None, dict[str, Any] | None]:
    """The key, state file and saved state of the run ``record`` describes.

    Returns ``(key, None, None)`` without a ``state_dir``, and no state when there is none yet or
    ``resume`` is False (then a saved one is deleted: the run starts over).
    """
    key = run_key(record)
    if state_dir is None:
        return key, None, None
    path = state_file(state_dir, prefix, key)
    if not resume:
        path.unlink(missing_ok=True)
    return key, path, read_state(path, key) if path.exists() else None


def interrupted(where: str, path: str | Path | None) -> Interrupted:
    """The exception a trainer's caller raises after Ctrl-C, e.g. ``where='at step 57 of 80'``."""
    return Interrupted(f"training state saved {where} ({path}); re-run the same command to resume")


def write_state(path: Path, state: dict[str, Any]) -> None:
    """Write a training state atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    torch.save(state, tmp)
    tmp.replace(path)


def read_state(path: Path, key: str) -> dict[str, Any]:
    """A saved state of run ``key`` (tensors on the CPU).

    Raises
    ------
    LenscatError
        The file cannot be read (truncated, foreign) or belongs to another run.
    """
    try:
        st = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a truncated or foreign file: say which, do not guess
        raise LenscatError(f"{path}: cannot read the saved training state ({exc}); delete it to start over") from exc
    if not isinstance(st, dict) or st.get("key") != key:
        raise LenscatError(f"{path}: saved state of another run; delete it to start over")
    return st
