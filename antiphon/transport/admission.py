"""Admission control: one staleness bound that every rollout worker on every node obeys.

A worker may start a dialogue only while the number admitted stays within
``(max_staleness + learner_version + 1) * batch_size``. The learner consumes ``batch_size`` trajectories
per version, so a dialogue admitted now is trained at most ``max_staleness`` versions after the one it
started under (``max_staleness=0``: strictly on-policy). The counters live in one Redis hash and change
only inside Lua scripts, so concurrent workers can never overshoot the bound.

Fields of ``antiphon:<ns>:admission``: ``admitted`` (in flight or delivered, minus released),
``ticket`` (monotonic: consecutive tickets form the groups of the group baseline), ``version``
(the learner's published weight version).
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

from antiphon.transport.base import stream_name

_LUA_ADMIT = """
local admitted = tonumber(redis.call('HGET', KEYS[1], 'admitted') or '0')
local version = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if admitted >= (tonumber(ARGV[1]) + version + 1) * tonumber(ARGV[2]) then
  return {-1, version}
end
redis.call('HINCRBY', KEYS[1], 'admitted', 1)
return {redis.call('HINCRBY', KEYS[1], 'ticket', 1) - 1, version}
"""


def admission_key(namespace: str) -> str:
    return stream_name(namespace, "admission")


def _check(max_staleness: int, batch_size: int) -> None:
    if not isinstance(max_staleness, int) or max_staleness < 0:
        raise ValueError(f"learner.max_staleness: {max_staleness!r} must be an int >= 0")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"learner.batch_size: {batch_size!r} must be an int >= 1")


def _state(reply) -> Dict[str, int]:
    out = {"admitted": 0, "ticket": 0, "version": 0}
    for k, v in (reply or {}).items():
        out[k.decode() if isinstance(k, bytes) else k] = int(v)
    return out


class Admission:
    """Blocking side (the learner and the launcher): publish versions, release slots, read the state."""

    def __init__(self, transport):
        self.client = transport.client
        self.key = admission_key(transport.namespace)
        self._admit = self.client.register_script(_LUA_ADMIT)

    def try_admit(self, max_staleness: int, batch_size: int) -> Tuple[Optional[int], int]:
        """``(ticket, version)``; ticket is None when the bound is reached."""
        _check(max_staleness, batch_size)
        ticket, version = self._admit(keys=[self.key], args=[max_staleness, batch_size])
        return (None if int(ticket) < 0 else int(ticket)), int(version)

    def set_version(self, version: int) -> None:
        self.client.hset(self.key, "version", int(version))

    def release(self, n: int = 1) -> None:
        """Gives back slots whose dialogues will never be trained (ended empty, dropped as stale)."""
        if n:
            self.client.hincrby(self.key, "admitted", -int(n))

    def reset(self, version: int, admitted: int, ticket: int = 0) -> None:
        """A fresh run (or a resumed one): nothing in flight beyond what ``admitted`` says."""
        self.client.hset(self.key, mapping={"version": int(version), "admitted": int(admitted),
                                            "ticket": int(ticket)})

    def state(self) -> Dict[str, int]:
        return _state(self.client.hgetall(self.key))


class AsyncAdmission:
    """Asyncio side (rollout workers)."""

    def __init__(self, transport):
        self.client = transport.client
        self.key = admission_key(transport.namespace)
        self._admit = self.client.register_script(_LUA_ADMIT)

    async def try_admit(self, max_staleness: int, batch_size: int) -> Tuple[Optional[int], int]:
        _check(max_staleness, batch_size)
        ticket, version = await self._admit(keys=[self.key], args=[max_staleness, batch_size])
        return (None if int(ticket) < 0 else int(ticket)), int(version)

    async def release(self, n: int = 1) -> None:
        if n:
            await self.client.hincrby(self.key, "admitted", -int(n))

    async def state(self) -> Dict[str, int]:
        return _state(await self.client.hgetall(self.key))
