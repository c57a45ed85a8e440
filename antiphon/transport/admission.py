"""Admission control: one staleness bound that every rollout worker on every node obeys.

A worker may start a dialogue only while the number admitted stays within
``(max_staleness + learner_version + 1) * batch_size``. The learner consumes ``batch_size`` trajectories
per version, so a dialogue admitted now is trained at most ``max_staleness`` versions after the one it
started under (``max_staleness=0``: strictly on-policy). The counters live in one hash on the stream
server and the admit step is one Lua script (``antiphon.transport.scripts.ADMIT``), so concurrent workers
can never overshoot the bound. The operations are the transport's (``Transport.try_admit`` and
neighbours).

Fields of ``antiphon:<ns>:admission``: ``admitted`` (in flight or delivered, minus released),
``ticket`` (monotonic: consecutive tickets form the groups of the group baseline), ``version``
(the learner's published weight version).
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

from antiphon.transport.base import stream_name

FIELDS = ("admitted", "ticket", "version")


def admission_key(namespace: str) -> str:
    return stream_name(namespace, "admission")


def check_bounds(max_staleness: int, batch_size: int) -> None:
    if not isinstance(max_staleness, int) or max_staleness < 0:
        raise ValueError(f"learner.max_staleness: {max_staleness!r} must be an int >= 0")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"learner.batch_size: {batch_size!r} must be an int >= 1")


def parse_state(reply: Optional[Mapping[Any, Any]]) -> Dict[str, int]:
    out = dict.fromkeys(FIELDS, 0)
    for k, v in (reply or {}).items():
        out[k.decode() if isinstance(k, bytes) else k] = int(v)
    return out
