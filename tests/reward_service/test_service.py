"""The reward service with real Valkey: composition, dead letters, timeouts, and two replicas of which one
is killed mid-batch -- every trajectory is still scored exactly once into the output stream."""
from __future__ import annotations

import asyncio
import multiprocessing as mp
import time

import numpy as np
import pytest
from support import make_trajectory

from antiphon.protocol import decode_scored, encode
from antiphon.transport import BlockingTransport, EmbeddedValkey, from_config
from reward_service.compose import build_specs, score

NS = "rw"


def _components(sleep_s=0.0, timeout_s=30.0, on_error="drop"):
    return [{"_target_": "support.ReplyLength", "name": "length", "weight": 2.0},
            {"_target_": "support.SlowConstant", "name": "slow", "weight": 0.5, "timeout_s": timeout_s,
             "on_error": on_error, "fallback": -1.0, "params": {"value": 1.0, "sleep_s": sleep_s}}]


def _reward_cfg(components, **kw):
    return {"components": components, "group": "reward", "batch_size": 4, "claim_idle_ms": 1000,
            "block_ms": 100, **kw}


@pytest.fixture
def server(tmp_path):
    with EmbeddedValkey(tmp_path / "v") as s:
        yield s


def _tcfg(server):
    return {"url": server.url, "namespace": NS}


def test_composition_weights_places_and_keeps_every_component():
    trajs = [make_trajectory("a", replies=("hello there", "ok")), make_trajectory("b", replies=("x", "yy"))]
    out = asyncio.run(score(trajs, build_specs(_components())))
    (_, ra, da), (_, rb, db) = out
    assert da is None and db is None
    assert ra.turn == pytest.approx([2 * 0.11, 2 * 0.02]) and ra.dialogue == pytest.approx(0.5)
    assert rb.total == pytest.approx(2 * 0.01 + 2 * 0.02 + 0.5)
    assert ra.components["length"]["raw"] == pytest.approx([0.11, 0.02])
    assert ra.components["slow"]["scope"] == "dialogue" and ra.components["slow"]["status"] == "ok"


def test_timeout_is_recorded_and_policy_decides():
    trajs = [make_trajectory("a")]
    dropped = asyncio.run(score(trajs, build_specs(_components(sleep_s=2, timeout_s=0.2))))
    assert dropped[0][1] is None and dropped[0][2] == "slow:timeout"
    kept = asyncio.run(score(trajs, build_specs(_components(sleep_s=2, timeout_s=0.2, on_error="fallback"))))
    r = kept[0][1]
    assert r.components["slow"]["status"] == "fallback(timeout)" and r.components["slow"]["raw"] == [-1.0]
    assert r.components["length"]["status"] == "ok"  # the rest were scored
    assert r.dialogue == pytest.approx(-0.5)


def test_a_raising_component_and_bad_shapes_are_errors():
    comps = [{"_target_": "support.Exploding", "on_error": "fallback", "fallback": 0.0}]
    r = asyncio.run(score([make_trajectory("a")], build_specs(comps)))[0][1]
    assert r.components["Exploding"]["status"] == "fallback(error)"
    assert "boom" in r.components["Exploding"]["reason"]
    with pytest.raises(ValueError, match=r"reward.components\[0\]._target_"):
        build_specs([{"_target_": "antiphon.protocol.Trajectory"}])


def _replica(url, name, components, stats):
    from reward_service.serve import serve

    stats[name] = asyncio.run(serve({"url": url, "namespace": NS}, _reward_cfg(components), name, max_idle_s=3.0))


def test_malformed_and_nan_messages_are_dead_lettered_and_counted(server):
    t = BlockingTransport(from_config(_tcfg(server)))
    inp = t.stream("trajectories")
    t.publish(inp, encode(make_trajectory("good")))
    t.publish(inp, b"\x00not msgpack")
    bad = make_trajectory("nan")
    bad.logprobs[5] = np.nan
    t.publish(inp, encode(bad))
    stats = {}
    _replica(server.url, "r0", _components(), stats)
    scored = [decode_scored(p) for _, p in t.scan(t.stream("scored"))]
    assert [s.trajectory.trajectory_id for s in scored] == ["good"]
    dead = t.scan(t.dead_stream)
    assert len(dead) == 2 and stats["r0"] == {"scored": 1}
    assert t.counters()["dead_letter"] == 2
    assert t.pending(inp, "reward") == 0  # nothing left to retry
    t.close()


def test_killed_replica_mid_batch_every_trajectory_scored_exactly_once(server):
    t = BlockingTransport(from_config(_tcfg(server)))
    inp = t.stream("trajectories")
    n = 24
    t.ensure_group(inp, "reward")
    for i in range(n):
        t.publish(inp, encode(make_trajectory(f"t{i:02d}")))
    ctx = mp.get_context("spawn")
    stats = ctx.Manager().dict()
    slow = _components(sleep_s=0.5)
    victim = ctx.Process(target=_replica, args=(server.url, "victim", slow, stats))
    victim.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # wait until the victim holds a batch it has not acknowledged
        info = t.pending_by_consumer(inp, "reward")
        if info.get("victim", 0) > 0:
            break
        time.sleep(0.02)
    victim.kill()
    victim.join()
    assert info.get("victim", 0) > 0
    survivor = ctx.Process(target=_replica, args=(server.url, "survivor", slow, stats))
    survivor.start()
    survivor.join(timeout=120)
    scored = [decode_scored(p).trajectory.trajectory_id for _, p in t.scan(t.stream("scored"), count=1000)]
    assert sorted(scored) == [f"t{i:02d}" for i in range(n)]  # all of them, each once
    assert t.pending(inp, "reward") == 0
    assert stats["survivor"]["scored"] >= info["victim"]  # it took over what the victim held
    t.close()


def test_a_message_that_keeps_killing_consumers_is_dead_lettered(server):
    """Delivered max_deliveries times, never acknowledged: dead-lettered as poison, not reclaimed forever."""
    t = BlockingTransport(from_config(_tcfg(server)))
    inp = t.stream("trajectories")
    t.ensure_group(inp, "reward")
    t.publish(inp, encode(make_trajectory("poison")))
    for k in range(3):  # three consumers each take it and die without acknowledging
        got = t.claim_stale(inp, "reward", f"dead-{k}", 0, 10) if k else t.read(inp, "reward", "dead-0", 10)
        assert len(got) == 1
        time.sleep(0.05)
    stats = {}
    cfg = _reward_cfg(_components(), max_deliveries=3, claim_idle_ms=10)
    from reward_service.serve import serve

    stats["r"] = asyncio.run(serve({"url": server.url, "namespace": NS}, cfg, "r", max_idle_s=1.0))
    assert t.scan(t.stream("scored")) == [] and stats["r"] == {}
    dead = t.scan(t.dead_stream)
    assert len(dead) == 1 and t.counters().get("dead_letter:poison") == 1
    assert t.pending(inp, "reward") == 0
    t.close()
