"""Output folders the CLIs own: a new run never lands on top of another run or a user's files.

Every folder ``train``, ``finetune`` and ``export`` write carries ``run.json`` (a run id, the
kind of run, when it started). ``claim`` refuses a folder that already holds a run (the user
probably forgot ``--resume``) or any other files, unless ``--overwrite``; with it, only the
names the CLI itself writes are deleted, a user's other files stay.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from pathlib import Path

MARKER = "run.json"


class RunFolderError(ValueError):
    """An output folder that cannot be used; the message names the flag and what to do."""


def read_marker(folder: str | Path) -> dict | None:
    """The folder's run.json, or None when it has none (or an unreadable one)."""
    p = Path(folder) / MARKER
    try:
        m = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) else None


def is_run(folder: str | Path) -> bool:
    """A folder written by one of our CLIs: run.json, or (runs from before run.json) checkpoints."""
    d = Path(folder)
    return read_marker(d) is not None or any(d.glob("ckpt-*.pt"))


def claim(folder: str | Path, kind: str, flag: str, overwrite: bool, own: tuple[str, ...],
          hint: str = "", work: tuple[str, ...] = ()) -> str:
    """Make ``folder`` this run's: refuse one holding a run or other files unless ``overwrite``.

    own: the names (globs) this kind of run writes; with ``overwrite`` they are deleted first.
    work: the names that show a run got somewhere (checkpoints, results); a folder of ours with
    none of them (a run that stopped on a bad corpus before its first checkpoint) is taken over
    without ``--overwrite``. hint: what to say besides ``--overwrite`` when the folder holds a run
    (``--resume DIR``). Returns the new run id, written to ``folder/run.json``.
    """
    d = Path(folder)
    if d.exists() and not d.is_dir():
        raise RunFolderError(f"{flag} {d}: is a file, not a folder")
    if d.is_dir() and any(d.iterdir()):
        aborted = (read_marker(d) is not None and not any(p for w in work for p in d.glob(w))
                   and all(any(p.match(o) for o in (*own, MARKER)) for p in d.iterdir()))
        if not overwrite and not aborted:
            if is_run(d):
                what = (read_marker(d) or {}).get("kind", "training")
                article = "an" if what[:1] in "aeiou" else "a"
                raise RunFolderError(f"{flag} {d} already holds {article} {what} run; {hint + ', or ' if hint else ''}"
                                     "pass --overwrite to replace it, or choose a new folder")
            raise RunFolderError(f"{flag} {d} is not empty and holds no electra_fast run; choose an empty or new "
                                 "folder, or pass --overwrite (files this run writes are replaced, others kept)")
        for pattern in (*own, MARKER):
            for p in d.glob(pattern):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
    d.mkdir(parents=True, exist_ok=True)
    run_id = uuid.uuid4().hex
    write_marker(d, {"run_id": run_id, "kind": kind, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return run_id


def write_marker(folder: str | Path, marker: dict) -> None:
    (Path(folder) / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
