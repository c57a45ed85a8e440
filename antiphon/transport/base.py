"""The stream transport every part talks through: the interface, stream naming, errors.

One interface, asyncio throughout: rollout workers and the reward service await it directly; the
learner, the launcher and tests call it through ``BlockingTransport`` (``antiphon.transport.blocking``),
which runs the same coroutines on a private event loop.

A stream entry carries one payload (a ``antiphon.protocol`` message). Consumers read through consumer
groups, so each entry goes to one consumer of a group and stays *pending* until acknowledged; entries a
dead consumer held are taken over with ``claim_stale``. A message that cannot be decoded is moved to the
run's dead-letter stream, counted and acknowledged in one transaction, so it is never retried forever
and never silently lost.

Backlog (what backpressure bounds): for each consumer group of a stream, the entries it has not
acknowledged yet = pending (delivered, not acked) + lag (not delivered yet). A stream's backlog is that of
its slowest group. With no group yet it is the stream's length: groups are created at id 0 (see
``ensure_group``), so a group created later will have to read every entry.

The run's admission state (the staleness bound every rollout worker obeys, ``antiphon.transport.admission``)
lives on the same server, so its operations are part of the interface too.
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
    if not isinstance(namespace, str) or not _NAMESPACE.fullmatch(namespace):
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
class DeadLetter:
    """An entry of the dead-letter stream: the message as it arrived and why it was refused."""

    id: str  # its id in the dead-letter stream
    payload: bytes
    reason: str
    source: str  # the stream it came from
    source_id: str  # its id there
    group: str  # the group that refused it ('' when dead-lettered outside a group)
    at: float  # unix time


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


class Transport(abc.ABC):
    """The transport interface (asyncio). Await ``ping()`` once at start-up for a clear error on a wrong
    URL or password."""

    namespace: str
    # Settings callers may read (see TransportConfig in antiphon.config.schema).
    max_unconsumed: Optional[int]
    publish_timeout_s: float
    socket_timeout_s: Optional[float]

    # -- naming ----------------------------------------------------------------------------------
    def stream(self, kind: str) -> str:
        return stream_name(self.namespace, kind)

    @property
    def dead_stream(self) -> str:
        return stream_name(self.namespace, "dead")

    @property
    def counters_key(self) -> str:
        return counters_key(self.namespace)

    # -- connection ------------------------------------------------------------------------------
    @abc.abstractmethod
    async def ping(self) -> None:
        """Raises ``TransportError`` naming the (redacted) URL if the server cannot be reached or refuses
        the password."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()

    # -- producing -------------------------------------------------------------------------------
    @abc.abstractmethod
    async def publish(self, stream: str, payload: bytes, *, id_hint: Optional[str] = None) -> str:
        """Appends ``payload``; returns its entry id. Waits while the stream's backlog is at the limit
        (raises ``BackpressureTimeout`` after the configured timeout) and while the server is unreachable
        (a restart; ``TransportError`` after the same timeout). ``id_hint``: an idempotency key (e.g. the
        trajectory id); publishing the same key again within the dedupe window appends nothing and
        returns the first entry's id -- so a consumer that crashed after publishing its output but
        before acknowledging its input can safely redo the work, and a retry cannot append twice."""

    # -- consuming -------------------------------------------------------------------------------
    @abc.abstractmethod
    async def ensure_group(self, stream: str, group: str) -> None:
        """Creates the group (and the stream) if missing. New groups start at the beginning of the stream."""

    @abc.abstractmethod
    async def read(self, stream: str, group: str, consumer: str, count: int, block_ms: int = 0) -> List[Message]:
        """Up to ``count`` entries never delivered to this group, now pending for ``consumer``.
        ``block_ms`` > 0 waits up to that long for the first one; 0 returns at once."""

    @abc.abstractmethod
    async def read_pending(self, stream: str, group: str, consumer: str, count: int,
                           after: str = "0") -> List[Message]:
        """Entries already delivered to ``consumer`` and not acknowledged, oldest first, after entry id
        ``after``: what a restarted consumer with a stable name picks up again."""

    @abc.abstractmethod
    async def ack(self, stream: str, group: str, ids: Sequence[str]) -> int:
        """Acknowledges entries; returns how many were pending."""

    @abc.abstractmethod
    async def claim_stale(self, stream: str, group: str, consumer: str, min_idle_ms: int,
                          count: int) -> List[Message]:
        """Takes over up to ``count`` entries pending for at least ``min_idle_ms`` (their consumer is
        presumed dead). Entries deleted from the stream meanwhile are dropped and counted."""

    @abc.abstractmethod
    async def drop(self, stream: str, group: str, msg_id: str, reason: str) -> bool:
        """Acknowledges a message deliberately not passed on, counted as ``dropped:<reason>`` (once: False
        when the group no longer had it pending)."""

    @abc.abstractmethod
    async def dead_letter(self, stream: str, msg_id: str, payload: bytes, reason: str, *,
                          group: Optional[str] = None, key: Optional[str] = None) -> Optional[str]:
        """Moves a message to the dead-letter stream with its reason and origin, counts it (total and per
        ``key``, default ``reason``) and, given ``group``, acknowledges it there -- all atomically. Returns
        the dead-letter entry id, or None if ``group`` no longer had the entry pending (another consumer
        that claimed it already acknowledged or dead-lettered it): nothing is then added or counted."""

    @abc.abstractmethod
    async def dead_letter_poison(self, stream: str, group: str, min_idle_ms: int, max_deliveries: int,
                                 count: int = 100) -> int:
        """Dead-letters pending entries idle ``min_idle_ms`` that were delivered ``max_deliveries`` times
        already (key ``poison``): a message that kills every consumer it reaches must not be reclaimed
        forever. Returns how many."""

    async def consume_validated(self, stream: str, group: str, consumer: str, decode_fn: Callable[[bytes], Any],
                                count: int, block_ms: int = 0) -> List[Tuple[str, Any]]:
        """``read`` + ``decode_fn``; a message ``decode_fn`` raises on is dead-lettered (and acknowledged).
        Any exception counts as a rejection -- one bad message must not stop the consumer; its reason
        (type and text) is kept with it. Returns the good ``(id, decoded)`` pairs, still pending."""
        return await self.validate(stream, group, await self.read(stream, group, consumer, count, block_ms),
                                   decode_fn)

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

    # -- reading without consuming (inspection, dumps) -------------------------------------------
    @abc.abstractmethod
    async def scan(self, stream: str, after: str = "-", count: int = 100) -> List[Message]:
        """Entries after ``after`` (exclusive; "-" from the start), oldest first, without consuming them."""

    @abc.abstractmethod
    async def newest(self, stream: str, count: int) -> List[Message]:
        """The newest ``count`` entries, newest first, without consuming them."""

    async def newest_decoded(self, stream: str, count: int, decode_fn: Callable[[bytes], Any]) -> List[Any]:
        """``decode_fn`` over ``newest``; entries it refuses are skipped (left as they are: nothing is
        consumed or dead-lettered by looking)."""
        out = []
        for _, payload in await self.newest(stream, count):
            try:
                out.append(decode_fn(payload))
            except Exception:
                continue
        return out

    @abc.abstractmethod
    async def dead_letters(self, after: str = "-", count: int = 100) -> List[DeadLetter]:
        """Entries of the dead-letter stream after ``after`` (exclusive), oldest first."""

    @abc.abstractmethod
    async def length(self, stream: str) -> int:
        """Entries in the stream (acknowledged or not; 0 if it does not exist)."""

    @abc.abstractmethod
    async def pending(self, stream: str, group: str) -> int:
        """Entries delivered to the group and not acknowledged."""

    @abc.abstractmethod
    async def pending_by_consumer(self, stream: str, group: str) -> Dict[str, int]:
        """Each consumer of the group and how many entries it holds unacknowledged."""

    @abc.abstractmethod
    async def backlog(self, stream: str, group: Optional[str] = None) -> Backlog:
        """The stream's backlog (see the module doc); given ``group``, that group's alone."""

    @abc.abstractmethod
    async def counters(self) -> Dict[str, int]:
        """The run's transport counters (dead letters, drops, entries lost before ack)."""

    # -- housekeeping ----------------------------------------------------------------------------
    @abc.abstractmethod
    async def trim_acknowledged(self, stream: str) -> int:
        """Deletes the entries every group has acknowledged (none if the stream has no group); returns
        how many. Without it a stream keeps every payload forever."""

    @abc.abstractmethod
    async def delete(self, stream: str, ids: Sequence[str]) -> int:
        """Deletes entries whatever their state (an operator's tool; tests use it to inject the loss of
        an entry still pending). Returns how many existed."""

    # -- admission (antiphon.transport.admission) ------------------------------------------------
    @abc.abstractmethod
    async def try_admit(self, max_staleness: int, batch_size: int) -> Tuple[Optional[int], int]:
        """``(ticket, version)``: a slot for one dialogue, or ticket None when the bound is reached."""

    @abc.abstractmethod
    async def release_admission(self, n: int = 1) -> None:
        """Gives back slots whose dialogues will never be trained (ended empty, dropped as stale)."""

    @abc.abstractmethod
    async def set_admission_version(self, version: int) -> None:
        """The learner's published weight version: each version opens ``batch_size`` more slots."""

    @abc.abstractmethod
    async def reset_admission(self, version: int, admitted: int, ticket: int = 0) -> None:
        """A fresh run (or a resumed one): nothing in flight beyond what ``admitted`` says."""

    @abc.abstractmethod
    async def admission_state(self) -> Dict[str, int]:
        """``{"admitted", "ticket", "version"}``."""
