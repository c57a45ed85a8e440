"""The ``Transport`` on Redis Streams (Redis >= 6.2 or Valkey), through ``redis.asyncio``.

Entries are ``{"d": payload}``; the atomic steps (publish with backpressure and idempotency, dead
letters, drops, trimming, admission) are the Lua scripts of ``antiphon.transport.scripts``. Settings come
from the schema's ``TransportConfig`` (``antiphon.config.schema``), the one place their defaults live.

The password never appears in a repr, an error or a log line: URLs are shown with it masked
(``antiphon.transport.secrets``).
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union
from urllib.parse import urlsplit

import redis
import redis.asyncio

from antiphon.config.schema import TransportConfig
from antiphon.transport import scripts
from antiphon.transport.admission import admission_key, check_bounds, parse_state
from antiphon.transport.base import (
    DELETED_BEFORE_ACK, Backlog, BackpressureTimeout, DeadLetter, Message, Transport, TransportConfigError,
    TransportError, stream_name,
)
from antiphon.transport.secrets import redact_url, resolve_password

_POLL_S = 0.05  # backlog re-check interval while publish waits for room
_RETRY_S = 0.2  # reconnect interval while the server is unreachable
_RETRYABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
_SCHEMES = ("redis", "rediss", "unix")


def _check(name: str, value: Any, ok: bool, want: str) -> None:
    if not ok:
        raise TransportConfigError(f"transport.{name}: {value!r} is not {want}")


def _is_auth_error(e: Exception) -> bool:
    return isinstance(e, redis.exceptions.AuthenticationError) or any(s in str(e) for s in (
        "NOAUTH", "WRONGPASS", "invalid password", "must be called with the client already authenticated"))


def _str(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _entries(items) -> List[Message]:
    # A message without the payload field reads as b"", which protocol.decode refuses (-> dead letter).
    return [(_str(i), (f or {}).get(scripts.PAYLOAD_FIELD, b"")) for i, f in items]


def _after(after: str) -> str:
    return after if after == "-" else f"({after}"


def transport_config(cfg: Union[TransportConfig, Mapping[str, Any]]) -> TransportConfig:
    """The ``transport`` settings as the schema's dataclass: given as one, or built from a mapping (a dict,
    a DictConfig) through the schema -- its types and defaults; an unknown or mistyped key is refused,
    named."""
    from omegaconf.errors import OmegaConfBaseException

    from antiphon.config import to_dataclass

    try:
        return to_dataclass(cfg, TransportConfig)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", "") or "?"
        raise TransportConfigError(f"transport.{key}: {getattr(e, 'msg', e)}") from None


def from_config(cfg: Union[TransportConfig, Mapping[str, Any]]) -> "RedisTransport":
    """The transport for the ``transport`` config (see ``transport_config``), with its password resolved
    from the URL, ``password_env`` or ``password_file``. Synchronous code wraps it in
    ``antiphon.transport.BlockingTransport``."""
    c = transport_config(cfg)
    if not c.url:
        raise TransportConfigError("transport.url: unset -- start antiphon.transport.EmbeddedValkey and "
                                   "pass its .url, or point it at a Redis/Valkey server")
    password, source = resolve_password(c.url, c.password_env, c.password_file)
    return RedisTransport(c, password=password, password_source=source)


class RedisTransport(Transport):
    """The transport on Redis Streams. Build it with ``from_config``; ``password`` here is for callers
    that hold one already (it overrides ``password_env``/``password_file``, not a password in the URL)."""

    def __init__(self, cfg: TransportConfig, *, password: Optional[str] = None,
                 password_source: str = "the caller"):
        url = cfg.url
        if not url:
            raise TransportConfigError("transport.url: unset")
        self._url = redact_url(url)
        _check("url", self._url, urlsplit(url).scheme in _SCHEMES, "a redis://, rediss:// or unix:// URL")
        stream_name(cfg.namespace, "check")  # validates the namespace
        mu, pt, dl, dd, st = (cfg.max_unconsumed, cfg.publish_timeout_s, cfg.dead_letter_maxlen, cfg.dedupe_ttl_s,
                              cfg.socket_timeout_s)
        _check("max_unconsumed", mu, mu is None or (isinstance(mu, int) and mu >= 1), "None or an int >= 1")
        _check("publish_timeout_s", pt, isinstance(pt, (int, float)) and pt > 0, "a positive number of seconds")
        _check("dead_letter_maxlen", dl, isinstance(dl, int) and dl >= 1, "an int >= 1")
        _check("dedupe_ttl_s", dd, isinstance(dd, int) and dd >= 1, "an int >= 1")
        _check("socket_timeout_s", st, st is None or (isinstance(st, (int, float)) and st > 0),
               "None or a positive number of seconds")
        self.namespace = cfg.namespace
        self.max_unconsumed = mu
        self.publish_timeout_s = float(pt)
        self.dead_letter_maxlen = dl
        self.dedupe_ttl_s = dd
        self.socket_timeout_s = st
        self._password_source = password_source
        self._admission_key = admission_key(self.namespace)
        # RESP2 pinned: one reply shape for the parsing below, whatever redis-py's default becomes.
        # Commands other than publish rely on redis-py's own retries (reconnect with backoff).
        self._client = redis.asyncio.Redis.from_url(
            url, password=password, protocol=2, socket_timeout=st, socket_keepalive=True)
        self._publish = self._client.register_script(scripts.PUBLISH)
        self._backlog = self._client.register_script(scripts.BACKLOG)
        self._dead_letter = self._client.register_script(scripts.DEAD_LETTER_MOVE)
        self._trim = self._client.register_script(scripts.TRIM)
        self._drop = self._client.register_script(scripts.DROP)
        self._admit = self._client.register_script(scripts.ADMIT)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._url}, namespace={self.namespace!r}, max_unconsumed={self.max_unconsumed})"

    # -- connection ------------------------------------------------------------------------------
    def _error(self, e: Exception) -> TransportError:
        if _is_auth_error(e):
            return TransportError(f"{self._url} (transport.url) refused authentication; password from "
                                  f"{self._password_source}: {e}")
        return TransportError(f"cannot reach {self._url} (transport.url): {e}")

    async def ping(self) -> None:
        try:
            await self._client.ping()
        except redis.exceptions.RedisError as e:
            raise self._error(e) from None

    async def close(self) -> None:
        await self._client.aclose()

    # -- producing -------------------------------------------------------------------------------
    async def publish(self, stream: str, payload: bytes, *, id_hint: Optional[str] = None) -> str:
        keys = [stream] if id_hint is None else [stream, f"{stream}:published:{id_hint}"]
        args = [payload, self.max_unconsumed or 0, self.dedupe_ttl_s]
        deadline = time.monotonic() + self.publish_timeout_s
        while True:
            try:
                reply = await self._publish(keys=keys, args=args)
            except _RETRYABLE as e:
                # Server restarting (or a network blip): retry until the deadline. With an id_hint a
                # retry after an ambiguous failure cannot add the message twice.
                if time.monotonic() >= deadline:
                    raise TransportError(f"{self._url} unreachable for transport.publish_timeout_s="
                                         f"{self.publish_timeout_s}: {type(e).__name__}") from None
                await asyncio.sleep(_RETRY_S)
                continue
            if _str(reply[0]) == "ok":
                return _str(reply[1])
            backlog = Backlog(int(reply[1]), _str(reply[2]) or None)
            # Wait with the cheap backlog check, not by resending the (possibly large) payload.
            while backlog.count >= self.max_unconsumed:
                if time.monotonic() >= deadline:
                    raise self._timeout(stream, backlog)
                await asyncio.sleep(_POLL_S)
                backlog = await self.backlog(stream)

    def _timeout(self, stream: str, backlog: Backlog) -> BackpressureTimeout:
        who = f"group {backlog.group!r}" if backlog.group else "no consumer group (none created yet)"
        return BackpressureTimeout(
            f"publish to {stream!r} waited {self.publish_timeout_s:g} s (transport.publish_timeout_s): "
            f"{backlog.count} entries unacknowledged by {who}, the limit is transport.max_unconsumed="
            f"{self.max_unconsumed}. Is that consumer running?")

    # -- consuming -------------------------------------------------------------------------------
    async def ensure_group(self, stream: str, group: str) -> None:
        try:
            await self._client.xgroup_create(stream, group, id="0", mkstream=True)
        except redis.exceptions.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    @staticmethod
    def _read_reply(reply) -> List[Message]:
        if not reply:
            return []
        # [[stream, entries]] (RESP2); redis-py's newer "unified" reply shape is {stream: entries}.
        batches = reply.values() if isinstance(reply, dict) else [entries for _, entries in reply]
        return [m for entries in batches for m in _entries(entries)]

    async def read(self, stream: str, group: str, consumer: str, count: int, block_ms: int = 0) -> List[Message]:
        if self.socket_timeout_s is not None and block_ms >= self.socket_timeout_s * 1000:
            raise ValueError(f"block_ms={block_ms} must stay below transport.socket_timeout_s="
                             f"{self.socket_timeout_s} (in ms), or the socket times out first")
        return self._read_reply(await self._client.xreadgroup(group, consumer, {stream: ">"}, count=count,
                                                              block=block_ms or None))

    async def read_pending(self, stream: str, group: str, consumer: str, count: int,
                           after: str = "0") -> List[Message]:
        return self._read_reply(await self._client.xreadgroup(group, consumer, {stream: after}, count=count))

    async def ack(self, stream: str, group: str, ids: Sequence[str]) -> int:
        return int(await self._client.xack(stream, group, *ids)) if ids else 0

    async def claim_stale(self, stream: str, group: str, consumer: str, min_idle_ms: int,
                          count: int) -> List[Message]:
        claimed: List[Message] = []
        lost: List[str] = []
        cursor = "0-0"
        while len(claimed) < count:
            reply = await self._client.xautoclaim(stream, group, consumer, min_idle_ms, start_id=cursor,
                                                  count=count - len(claimed))
            cursor, items = _str(reply[0]), reply[1]
            lost += [_str(i) for i in (reply[2] if len(reply) > 2 else [])]
            # Redis 6.2 returns entries deleted from the stream as (id, None) and keeps them pending.
            lost += [_str(i) for i, f in items if f is None]
            claimed += _entries([(i, f) for i, f in items if f is not None])
            if cursor == "0-0":
                break
        if lost:
            p = self._client.pipeline(transaction=True)
            p.xack(stream, group, *lost)
            p.hincrby(self.counters_key, DELETED_BEFORE_ACK, len(lost))
            await p.execute()
        return claimed

    async def drop(self, stream: str, group: str, msg_id: str, reason: str) -> bool:
        return bool(await self._drop(keys=[stream, self.counters_key], args=[group, msg_id, reason]))

    async def dead_letter(self, stream: str, msg_id: str, payload: bytes, reason: str, *,
                          group: Optional[str] = None, key: Optional[str] = None) -> Optional[str]:
        reply = await self._dead_letter(
            keys=[stream, self.dead_stream, self.counters_key],
            args=[msg_id, payload, reason, key or reason, group or "", self.dead_letter_maxlen, time.time()])
        return _str(reply) if reply else None

    async def dead_letter_poison(self, stream: str, group: str, min_idle_ms: int, max_deliveries: int,
                                 count: int = 100) -> int:
        moved = 0
        for e in await self._client.xpending_range(stream, group, min="-", max="+", count=count, idle=min_idle_ms):
            if int(e["times_delivered"]) < max_deliveries:
                continue
            msg_id = _str(e["message_id"])
            entries = _entries(await self._client.xrange(stream, min=msg_id, max=msg_id))
            payload = entries[0][1] if entries else b""
            if await self.dead_letter(stream, msg_id, payload, f"poison: delivered {e['times_delivered']} times",
                                      group=group, key="poison"):
                moved += 1
        return moved

    # -- reading without consuming ---------------------------------------------------------------
    async def scan(self, stream: str, after: str = "-", count: int = 100) -> List[Message]:
        return _entries(await self._client.xrange(stream, min=_after(after), max="+", count=count))

    async def newest(self, stream: str, count: int) -> List[Message]:
        return _entries(await self._client.xrevrange(stream, count=count))

    async def dead_letters(self, after: str = "-", count: int = 100) -> List[DeadLetter]:
        out = []
        for i, f in await self._client.xrange(self.dead_stream, min=_after(after), max="+", count=count):
            s = {_str(k): v for k, v in f.items()}
            out.append(DeadLetter(id=_str(i), payload=s.get("d", b""), reason=_str(s.get("reason", b"")),
                                  source=_str(s.get("source", b"")), source_id=_str(s.get("source_id", b"")),
                                  group=_str(s.get("group", b"")), at=float(s.get("at", 0.0))))
        return out

    async def length(self, stream: str) -> int:
        return int(await self._client.xlen(stream))

    async def pending(self, stream: str, group: str) -> int:
        return int((await self._client.xpending(stream, group))["pending"])

    async def pending_by_consumer(self, stream: str, group: str) -> Dict[str, int]:
        return {_str(c["name"]): int(c["pending"]) for c in await self._client.xinfo_consumers(stream, group)}

    async def backlog(self, stream: str, group: Optional[str] = None) -> Backlog:
        # The XRANGE fallback (see scripts.BACKLOG) only needs to count up to the bound that matters.
        reply = await self._backlog(keys=[stream], args=[self.max_unconsumed or 2**31 - 1, group or ""])
        return Backlog(int(reply[0]), _str(reply[1]) or None)

    async def counters(self) -> Dict[str, int]:
        return {_str(k): int(v) for k, v in (await self._client.hgetall(self.counters_key)).items()}

    # -- housekeeping ----------------------------------------------------------------------------
    async def trim_acknowledged(self, stream: str) -> int:
        return int(await self._trim(keys=[stream]))

    async def delete(self, stream: str, ids: Sequence[str]) -> int:
        return int(await self._client.xdel(stream, *ids)) if ids else 0

    # -- admission -------------------------------------------------------------------------------
    async def try_admit(self, max_staleness: int, batch_size: int) -> Tuple[Optional[int], int]:
        check_bounds(max_staleness, batch_size)
        ticket, version = await self._admit(keys=[self._admission_key], args=[max_staleness, batch_size])
        return (None if int(ticket) < 0 else int(ticket)), int(version)

    async def release_admission(self, n: int = 1) -> None:
        if n:
            await self._client.hincrby(self._admission_key, "admitted", -int(n))

    async def set_admission_version(self, version: int) -> None:
        await self._client.hset(self._admission_key, "version", int(version))

    async def reset_admission(self, version: int, admitted: int, ticket: int = 0) -> None:
        await self._client.hset(self._admission_key, mapping={"version": int(version), "admitted": int(admitted),
                                                              "ticket": int(ticket)})

    async def admission_state(self) -> Dict[str, int]:
        return parse_state(await self._client.hgetall(self._admission_key))
