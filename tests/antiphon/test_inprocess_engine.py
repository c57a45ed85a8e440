"""The in-process engine driver (antiphon.vllm_engine.InProcessEngine) against a stand-in for vLLM's
LLMEngine: every call on the engine runs on its one thread, finished outputs reach their callers on any
event loop, a cancelled caller's request is aborted, and a dead engine fails every caller instead of
leaving one waiting."""
from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace

import pytest

from antiphon.vllm_engine import EngineDead, InProcessEngine


class FakeLLMEngine:
    """Finishes each request after ``steps`` steps; records the thread of every call."""

    def __init__(self, steps=3, fail_at=None):
        self.model_config = SimpleNamespace(name="fake")
        self.steps, self.fail_at, self.n_steps = steps, fail_at, 0
        self.running = {}  # request id -> steps left
        self.threads, self.aborted, self.rpcs = set(), [], []
        self.engine_core = SimpleNamespace(shutdown=lambda: self.threads.add("shutdown"))

    def _here(self):
        self.threads.add(threading.current_thread().name)

    def add_request(self, request_id, prompt, params):
        self._here()
        self.running[request_id] = self.steps

    def has_unfinished_requests(self):
        return bool(self.running)

    def step(self):
        self._here()
        self.n_steps += 1
        if self.fail_at is not None and self.n_steps >= self.fail_at:
            raise RuntimeError("out of KV blocks")
        out = []
        for rid in list(self.running):
            self.running[rid] -= 1
            if self.running[rid] == 0:
                del self.running[rid]
                out.append(SimpleNamespace(request_id=rid, finished=True, outputs=[rid]))
        return out

    def abort_request(self, ids):
        self._here()
        self.aborted += ids
        for rid in ids:
            self.running.pop(rid, None)

    def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
        self._here()
        self.rpcs.append((method, kwargs))
        return [method]

    def reset_prefix_cache(self):
        self._here()
        return True

    def reset_encoder_cache(self):
        self._here()


async def _final(engine, rid):
    async for out in engine.generate({"prompt_token_ids": [1]}, None, request_id=rid):
        return out


def test_requests_finish_on_the_engine_thread_for_callers_on_any_loop():
    fake = FakeLLMEngine()
    eng = InProcessEngine(fake)
    try:
        async def many():
            return await asyncio.gather(*(_final(eng, f"r{i}") for i in range(5)))

        assert [o.request_id for o in asyncio.run(many())] == [f"r{i}" for i in range(5)]
        results = []
        t = threading.Thread(target=lambda: results.append(asyncio.run(_final(eng, "other-loop"))))
        t.start()
        t.join(30)
        assert results[0].request_id == "other-loop"

        async def control():
            return (await eng.collective_rpc("reload_weights", kwargs={"w": 1}), await eng.reset_prefix_cache(),
                    await eng.reset_encoder_cache())

        assert asyncio.run(control()) == (["reload_weights"], True, None)
        assert fake.rpcs == [("reload_weights", {"w": 1})]
        assert fake.threads == {"vllm-engine"}  # LLMEngine is not thread-safe: only its thread touches it
    finally:
        eng.shutdown()
    assert "shutdown" in fake.threads


def test_a_cancelled_caller_aborts_its_request():
    fake = FakeLLMEngine(steps=10 ** 9)  # never finishes on its own
    eng = InProcessEngine(fake)
    try:
        async def cancel():
            task = asyncio.ensure_future(_final(eng, "slow"))
            while "slow" not in fake.running:
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            while not fake.aborted:
                await asyncio.sleep(0.01)

        asyncio.run(asyncio.wait_for(cancel(), 30))
        assert fake.aborted == ["slow"] and not fake.running
    finally:
        eng.shutdown()


def test_a_step_that_raises_fails_every_waiting_and_later_caller():
    eng = InProcessEngine(FakeLLMEngine(steps=5, fail_at=2))

    async def go():
        return await asyncio.gather(_final(eng, "a"), _final(eng, "b"), return_exceptions=True)

    errors = asyncio.run(asyncio.wait_for(go(), 30))
    assert all(isinstance(e, EngineDead) and "RuntimeError: out of KV blocks" in str(e) for e in errors)
    with pytest.raises(EngineDead, match="out of KV blocks"):
        asyncio.run(asyncio.wait_for(_final(eng, "c"), 30))


def test_shutdown_fails_requests_still_running_and_refuses_new_ones():
    fake = FakeLLMEngine(steps=10 ** 9)
    eng = InProcessEngine(fake)

    async def go():
        task = asyncio.ensure_future(_final(eng, "long"))
        while "long" not in fake.running:
            await asyncio.sleep(0.01)
        await asyncio.to_thread(eng.shutdown)
        with pytest.raises(EngineDead, match="shut down"):
            await task
        with pytest.raises(EngineDead, match="shut down"):
            await eng.reset_prefix_cache()

    asyncio.run(asyncio.wait_for(go(), 30))
