"""The stream transport every part talks through: the interface, stream naming, errors.

A stream entry carries one payload (a ``antiphon.protocol`` message). Consumers read through consumer
groups, so each entry goes to one consumer of a group and stays *pending* until acknowledged; entries a
dead consumer held are taken over with ``claim_stale``. A message that cannot be decoded is moved to the
run's dead-letter stream, counted and acknowledged in one transaction, so it is never retried forever
and never silently lost.

Backlog (what backpressure bounds): for each consumer group of a stream, the entries it has not
acknowledged yet = pending (delivered, not acked) + lag (not delivered yet). A stream's backlog is that of
its slowest group. With no group yet it is the stream's length: groups are created at id 0 (see
``ensure_group``), so a group created later will have to read every entry.
"""
from __future__ import annotations

import abc
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from antiphon.protocol import ProtocolError

# Fields of the counters hash (``counters_key``); dead letters add one ``dead_letter:<key>`` per reason.
DEAD_LETTER = "dead_letter"
# Entries that were delivered but deleted from the stream (trimmed, XDEL) before anyone acknowledged them.
DELETED_BEFORE_ACK = "deleted_before_ack"

_NAMESPACE = re.compile(r"[A-Za-z0-9_.\-]+")

Message = Tuple[str, bytes]  # (stream entry id, payload)


class TransportError(RuntimeError):
    """The stream server refused, failed or could not be reached."""


class TransportConfigError(TransportError, ValueError):
    """A transport setting is wrong; the message names the config field and its value."""


class BackpressureTimeout(TransportError):
    """``publish`` waited ``publish_timeout_s`` for consumers to drain the stream's backlog."""


def stream_name(namespace: str, kind: str) -> str:
    """``antiphon:<namespace>:<kind>``, e.g. ``antiphon:tiny_cpu:trajectories`` / ``:scored`` / ``:dead``."""
    if not _NAMESPACE.fullmatch(namespace or ""):
        raise TransportConfigError(
            f"transport.namespace: {namespace!r} must be non-empty letters, digits, '_', '.', '-'")
    return f"antiphon:{namespace}:{kind}"


def counters_key(namespace: str) -> str:
    """The hash of the run's transport counters (dead letters by reason, entries lost before ack)."""
    return stream_name(namespace, "counters")


@dataclass(frozen=True)
class Backlog:
    count: int  # entries the slowest group has not acknowledged (stream length if there is no group)
    group: Optional[str]  # that group; None when the stream has no group yet


@dataclass(frozen=True)
class Rejected:
    """Why ``decode_fn`` refused a message: ``key`` is a short, bounded label for counting."""

    reason: str
    key: str

    @classmethod
    def of(cls, exc: Exception) -> "Rejected":
        if isinstance(exc, ProtocolError):
            return cls(str(exc), exc.field)  # str is already "field: why"
        return cls(f"{type(exc).__name__}: {exc}", type(exc).__name__)


class _Names:
    namespace: str

    def stream(self, kind: str) -> str:
        return stream_name(self.namespace, kind)

    @property
    def dead_stream(self) -> str:
        return stream_name(self.namespace, "dead")

    @property
    def counters_key(self) -> str:
        return counters_key(self.namespace)


