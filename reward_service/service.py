"""The reward service: reads the trajectory stream through a consumer group, scores batches, and appends
scored trajectories to the ``scored`` stream.

Delivery: a replica claims messages a dead replica left pending (XAUTOCLAIM after ``claim_idle_ms``)
before reading new ones; it publishes each scored trajectory with its trajectory id as the idempotency
key and only then acknowledges the input, so a trajectory delivered twice (a crash between publish and
ack) is still scored into the output once. Messages that do not decode go to the dead-letter stream
(counted); trajectories a component's ``on_error: drop`` policy rejects are acknowledged and counted
as ``dropped:<component>:<status>``.

    python -m reward_service.serve transport.url=redis://host:6379/0 transport.namespace=<run> reward=default
"""
from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import TYPE_CHECKING, Any, Dict, Optional, Sequence

from antiphon.protocol import ScoredTrajectory, decode, encode_scored
from reward_service.compose import ComponentSpec, score

if TYPE_CHECKING:
    from antiphon.transport import Transport


class RewardService:
    def __init__(self, transport: Transport, specs: Sequence[ComponentSpec], *, replica: str = "reward-0",
                 group: str = "reward", batch_size: int = 8, claim_idle_ms: int = 30000, block_ms: int = 500,
                 max_deliveries: int = 5):
        self.t, self.specs, self.replica, self.group = transport, list(specs), replica, group
        self.batch_size, self.claim_idle_ms, self.block_ms = batch_size, claim_idle_ms, block_ms
        self.max_deliveries = max_deliveries
        self.inp, self.out = transport.stream("trajectories"), transport.stream("scored")
        self.stats: Counter = Counter()

    async def start(self) -> "RewardService":
        await self.t.ensure_group(self.inp, self.group)
        return self

    async def step(self) -> int:
        """One batch: claim stale, read new, score, publish, acknowledge. Returns messages handled."""
        # Stale messages that already crashed several consumers are dead-lettered, not claimed again.
        await self.t.dead_letter_poison(self.inp, self.group, self.claim_idle_ms, self.max_deliveries)
        claimed = await self.t.claim_stale(self.inp, self.group, self.replica, self.claim_idle_ms, self.batch_size)
        batch = await self.t.validate(self.inp, self.group, claimed, decode)
        if len(batch) < self.batch_size:
            batch += await self.t.consume_validated(self.inp, self.group, self.replica, decode,
                                                    self.batch_size - len(batch), self.block_ms)
        if not batch:
            return 0
        t0 = time.perf_counter()
        results = await score([traj for _, traj in batch], self.specs)
        secs = time.perf_counter() - t0
        for (msg_id, _), (traj, rewards, drop) in zip(batch, results):
            if rewards is None:
                await self.t.drop(self.inp, self.group, msg_id, drop)
                self.stats["dropped"] += 1
                continue
            rewards.service = {"replica": self.replica, "batch": len(batch), "score_s": secs}
            await self.t.publish(self.out, encode_scored(ScoredTrajectory(traj, rewards)),
                                 id_hint=f"scored:{traj.trajectory_id}")
            await self.t.ack(self.inp, self.group, [msg_id])
            self.stats["scored"] += 1
        return len(batch)

    async def run(self, stop: Optional[asyncio.Event] = None, max_idle_s: Optional[float] = None) -> Dict[str, Any]:
        """Serves until ``stop`` is set (or, with ``max_idle_s``, after that long without messages)."""
        await self.start()
        idle_since = time.monotonic()
        while not (stop is not None and stop.is_set()):
            if await self.step():
                idle_since = time.monotonic()
            elif max_idle_s is not None and time.monotonic() - idle_since > max_idle_s:
                break
        return dict(self.stats)
