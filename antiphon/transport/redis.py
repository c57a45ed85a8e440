"""``Transport`` on Redis Streams (Redis >= 6.2 or Valkey), blocking and asyncio flavours.

Entries are ``{"d": payload}``. Publishing is one Lua script: idempotency check, backpressure check and
XADD happen atomically, so the backlog bound holds exactly however many workers publish at once.
Dead-lettering is one script too: it acknowledges first and does nothing if the entry was no longer
pending (another consumer that claimed it already dealt with it), so a message is dead-lettered and
counted once.

The password never appears in a repr, an error or a log line: URLs are shown with it masked.
"""
from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
import redis.asyncio

from antiphon.transport.base import (
    DEAD_LETTER, DELETED_BEFORE_ACK, AsyncTransport, Backlog, BackpressureTimeout, Message, Transport,
    TransportConfigError, TransportError, stream_name,
)

# Defaults of the settings ``from_config`` reads beyond TransportConfig's url/password_env/password_file/namespace.
DEFAULTS: Dict[str, Any] = {
    # Backlog bound (see antiphon.transport.base); None: unbounded. A trajectory with audio can weigh MBs.
    "max_unconsumed": 1024,
    "publish_timeout_s": 600.0,  # how long publish waits for room before BackpressureTimeout
    "dead_letter_maxlen": 10_000,  # the dead-letter stream keeps about this many (the counters stay exact)
    "dedupe_ttl_s": 86_400,  # how long a publish id_hint is remembered
    # Per-command socket timeout; read(block_ms=...) must stay below it. None: wait forever on a dead peer.
    "socket_timeout_s": 60.0,
}
_POLL_S = 0.05  # backlog re-check interval while publish waits for room
_RETRY_S = 0.2  # reconnect interval while the server is unreachable
_RETRYABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
_SCHEMES = ("redis", "rediss", "unix")

# backlog(stream, limit, only_group) -> count, group name ('' for none). XINFO GROUPS gives each group's
# pending and lag; lag is nil when the server cannot compute it (entries deleted after the group's
# position, or Redis 6.2), and then the undelivered entries are counted with XRANGE, at most `limit`.
_LUA_BACKLOG = """
local function backlog(stream, limit, only)
  if redis.call('EXISTS', stream) == 0 then return 0, '' end
  local worst, worst_name = -1, ''
  for _, flat in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    local g = {}
    for i = 1, #flat, 2 do g[flat[i]] = flat[i + 1] end
    if only == '' or g['name'] == only then
      local lag = g['lag']
      if not lag then
        lag = #redis.call('XRANGE', stream, '(' .. g['last-delivered-id'], '+', 'COUNT', limit)
      end
      if g['pending'] + lag > worst then worst, worst_name = g['pending'] + lag, g['name'] end
    end
  end
  if worst < 0 then return redis.call('XLEN', stream), '' end
  return worst, worst_name
end
"""
# KEYS: stream [, idempotency key]. ARGV: payload, max_unconsumed (0: unbounded), dedupe ttl.
_LUA_PUBLISH = _LUA_BACKLOG + """
if KEYS[2] then
  local first = redis.call('GET', KEYS[2])
  if first then return {'ok', first} end
end
local max = tonumber(ARGV[2])
if max > 0 then
  local n, name = backlog(KEYS[1], max, '')
  if n >= max then return {'full', n, name} end
end
local id = redis.call('XADD', KEYS[1], '*', 'd', ARGV[1])
if KEYS[2] then redis.call('SET', KEYS[2], id, 'EX', ARGV[3]) end
return {'ok', id}
"""
# KEYS: stream, counters. ARGV: group, id, reason. Acknowledge, and count only if it was still pending,
# so a drop redelivered to another replica is counted once.
_LUA_DROP = """
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[2], 'dropped', 1)
redis.call('HINCRBY', KEYS[2], 'dropped:' .. ARGV[3], 1)
return 1
"""
_LUA_BACKLOG_ONLY = _LUA_BACKLOG + """
local n, name = backlog(KEYS[1], tonumber(ARGV[1]), ARGV[2])
return {n, name}
"""
# KEYS: stream, dead stream, counters. ARGV: id, payload, reason, key, group ('' none), maxlen, unix time.
_LUA_DEAD_LETTER = """
if ARGV[5] ~= '' and redis.call('XACK', KEYS[1], ARGV[5], ARGV[1]) == 0 then return false end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[6], '*', 'd', ARGV[2], 'reason', ARGV[3],
                      'source', KEYS[1], 'source_id', ARGV[1], 'group', ARGV[5], 'at', ARGV[7])
redis.call('HINCRBY', KEYS[3], '%(total)s', 1)
redis.call('HINCRBY', KEYS[3], '%(total)s:' .. ARGV[4], 1)
return id
""" % {"total": DEAD_LETTER}
# KEYS: stream. Trims below the oldest entry some group has not acknowledged: a group's oldest pending
# entry, or (nothing pending) the one after its last delivered. Ids are "ms-seq"; both parts are exact
# in Lua's doubles (ms < 2^53).
_LUA_TRIM = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local best_ms, best_seq
for _, flat in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local g = {}
  for i = 1, #flat, 2 do g[flat[i]] = flat[i + 1] end
  local id, step = g['last-delivered-id'], 1
  if g['pending'] > 0 then id, step = redis.call('XPENDING', KEYS[1], g['name'])[2], 0 end
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  ms, seq = tonumber(ms), tonumber(seq) + step
  if not best_ms or ms < best_ms or (ms == best_ms and seq < best_seq) then best_ms, best_seq = ms, seq end
