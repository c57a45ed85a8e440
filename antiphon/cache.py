"""Build an artefact once into a cache directory, safely across processes and machines.

Used for whatever is expensive to make and keyed by its inputs (the tiny policy, the cold-started
policy): the result is built in a temporary folder beside its target and renamed into place, so a
reader never sees half a build. A file lock serialises the processes of one machine; processes that
share the cache but not the lock (another machine on a network file system) may both build, and the
one that loses the rename uses the winner's result.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable


def build_once(target: str | os.PathLike, build: Callable[[Path], None], valid: Callable[[Path], bool]) -> Path:
    """``target`` if ``valid(target)``, else ``build(tmp)`` into a fresh folder renamed to ``target``.

    ``valid`` decides whether a folder holds a complete, current result (e.g. a marker file carrying the
    key of its inputs); a folder at ``target`` that is not valid (a broken leftover) is replaced. Raises
    what ``build`` raises, leaving no temporary folder behind.
    """
    target = Path(target)
    cache = target.parent
    cache.mkdir(parents=True, exist_ok=True)
    if valid(target):
        return target
    with open(cache / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if valid(target):  # built by another process while this one waited for the lock
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=cache))
        try:
            build(tmp)
            if not valid(tmp):
                raise RuntimeError(f"building {target.name} gave an incomplete result (no valid marker in {tmp})")
            if target.exists() and not valid(target):
                shutil.rmtree(target, ignore_errors=True)
            try:
                os.rename(tmp, target)
            except OSError:
                if not valid(target):  # not a lost race with a valid result: a real failure
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target
