"""The engine's reload gate: a weight reload never overlaps a generate call, and does not starve."""
from __future__ import annotations

import asyncio

from actors.engine import _ReloadGate


def test_reload_waits_for_running_generations_and_blocks_new_ones():
    events = []

    async def gen(gate, name, hold):
        async with gate.generating():
            events.append(f"{name}+")
            await asyncio.sleep(hold)
            events.append(f"{name}-")

    async def reload(gate):
        async with gate.reloading():
            events.append("R+")
            await asyncio.sleep(0.05)
            events.append("R-")

    async def main():
        gate = _ReloadGate()
        a = asyncio.create_task(gen(gate, "a", 0.1))
        await asyncio.sleep(0.01)
        r = asyncio.create_task(reload(gate))
        await asyncio.sleep(0.01)
        b = asyncio.create_task(gen(gate, "b", 0.01))  # arrives while the reload waits
        await asyncio.gather(a, r, b)

    asyncio.run(main())
    assert events == ["a+", "a-", "R+", "R-", "b+", "b-"]


def test_generations_run_concurrently_without_a_reload():
    active, peak = 0, 0

    async def gen(gate):
        nonlocal active, peak
        async with gate.generating():
            active += 1
            peak = max(peak, active)
            await asyncio.sleep(0.02)
            active -= 1

    async def main():
        gate = _ReloadGate()
        await asyncio.gather(*(gen(gate) for _ in range(8)))

    asyncio.run(main())
    assert peak == 8