end
if not best_ms then return 0 end
return redis.call('XTRIM', KEYS[1], 'MINID', string.format('%.0f-%.0f', best_ms, best_seq))
"""


def redact_url(url: str) -> str:
    """The URL with any password (userinfo or ``?password=``) replaced by ``***``."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = f"{parts.username or ''}:***@{netloc.rsplit('@', 1)[1]}"
    query = urlencode([(k, "***" if k == "password" else v) for k, v in parse_qsl(parts.query)], safe="*/")
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _url_password(url: str) -> Optional[str]:
    parts = urlsplit(url)
    return parts.password or dict(parse_qsl(parts.query)).get("password")


def resolve_password(url: str, password_env: Optional[str], password_file: Optional[str]) -> Tuple[Optional[str], str]:
    """(password, where it came from): the URL's, else ``$password_env`` if set and non-empty, else the
    contents of ``password_file`` (trailing newline stripped), else None."""
    if _url_password(url):
        return None, "the password in transport.url"  # redis-py reads it from the URL itself
    if password_env and os.environ.get(password_env):
        return os.environ[password_env], f"environment variable {password_env} (transport.password_env)"
    if password_file:
        path = Path(password_file).expanduser()
        try:
            secret = path.read_text(encoding="utf-8").rstrip("\r\n")
        except FileNotFoundError:
            raise TransportConfigError(f"transport.password_file: {password_file!r} does not exist") from None
        except OSError as e:
            raise TransportConfigError(
                f"transport.password_file: cannot read {password_file!r} ({e.strerror})") from None
        if not secret:
            raise TransportConfigError(f"transport.password_file: {password_file!r} is empty")
        return secret, f"file {password_file!r} (transport.password_file)"
    return None, (f"none: transport.url has no password, {password_env or 'transport.password_env'} is unset, "
                  "transport.password_file is unset")


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
    return [(_str(i), (f or {}).get(b"d", b"")) for i, f in items]