class Transport(_Names, abc.ABC):
    """Blocking transport (the reward service, the learner, tests)."""

    @abc.abstractmethod
    def publish(self, stream: str, payload: bytes, *, id_hint: Optional[str] = None) -> str:
        """Appends ``payload``; returns its entry id. Waits while the stream's backlog is at the limit
        (raises ``BackpressureTimeout`` after the configured timeout). ``id_hint``: an idempotency key
        (e.g. the trajectory id); publishing the same key again within the dedupe window appends
        nothing and returns the first entry's id -- so a consumer that crashed after publishing its
        output but before acknowledging its input can safely redo the work."""

    @abc.abstractmethod
    def ensure_group(self, stream: str, group: str) -> None:
        """Creates the group (and the stream) if missing. New groups start at the beginning of the stream."""

    @abc.abstractmethod
    def read(self, stream: str, group: str, consumer: str, count: int, block_ms: int = 0) -> List[Message]:
        """Up to ``count`` entries never delivered to this group, now pending for ``consumer``.
        ``block_ms`` > 0 waits up to that long for the first one; 0 returns at once."""

    @abc.abstractmethod
    def ack(self, stream: str, group: str, ids: Sequence[str]) -> int:
        """Acknowledges entries; returns how many were pending."""

    @abc.abstractmethod
    def scan(self, stream: str, after: str = "-", count: int = 100) -> List[Message]:
        """Entries after ``after`` without consuming them (inspection, dumps)."""

    @abc.abstractmethod
    def claim_stale(self, stream: str, group: str, consumer: str, min_idle_ms: int, count: int) -> List[Message]:
        """Takes over up to ``count`` entries pending for at least ``min_idle_ms`` (their consumer is
        presumed dead). Entries deleted from the stream meanwhile are dropped and counted."""

    @abc.abstractmethod
    def dead_letter(self, stream: str, msg_id: str, payload: bytes, reason: str, *,
                    group: Optional[str] = None, key: Optional[str] = None) -> Optional[str]:
        """Moves a message to the dead-letter stream with its reason and origin, counts it (total and per
        ``key``, default ``reason``) and, given ``group``, acknowledges it there -- all atomically. Returns
        the dead-letter entry id, or None if ``group`` no longer had the entry pending (another consumer
        that claimed it already acknowledged or dead-lettered it): nothing is then added or counted."""

    @abc.abstractmethod
    def pending(self, stream: str, group: str) -> int:
        """Entries delivered to the group and not acknowledged."""

    @abc.abstractmethod
    def backlog(self, stream: str, group: Optional[str] = None) -> Backlog:
        """The stream's backlog (see the module doc); given ``group``, that group's alone."""

    @abc.abstractmethod
    def trim_acknowledged(self, stream: str) -> int:
        """Deletes the entries every group has acknowledged (none if the stream has no group); returns
        how many. Without it a stream keeps every payload forever."""

    @abc.abstractmethod
    def counters(self) -> Dict[str, int]:
        """The run's transport counters."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def consume_validated(self, stream: str, group: str, consumer: str, decode_fn: Callable[[bytes], Any],
                          count: int, block_ms: int = 0) -> List[Tuple[str, Any]]:
        """``read`` + ``decode_fn``; a message ``decode_fn`` raises on is dead-lettered (and acknowledged).
        Any exception counts as a rejection -- one bad message must not stop the consumer; its reason
        (type and text) is kept with it. Returns the good ``(id, decoded)`` pairs, still pending."""
        return self.validate(stream, group, self.read(stream, group, consumer, count, block_ms), decode_fn)

    def validate(self, stream: str, group: str, messages: List[Message],
                 decode_fn: Callable[[bytes], Any]) -> List[Tuple[str, Any]]:
        """``decode_fn`` over messages already delivered (read or claimed); rejects are dead-lettered."""
        good = []
        for msg_id, payload in messages:
            try:
                good.append((msg_id, decode_fn(payload)))
            except Exception as e:
                r = Rejected.of(e)
                self.dead_letter(stream, msg_id, payload, r.reason, group=group, key=r.key)
        return good

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class AsyncTransport(_Names, abc.ABC):
    """The same operations as ``Transport``, as coroutines (rollout workers run asyncio)."""

    @abc.abstractmethod
    async def publish(self, stream: str, payload: bytes, *, id_hint: Optional[str] = None) -> str: ...

    @abc.abstractmethod
    async def ensure_group(self, stream: str, group: str) -> None: ...

    @abc.abstractmethod
    async def read(self, stream: str, group: str, consumer: str, count: int, block_ms: int = 0) -> List[Message]: ...

    @abc.abstractmethod
    async def ack(self, stream: str, group: str, ids: Sequence[str]) -> int: ...

    @abc.abstractmethod
    async def claim_stale(self, stream: str, group: str, consumer: str, min_idle_ms: int,
                          count: int) -> List[Message]: ...

    @abc.abstractmethod
    async def dead_letter(self, stream: str, msg_id: str, payload: bytes, reason: str, *,
                          group: Optional[str] = None, key: Optional[str] = None) -> Optional[str]: ...

    @abc.abstractmethod
    async def pending(self, stream: str, group: str) -> int: ...

    @abc.abstractmethod
    async def backlog(self, stream: str, group: Optional[str] = None) -> Backlog: ...

    @abc.abstractmethod
    async def trim_acknowledged(self, stream: str) -> int: ...

    @abc.abstractmethod
    async def counters(self) -> Dict[str, int]: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    async def consume_validated(self, stream: str, group: str, consumer: str, decode_fn: Callable[[bytes], Any],
                                count: int, block_ms: int = 0) -> List[Tuple[str, Any]]:
        """See ``Transport.consume_validated``."""
        return await self.validate(stream, group, await self.read(stream, group, consumer, count, block_ms), decode_fn)

    async def validate(self, stream: str, group: str, messages: List[Message],
                       decode_fn: Callable[[bytes], Any]) -> List[Tuple[str, Any]]:
        """``decode_fn`` over messages already delivered (read or claimed); rejects are dead-lettered."""
        good = []
        for msg_id, payload in messages:
            try:
                good.append((msg_id, decode_fn(payload)))
            except Exception as e:
                r = Rejected.of(e)
                await self.dead_letter(stream, msg_id, payload, r.reason, group=group, key=r.key)
        return good

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()
