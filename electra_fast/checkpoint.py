"""Checkpoints that survive crashes: atomic writes, the last K kept, safe loading.

A checkpoint is one file ``ckpt-00001234.pt`` in the run folder. It is written to a temporary
file in the same folder, flushed and fsync'ed, then renamed over the final name, so a run killed
at any moment leaves either the old checkpoint set or the new one, never half a file. Loading
uses ``torch.load(weights_only=True)``: a checkpoint holds tensors and plain Python values only
and cannot run code.

``AsyncCheckpointer`` takes the write off the training loop: it snapshots the state to host
memory (the only part the loop waits for), then writes, fsyncs and renames in a background
thread, at most one write in flight.
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
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


def save_checkpoint(state: dict[str, Any], run_dir: str | Path, step: int, keep: int = 3,
                    prunable: set[Path] | None = None) -> Path:
    """Write ``state`` atomically as the checkpoint of ``step``, then prune to the newest ``keep``.

    Pruning never deletes the checkpoint just written, nor one of a later step, and with
    ``prunable`` given only those files (this run's own checkpoints). A full disk or an
    unwritable folder raises CheckpointError and leaves every earlier checkpoint untouched.
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
        older = [p for p in list_checkpoints(d) if _step_of(p) < step
                 and (prunable is None or p in prunable)]
        for old in older[:max(0, len(older) - (keep - 1))]:
            try:
                old.unlink()
            except OSError:
                pass
    return final


def _step_of(path: Path) -> int:
    return int(_NAME.match(path.name).group(1))


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


def snapshot(obj: Any) -> Any:
    """A host-memory copy of a (nested) state: tensors cloned to the CPU, everything else as is.

    Training may go on mutating the live tensors as soon as this returns."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: snapshot(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(snapshot(v) for v in obj)
    return obj


class AsyncCheckpointer:
    """Checkpoints written in the background, one at a time, each still atomic.

    ``save(state, step)`` snapshots ``state`` to host memory, waits for the previous write (so
    at most one is in flight and they land in order) and starts this one. A failed write is
    raised as CheckpointError by the next ``save``, ``poll`` or ``wait``; the checkpoints
    written before it stay intact. Call ``wait()`` before the process exits.
    """

    def __init__(self, run_dir: str | Path, keep: int = 3, owned: list[Path] | tuple = ()):
        """owned: checkpoints already in ``run_dir`` that belong to this run (a resumed run's); with
        the ones this checkpointer writes, the only files pruning may delete."""
        self.run_dir, self.keep = Path(run_dir), keep
        self._owned = {Path(p) for p in owned}
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.last: Path | None = None  # the newest checkpoint known to be on disk

    def save(self, state: dict[str, Any], step: int) -> Path:
        host = snapshot(state)
        self.wait()
        path = checkpoint_path(self.run_dir, step)
        self._owned.add(path)

        def write():
            try:
                self.last = save_checkpoint(host, self.run_dir, step, keep=self.keep, prunable=set(self._owned))
            except BaseException as e:  # noqa: B036 - handed to the training loop
                self._error = e

        self._thread = threading.Thread(target=write, name=f"checkpoint-{step}", daemon=False)
        self._thread.start()
        return path

    def poll(self) -> None:
        """Raise the error of a finished write, if any; never blocks."""
        if self._thread is not None and not self._thread.is_alive():
            self.wait()

    def wait(self) -> Path | None:
        """Block until the write in flight is on disk; raise its error. Returns the newest checkpoint."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            err, self._error = self._error, None
            raise err
        return self.last

    def wait_quietly(self) -> None:
        """Wait for the write in flight without raising (the process is already ending on an error)."""
        try:
            self.wait()
        except BaseException:  # noqa: B036 - the error that ends the run is reported instead
            pass