class _RedisCommon:
    """Settings, naming and reply parsing shared by the blocking and the asyncio transport."""

    _redis_module: Any  # redis or redis.asyncio

    def __init__(self, url: str, namespace: str, *, password: Optional[str] = None,
                 password_source: str = "the caller", max_unconsumed: Optional[int] = DEFAULTS["max_unconsumed"],
                 publish_timeout_s: float = DEFAULTS["publish_timeout_s"],
                 dead_letter_maxlen: int = DEFAULTS["dead_letter_maxlen"], dedupe_ttl_s: int = DEFAULTS["dedupe_ttl_s"],
                 socket_timeout_s: Optional[float] = DEFAULTS["socket_timeout_s"]):
        self._url = redact_url(url)
        scheme = urlsplit(url).scheme
        _check("url", self._url, scheme in _SCHEMES, "a redis://, rediss:// or unix:// URL")
        stream_name(namespace, "check")  # validates the namespace
        _check("max_unconsumed", max_unconsumed,
               max_unconsumed is None or (isinstance(max_unconsumed, int) and max_unconsumed >= 1),
               "None or an int >= 1")
        _check("publish_timeout_s", publish_timeout_s,
               isinstance(publish_timeout_s, (int, float)) and publish_timeout_s > 0, "a positive number of seconds")
        _check("dead_letter_maxlen", dead_letter_maxlen,
               isinstance(dead_letter_maxlen, int) and dead_letter_maxlen >= 1, "an int >= 1")
        _check("dedupe_ttl_s", dedupe_ttl_s, isinstance(dedupe_ttl_s, int) and dedupe_ttl_s >= 1, "an int >= 1")
        _check("socket_timeout_s", socket_timeout_s,
               socket_timeout_s is None or (isinstance(socket_timeout_s, (int, float)) and socket_timeout_s > 0),
               "None or a positive number of seconds")
        self.namespace = namespace
        self.max_unconsumed = max_unconsumed
        self.publish_timeout_s = float(publish_timeout_s)
        self.dead_letter_maxlen = dead_letter_maxlen
        self.dedupe_ttl_s = dedupe_ttl_s
        self.socket_timeout_s = socket_timeout_s
        self._password_source = password_source
        # RESP2 pinned: one reply shape for the parsing below, whatever redis-py's default becomes.
        self.client = self._redis_module.Redis.from_url(
            url, password=password, protocol=2, socket_timeout=socket_timeout_s, socket_keepalive=True)
        self._publish = self.client.register_script(_LUA_PUBLISH)
        self._backlog = self.client.register_script(_LUA_BACKLOG_ONLY)
        self._dead_letter = self.client.register_script(_LUA_DEAD_LETTER)
        self._trim = self.client.register_script(_LUA_TRIM)
        self._drop = self.client.register_script(_LUA_DROP)

    @classmethod
    def from_config(cls, cfg: Any):
        """From the ``transport`` config group (a dict or DictConfig); missing settings take DEFAULTS."""
        url = cfg.get("url")
        if not url:
            raise TransportConfigError("transport.url: unset -- start antiphon.transport.EmbeddedValkey and "
                                       "pass its .url, or point it at a Redis/Valkey server")
        password, source = resolve_password(url, cfg.get("password_env"), cfg.get("password_file"))
        return cls(url, cfg.get("namespace"), password=password, password_source=source,
                   **{k: cfg.get(k, default) for k, default in DEFAULTS.items()})

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._url}, namespace={self.namespace!r}, max_unconsumed={self.max_unconsumed})"

    def _error(self, e: Exception) -> TransportError:
        if _is_auth_error(e):
            return TransportError(f"{self._url} (transport.url) refused authentication; password from "
                                  f"{self._password_source}: {e}")
        return TransportError(f"cannot reach {self._url} (transport.url): {e}")

    def _check_block(self, block_ms: int) -> None:
        if self.socket_timeout_s is not None and block_ms >= self.socket_timeout_s * 1000:
            raise ValueError(f"block_ms={block_ms} must stay below transport.socket_timeout_s="
                             f"{self.socket_timeout_s} (in ms), or the socket times out first")

    def _publish_call(self, stream: str, payload: bytes, id_hint: Optional[str]):
        keys = [stream] if id_hint is None else [stream, f"{stream}:published:{id_hint}"]
        return dict(keys=keys, args=[payload, self.max_unconsumed or 0, self.dedupe_ttl_s])

    def _backlog_call(self, stream: str, group: Optional[str]):
        # The XRANGE fallback (see _LUA_BACKLOG) only needs to count up to the bound that matters.
        return dict(keys=[stream], args=[self.max_unconsumed or 2**31 - 1, group or ""])

    def _dead_letter_call(self, stream, msg_id, payload, reason, group, key):
        return dict(keys=[stream, self.dead_stream, self.counters_key],
                    args=[msg_id, payload, reason, key or reason, group or "", self.dead_letter_maxlen, time.time()])

    def _read_args(self, stream, group, consumer, count, block_ms):
        self._check_block(block_ms)
        return (group, consumer, {stream: ">"}), dict(count=count, block=block_ms or None)

    @staticmethod
    def _read_reply(reply) -> List[Message]:
        if not reply:
            return []
        # [[stream, entries]] (RESP2); redis-py's newer "unified" reply shape is {stream: entries}.
        batches = reply.values() if isinstance(reply, dict) else [entries for _, entries in reply]
        return [m for entries in batches for m in _entries(entries)]

    @staticmethod
    def _backlog_reply(reply) -> Backlog:
        return Backlog(int(reply[0]), _str(reply[1]) or None)

    def _retry_or_raise(self, e: Exception, deadline: float) -> None:
        if time.monotonic() >= deadline:
            raise TransportError(f"{self._url} unreachable for transport.publish_timeout_s="
                                 f"{self.publish_timeout_s}: {type(e).__name__}") from None

    def _timeout(self, stream: str, backlog: Backlog) -> BackpressureTimeout:
        who = f"group {backlog.group!r}" if backlog.group else "no consumer group (none created yet)"
        return BackpressureTimeout(
            f"publish to {stream!r} waited {self.publish_timeout_s:g} s (transport.publish_timeout_s): "
            f"{backlog.count} entries unacknowledged by {who}, the limit is transport.max_unconsumed="
            f"{self.max_unconsumed}. Is that consumer running?")

    def _claim_step(self, reply, claimed: List[Message], lost: List[str]) -> str:
        cursor, items = reply[0], reply[1]
        lost += [_str(i) for i in (reply[2] if len(reply) > 2 else [])]
        # Redis 6.2 returns entries deleted from the stream as (id, None) and keeps them pending.
        lost += [_str(i) for i, f in items if f is None]
        claimed += _entries([(i, f) for i, f in items if f is not None])
        return _str(cursor)

    @staticmethod
    def _counters_reply(reply) -> Dict[str, int]:
        return {_str(k): int(v) for k, v in reply.items()}


