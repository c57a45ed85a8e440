"""Kill the Valkey server (SIGKILL) while a rollout worker streams dialogues, restart it: every trajectory
acknowledged before the crash survives (AOF), publishing resumes, and nothing is written twice."""
from __future__ import annotations

import dataclasses
import time

import pytest

from antiphon.config import compose, to_dataclass
from antiphon.protocol import decode
from simulator.scenarios import generate_scenarios

pytestmark = pytest.mark.slow


def test_server_crash_mid_run_loses_no_acknowledged_trajectory(tiny_path, ray_local, tmp_path):
    from actors import launch_workers
    from antiphon.transport import BlockingTransport, EmbeddedValkey, from_config

    cfg = compose(["rollout.max_new_tokens=24", "rollout.dialogue.think_budget=8",
                   "rollout.dialogue.max_concurrent=2", "transport.namespace=crash"])
    server = EmbeddedValkey(tmp_path / "valkey", appendfsync="always").start()
    try:
        tcfg = dataclasses.replace(to_dataclass(cfg.transport), url=server.url)
        (worker,) = launch_workers(str(tiny_path), to_dataclass(cfg.rollout), to_dataclass(cfg.model), num_workers=1)
        scenarios = [s.to_dict() for s in generate_scenarios(16, seed=3)]
        pending = worker.run_dialogues.remote(scenarios, to_dataclass(cfg.simulator), "crash", tcfg)

        reader = BlockingTransport(from_config(tcfg))
        stream = reader.stream("trajectories")
        deadline = time.monotonic() + 120
        while len(reader.scan(stream, count=1000)) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        before = {i: decode(p).trajectory_id for i, p in reader.scan(stream, count=1000)}
        assert len(before) >= 3
        server.kill()  # no clean shutdown: only what AOF fsynced survives
        time.sleep(1.0)
        server.restart()

        out = ray_local.get(pending, timeout=300)
        after = [(i, decode(p).trajectory_id) for i, p in reader.scan(stream, count=1000)]
        reader.close()
        ray_local.get(worker.shutdown.remote())
        ray_local.kill(worker)
    finally:
        server.stop()
    ids = [t for _, t in after]
    assert out["published"] == 16 == len(ids) == len(set(ids))  # resumed, and no duplicates
    assert set(before.items()) <= set(after)  # what was acknowledged before the crash is still there
