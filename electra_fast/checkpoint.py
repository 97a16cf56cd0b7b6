"""Checkpoints that survive crashes: atomic writes, the last K kept, safe loading.

A checkpoint is one file ``ckpt-00001234.pt`` in the run folder. It is written to a temporary
file in the same folder, flushed and fsync'ed, then renamed over the final name, so a run killed
at any moment leaves either the old checkpoint set or the new one, never half a file. Loading
uses ``torch.load(weights_only=True)``: a checkpoint holds tensors and plain Python values only
and cannot run code.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

_NAME = re.compile(r"^ckpt-(\d{8})\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or no usable checkpoint could be read."""


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / f"ckpt-{step:08d}.pt"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoints in a run folder, oldest first."""
    d = Path(run_dir)
    if not d.is_dir():
        return []
    return sorted((p for p in d.iterdir() if _NAME.match(p.name)), key=lambda p: p.name)


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(state: dict[str, Any], run_dir: str | Path, step: int, keep: int = 3) -> Path:
    """Write ``state`` atomically as the checkpoint of ``step``; keep the newest ``keep`` files.

    A full disk or an unwritable folder raises CheckpointError and leaves every earlier
    checkpoint untouched.
    """
    d = Path(run_dir)
    final = checkpoint_path(d, step)
    tmp_name = None
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=d)
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, final)
        tmp_name = None
        _fsync_dir(d)
    except OSError as e:
        raise CheckpointError(f"could not write checkpoint {final}: {e.strerror or e}; "
                              "the previous checkpoint is intact") from e
    finally:
        if tmp_name is not None:
            try:
                os.unlink(tmp_name)
            except OSError:
                pass
    if keep > 0:
        for old in list_checkpoints(d)[:-keep]:
            try:
                old.unlink()
            except OSError:
                pass
    return final


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load one checkpoint file safely (weights_only=True). Raises CheckpointError."""
    p = Path(path)
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise CheckpointError(f"{p}: no such checkpoint") from e
    except Exception as e:  # truncated zip, bad pickle, or a pickled object weights_only refuses
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{p}: unreadable checkpoint ({msg[:200]})") from e
    if not isinstance(state, dict) or "model" not in state or "step" not in state:
        raise CheckpointError(f"{p}: not an electra_fast checkpoint (no model/step entries)")
    return state


def load_latest(run_dir: str | Path, log=print) -> tuple[dict[str, Any], Path]:
    """The newest readable checkpoint of a run; corrupted newer ones are reported and skipped."""
    cks = list_checkpoints(run_dir)
    if not cks:
        raise CheckpointError(f"{run_dir}: no checkpoints (ckpt-*.pt) to resume from")
    for p in reversed(cks):
        try:
            return load_checkpoint(p), p
        except CheckpointError as e:
            log(f"warning: {e}; falling back to an older checkpoint")
    raise CheckpointError(f"{run_dir}: every checkpoint is unreadable ({', '.join(p.name for p in cks)})")