class RedisTransport(_RedisCommon, Transport):
    """Blocking transport. Call ``ping()`` once at start-up for a clear error on a wrong URL or password."""

    _redis_module = redis

    def ping(self) -> None:
        try:
            self.client.ping()
        except redis.exceptions.RedisError as e:
            raise self._error(e) from None

    def publish(self, stream: str, payload: bytes, *, id_hint: Optional[str] = None) -> str:
        call = self._publish_call(stream, payload, id_hint)
        deadline = time.monotonic() + self.publish_timeout_s
        while True:
            try:
                reply = self._publish(**call)
            except _RETRYABLE as e:
                # Server restarting (or a network blip): retry until the deadline. With an id_hint a
                # retry after an ambiguous failure cannot add the message twice.
                self._retry_or_raise(e, deadline)
                time.sleep(_RETRY_S)
                continue
            if _str(reply[0]) == "ok":
                return _str(reply[1])
            backlog = Backlog(int(reply[1]), _str(reply[2]) or None)
            # Wait with the cheap backlog check, not by resending the (possibly large) payload.
            while backlog.count >= self.max_unconsumed:
                if time.monotonic() >= deadline:
                    raise self._timeout(stream, backlog)
                time.sleep(_POLL_S)
                backlog = self.backlog(stream)

    def ensure_group(self, stream: str, group: str) -> None:
        try:
            self.client.xgroup_create(stream, group, id="0", mkstream=True)
        except redis.exceptions.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    def read(self, stream: str, group: str, consumer: str, count: int, block_ms: int = 0) -> List[Message]:
        args, kw = self._read_args(stream, group, consumer, count, block_ms)
        return self._read_reply(self.client.xreadgroup(*args, **kw))

    def read_pending(self, stream: str, group: str, consumer: str, count: int, after: str = "0") -> List[Message]:
        """Entries already delivered to ``consumer`` and not acknowledged, oldest first, after entry id
        ``after``: what a restarted consumer with a stable name picks up again."""
        return self._read_reply(self.client.xreadgroup(group, consumer, {stream: after}, count=count))

    def ack(self, stream: str, group: str, ids: Sequence[str]) -> int:
        return int(self.client.xack(stream, group, *ids)) if ids else 0

    def scan(self, stream: str, after: str = "-", count: int = 100) -> List[Message]:
        """Entries after ``after`` (exclusive; "-" from the start) without consuming them: for inspection."""
        start = after if after == "-" else f"({after}"
        return _entries(self.client.xrange(stream, min=start, max="+", count=count))

    def claim_stale(self, stream: str, group: str, consumer: str, min_idle_ms: int, count: int) -> List[Message]:
        claimed: List[Message] = []
        lost: List[str] = []
        cursor = "0-0"
        while len(claimed) < count:
            reply = self.client.xautoclaim(stream, group, consumer, min_idle_ms, start_id=cursor,
                                           count=count - len(claimed))
            cursor = self._claim_step(reply, claimed, lost)
            if cursor == "0-0":
                break
        if lost:
            p = self.client.pipeline(transaction=True)
            p.xack(stream, group, *lost)
            p.hincrby(self.counters_key, DELETED_BEFORE_ACK, len(lost))
            p.execute()
        return claimed

    def dead_letter(self, stream: str, msg_id: str, payload: bytes, reason: str, *,
                    group: Optional[str] = None, key: Optional[str] = None) -> Optional[str]:
        reply = self._dead_letter(**self._dead_letter_call(stream, msg_id, payload, reason, group, key))
        return _str(reply) if reply else None

    def drop(self, stream: str, group: str, msg_id: str, reason: str) -> bool:
        """Acknowledges a message deliberately not passed on, counted as ``dropped:<reason>`` (once)."""
        return bool(self._drop(keys=[stream, self.counters_key], args=[group, msg_id, reason]))

    def pending(self, stream: str, group: str) -> int:
        return int(self.client.xpending(stream, group)["pending"])

    def backlog(self, stream: str, group: Optional[str] = None) -> Backlog:
        return self._backlog_reply(self._backlog(**self._backlog_call(stream, group)))

    def trim_acknowledged(self, stream: str) -> int:
        return int(self._trim(keys=[stream]))

    def counters(self) -> Dict[str, int]:
        return self._counters_reply(self.client.hgetall(self.counters_key))

    def close(self) -> None:
        self.client.close()


