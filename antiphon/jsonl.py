"""JSON Lines files: one reader whose errors name ``file:line: field``, and one writer.

Every JSONL file antiphon reads (scenario sets, replay manifests, preference pairs, ``metrics.jsonl``)
goes through :func:`read_jsonl`, so a bad line is reported the same way everywhere: the file, the line
number (1-based, blank lines counted) and what is wrong. Callers validate each record's fields and raise
through the same error factory, so their messages look alike too.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, Tuple, Union

PathLike = Union[str, os.PathLike]
# (file, line, field, why) -> the exception to raise; a format's own error class fits where it takes these.
ErrorFactory = Callable[[str, int, str, str], Exception]
RECORD = "record"  # the field name that stands for a whole line


class JsonlError(ValueError):
    """A JSONL line that cannot be used; ``file``, ``line`` and ``field`` say where, the message says why."""

    def __init__(self, file: str, line: int, field_name: str, why: str):
        super().__init__(f"{file}:{line}: {field_name}: {why}")
        self.file, self.line, self.field = str(file), int(line), field_name


def read_jsonl(path: PathLike, error: ErrorFactory = JsonlError,
               skip_truncated_last: bool = False) -> Iterator[Tuple[int, Dict[str, Any]]]:
    """``(line number, object)`` for every non-blank line of ``path``, in file order.

    A line that is not UTF-8, not JSON or not a JSON object raises ``error(file, line, "record", why)``.
    ``skip_truncated_last``: a bad LAST line is skipped instead (a file still being appended to, or left
    by a killed writer, ends mid-line); a bad line anywhere else is still an error. Opening the file
    raises the usual ``OSError`` (a missing file is the caller's to judge).
    """
    p = str(path)
    pending = None  # the bad line seen last, raised once another non-blank line shows it was not the last
    with open(p, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            if pending is not None:
                raise pending
            try:
                obj = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                pending = error(p, lineno, RECORD, f"not UTF-8 ({e.reason} at byte {e.start})")
            except json.JSONDecodeError as e:
                pending = error(p, lineno, RECORD, f"not JSON ({e.msg} at column {e.colno})")
            else:
                if not isinstance(obj, dict):
                    raise error(p, lineno, RECORD, f"expected a JSON object, got {type(obj).__name__}")
                yield lineno, obj
                continue
            if not skip_truncated_last:
                raise pending
    # A bad last line with skip_truncated_last: dropped.


def write_jsonl(records: Iterable[Dict[str, Any]], path: PathLike) -> Path:
    """Writes one JSON object per line (UTF-8, non-ASCII kept as is), creating the parent folder."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return p