class AsyncRedisTransport(_RedisCommon, AsyncTransport):
    """The asyncio transport (redis.asyncio). Await ``ping()`` once at start-up."""

    _redis_module = redis.asyncio

    async def ping(self) -> None:
        try:
            await self.client.ping()
        except redis.exceptions.RedisError as e:
            raise self._error(e) from None

    async def publish(self, stream: str, payload: bytes, *, id_hint: Optional[str] = None) -> str:
        call = self._publish_call(stream, payload, id_hint)
        deadline = time.monotonic() + self.publish_timeout_s
        while True:
            try:
                reply = await self._publish(**call)
            except _RETRYABLE as e:
                self._retry_or_raise(e, deadline)  # see RedisTransport.publish
                await asyncio.sleep(_RETRY_S)
                continue
            if _str(reply[0]) == "ok":
                return _str(reply[1])
            backlog = Backlog(int(reply[1]), _str(reply[2]) or None)
            while backlog.count >= self.max_unconsumed:
                if time.monotonic() >= deadline:
                    raise self._timeout(stream, backlog)
                await asyncio.sleep(_POLL_S)
                backlog = await self.backlog(stream)

    async def ensure_group(self, stream: str, group: str) -> None:
        try:
            await self.client.xgroup_create(stream, group, id="0", mkstream=True)
        except redis.exceptions.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    async def read(self, stream: str, group: str, consumer: str, count: int, block_ms: int = 0) -> List[Message]:
        args, kw = self._read_args(stream, group, consumer, count, block_ms)
        return self._read_reply(await self.client.xreadgroup(*args, **kw))

    async def ack(self, stream: str, group: str, ids: Sequence[str]) -> int:
        return int(await self.client.xack(stream, group, *ids)) if ids else 0

    async def claim_stale(self, stream: str, group: str, consumer: str, min_idle_ms: int,
                          count: int) -> List[Message]:
        claimed: List[Message] = []
        lost: List[str] = []
        cursor = "0-0"
        while len(claimed) < count:
            reply = await self.client.xautoclaim(stream, group, consumer, min_idle_ms, start_id=cursor,
                                                 count=count - len(claimed))
            cursor = self._claim_step(reply, claimed, lost)
            if cursor == "0-0":
                break
        if lost:
            p = self.client.pipeline(transaction=True)
            p.xack(stream, group, *lost)
            p.hincrby(self.counters_key, DELETED_BEFORE_ACK, len(lost))
            await p.execute()
        return claimed

    async def dead_letter(self, stream: str, msg_id: str, payload: bytes, reason: str, *,
                          group: Optional[str] = None, key: Optional[str] = None) -> Optional[str]:
        reply = await self._dead_letter(**self._dead_letter_call(stream, msg_id, payload, reason, group, key))
        return _str(reply) if reply else None

    async def dead_letter_poison(self, stream: str, group: str, min_idle_ms: int, max_deliveries: int,
                                 count: int = 100) -> int:
        """Dead-letters pending entries idle ``min_idle_ms`` that were delivered ``max_deliveries`` times
        already: a message that kills every consumer it reaches must not be reclaimed forever."""
        moved = 0
        for e in await self.client.xpending_range(stream, group, min="-", max="+", count=count, idle=min_idle_ms):
            if int(e["times_delivered"]) < max_deliveries:
                continue
            msg_id = _str(e["message_id"])
            entries = _entries(await self.client.xrange(stream, min=msg_id, max=msg_id))
            payload = entries[0][1] if entries else b""
            if await self.dead_letter(stream, msg_id, payload, f"poison: delivered {e['times_delivered']} times",
                                      group=group, key="poison"):
                moved += 1
        return moved

    async def drop(self, stream: str, group: str, msg_id: str, reason: str) -> bool:
        return bool(await self._drop(keys=[stream, self.counters_key], args=[group, msg_id, reason]))

    async def pending(self, stream: str, group: str) -> int:
        return int((await self.client.xpending(stream, group))["pending"])

    async def backlog(self, stream: str, group: Optional[str] = None) -> Backlog:
        return self._backlog_reply(await self._backlog(**self._backlog_call(stream, group)))

    async def trim_acknowledged(self, stream: str) -> int:
        return int(await self._trim(keys=[stream]))

    async def counters(self) -> Dict[str, int]:
        return self._counters_reply(await self.client.hgetall(self.counters_key))

    async def close(self) -> None:
        await self.client.aclose()


def from_config(cfg: Any, *, asynchronous: bool = False):
    """A ``RedisTransport`` (or, ``asynchronous=True``, an ``AsyncRedisTransport``) from the ``transport`` config."""
    return (AsyncRedisTransport if asynchronous else RedisTransport).from_config(cfg)
