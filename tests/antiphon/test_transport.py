"""Stream transport against a real embedded Valkey: consumer groups, takeover of a dead consumer's
messages, dead letters, backpressure, authentication, loopback binding, AOF durability across SIGKILL."""
from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid

import msgpack
import numpy as np
import pytest
import redis

from antiphon.protocol import SCHEMA_VERSION, Trajectory, TurnRecord, decode, encode
from antiphon.transport import (
    AsyncRedisTransport, Backlog, BackpressureTimeout, EmbeddedValkey, RedisTransport, TransportConfigError,
    TransportError, from_config,
)

GROUP = "reward"


def _traj(i: int = 0) -> Trajectory:
    ids = np.arange(10, dtype=np.int32)
    mask = np.zeros(10, np.uint8)
    mask[4:10] = 1
    lp = np.where(mask == 1, -0.5, 0.0).astype(np.float32)
    ver = np.where(mask == 1, 1, -1).astype(np.int32)
    turns = [TurnRecord("user", 0, 4, text="hi"), TurnRecord("assistant", 4, 10, text="hello", weight_version=1)]
    return Trajectory(f"t-{i}", "run", {"persona": "p"}, ids, mask, lp, ver, turns, end_reason="user_ended")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with EmbeddedValkey(tmp_path_factory.mktemp("valkey")) as s:
        yield s


@pytest.fixture
def transport(server):
    # A fresh namespace per test: streams, groups and counters never leak between tests.
    with RedisTransport(server.url, f"t{uuid.uuid4().hex[:8]}", max_unconsumed=None) as t:
        yield t


def test_publish_read_ack_round_trip(transport):
    stream = transport.stream("trajectories")
    assert stream == f"antiphon:{transport.namespace}:trajectories"
    transport.ensure_group(stream, GROUP)
    transport.ensure_group(stream, GROUP)  # idempotent
    sent = [transport.publish(stream, encode(_traj(i))) for i in range(3)]
    got = transport.read(stream, GROUP, "c1", count=10, block_ms=100)
    assert [m for m, _ in got] == sent
    assert [decode(p).trajectory_id for _, p in got] == ["t-0", "t-1", "t-2"]
    assert transport.pending(stream, GROUP) == 3
    assert transport.read(stream, GROUP, "c1", count=10) == []  # each entry is delivered once
    assert transport.ack(stream, GROUP, sent) == 3
    assert transport.pending(stream, GROUP) == 0 and transport.backlog(stream) == Backlog(0, GROUP)


def test_group_created_after_publish_still_reads_everything(transport):
    stream = transport.stream("trajectories")
    transport.publish(stream, b"early")
    transport.ensure_group(stream, GROUP)
    assert [p for _, p in transport.read(stream, GROUP, "c", 10)] == [b"early"]


def test_two_consumers_in_a_group_split_the_messages(transport):
    stream = transport.stream("trajectories")
    transport.ensure_group(stream, GROUP)
    sent = {transport.publish(stream, encode(_traj(i))) for i in range(6)}
    a = transport.read(stream, GROUP, "a", count=4)
    b = transport.read(stream, GROUP, "b", count=4)
    ids_a, ids_b = {m for m, _ in a}, {m for m, _ in b}
    assert len(a) == 4 and len(b) == 2 and not ids_a & ids_b and ids_a | ids_b == sent


def test_claim_stale_takes_over_a_dead_consumers_messages(transport):
    stream = transport.stream("trajectories")
    transport.ensure_group(stream, GROUP)
    sent = [transport.publish(stream, encode(_traj(i))) for i in range(3)]
    assert len(transport.read(stream, GROUP, "dead", count=3)) == 3  # read, then the consumer dies
    assert transport.claim_stale(stream, GROUP, "alive", min_idle_ms=10_000, count=10) == []  # not idle yet
    time.sleep(0.05)
    claimed = transport.claim_stale(stream, GROUP, "alive", min_idle_ms=30, count=10)
    assert [m for m, _ in claimed] == sent and decode(claimed[0][1]).trajectory_id == "t-0"
    info = {c["name"]: c["pending"] for c in transport.client.xinfo_consumers(stream, GROUP)}
    assert info[b"alive"] == 3 and info[b"dead"] == 0
    # An entry deleted from the stream while pending cannot be processed: dropped from the group and counted.
    transport.client.xdel(stream, sent[0])
    time.sleep(0.05)
    assert [m for m, _ in transport.claim_stale(stream, GROUP, "third", 30, 10)] == sent[1:]
    assert transport.counters()["deleted_before_ack"] == 1 and transport.pending(stream, GROUP) == 2


def test_bad_messages_are_dead_lettered_counted_and_acked(transport):
    stream = transport.stream("trajectories")
    transport.ensure_group(stream, GROUP)
    wrong_version = msgpack.unpackb(encode(_traj(9)), raw=False)
    wrong_version["v"] = SCHEMA_VERSION + 1
    good_id = transport.publish(stream, encode(_traj(1)))
    garbage_id = transport.publish(stream, b"\xc1garbage")
    version_id = transport.publish(stream, msgpack.packb(wrong_version, use_bin_type=True))

    good = transport.consume_validated(stream, GROUP, "c", decode, count=10)
    assert [(m, t.trajectory_id) for m, t in good] == [(good_id, "t-1")]
    assert transport.pending(stream, GROUP) == 1  # only the good one awaits its ack

    dead = {f[b"source_id"].decode(): f for _, f in transport.client.xrange(transport.dead_stream)}
    assert set(dead) == {garbage_id, version_id}
    assert dead[garbage_id][b"d"] == b"\xc1garbage"
    assert dead[garbage_id][b"reason"].startswith(b"message: not msgpack")
    want = f"v: schema version {SCHEMA_VERSION + 1}, this build reads {SCHEMA_VERSION}"
    assert dead[version_id][b"reason"] == want.encode()
    assert dead[version_id][b"source"] == stream.encode() and dead[version_id][b"group"] == GROUP.encode()
    assert transport.counters() == {"dead_letter": 2, "dead_letter:message": 1, "dead_letter:v": 1}

    # Acknowledged: neither redelivered nor claimable, and dead-lettering again is refused (no double count).
    time.sleep(0.02)
    assert transport.claim_stale(stream, GROUP, "other", min_idle_ms=1, count=10) == [(good_id, encode(_traj(1)))]
    assert transport.consume_validated(stream, GROUP, "c", decode, count=10) == []
    assert transport.dead_letter(stream, garbage_id, b"\xc1garbage", "again", group=GROUP) is None
    assert transport.counters()["dead_letter"] == 2


def test_publish_waits_for_the_consumer_then_proceeds(transport):
    transport.max_unconsumed = 2
    stream = transport.stream("scored")
    transport.ensure_group(stream, GROUP)
    transport.publish(stream, b"1")
    transport.publish(stream, b"2")
    assert transport.backlog(stream) == Backlog(2, GROUP)

    seen = []

    def consume():
        time.sleep(0.3)
        ids = [m for m, _ in transport.read(stream, GROUP, "c", count=1)]
        seen.append(transport.backlog(stream).count)
        time.sleep(0.1)
        seen.append("acking")
        transport.ack(stream, GROUP, ids)

    consumer = threading.Thread(target=consume)
    consumer.start()
    transport.publish(stream, b"3")
    seen.append("published")
    consumer.join()
    # Delivered but not acknowledged still counts (2 while the third waited); the third went in only
    # after the consumer acknowledged one: the producer was blocked until room appeared.
    assert seen == [2, "acking", "published"]
    assert transport.client.xlen(stream) == 3


def test_publish_times_out_with_a_clear_error(transport):
    transport.max_unconsumed, transport.publish_timeout_s = 2, 0.3
    stream = transport.stream("scored")
    transport.publish(stream, b"1")
    transport.publish(stream, b"2")
    with pytest.raises(BackpressureTimeout, match="no consumer group") as e:  # nobody created a group yet
        transport.publish(stream, b"3")
    transport.ensure_group(stream, GROUP)
    transport.ensure_group(stream, "monitor")
    transport.ack(stream, GROUP, [m for m, _ in transport.read(stream, GROUP, "c", 10)])
    with pytest.raises(BackpressureTimeout) as e:  # the slowest group governs
        transport.publish(stream, b"3")
    for needle in ("group 'monitor'", "2 entries", "transport.max_unconsumed=2", "transport.publish_timeout_s"):
        assert needle in str(e.value)
    assert transport.client.xlen(stream) == 2


def test_id_hint_makes_publish_idempotent(transport):
    stream = transport.stream("scored")
    first = transport.publish(stream, b"a", id_hint="t-1")
    assert transport.publish(stream, b"a", id_hint="t-1") == first
    assert transport.publish(stream, b"b", id_hint="t-2") != first
    assert transport.client.xlen(stream) == 2


def test_trim_acknowledged_keeps_what_any_group_still_needs(transport):
    stream = transport.stream("trajectories")
    ids = [transport.publish(stream, b"x") for _ in range(5)]
    assert transport.trim_acknowledged(stream) == 0  # no group: nobody consumed anything
    transport.ensure_group(stream, "a")
    transport.ensure_group(stream, "b")
    transport.read(stream, "a", "c", 5)
    transport.ack(stream, "a", ids[:3])
    transport.read(stream, "b", "c", 2)
    transport.ack(stream, "b", ids[:2])
    assert transport.trim_acknowledged(stream) == 2  # group b has not read past ids[1]
    transport.read(stream, "b", "c", 5)
    transport.ack(stream, "b", ids)
    assert transport.trim_acknowledged(stream) == 1  # group a still holds ids[3:] pending
    assert [m for m, _ in transport.client.xrange(stream)] == [i.encode() for i in ids[3:]]


def test_async_transport(server):
    async def run():
        ns = f"a{uuid.uuid4().hex[:8]}"
        async with AsyncRedisTransport(server.url, ns, max_unconsumed=2, publish_timeout_s=5) as t:
            await t.ping()
            stream = t.stream("trajectories")
            await t.ensure_group(stream, GROUP)
            await t.publish(stream, encode(_traj(0)))
            await t.publish(stream, b"junk")
            waiting = asyncio.create_task(t.publish(stream, encode(_traj(2))))  # backlog is full
            await asyncio.sleep(0.2)
            assert not waiting.done()
            good = await t.consume_validated(stream, GROUP, "c", decode, count=10, block_ms=100)
            await t.ack(stream, GROUP, [m for m, _ in good])
            await asyncio.wait_for(waiting, 2)
            assert [x.trajectory_id for _, x in good] == ["t-0"]
            assert (await t.counters())["dead_letter:message"] == 1 and await t.pending(stream, GROUP) == 0
            await asyncio.sleep(0.02)
            assert (await t.claim_stale(stream, GROUP, "c2", 1, 10)) == []
            assert [m for m, _ in await t.read(stream, GROUP, "c", 10)] == [waiting.result()]
            assert await t.trim_acknowledged(stream) == 2
    asyncio.run(run())


def test_the_server_demands_the_password(server, monkeypatch, tmp_path):
    with socket.create_connection(("127.0.0.1", server.port), timeout=2) as raw:  # any client, no password
        raw.sendall(b"*1\r\n$4\r\nPING\r\n")
        assert raw.recv(64).startswith(b"-NOAUTH")
    bare_url = f"redis://127.0.0.1:{server.port}/0"
    monkeypatch.delenv("ANTIPHON_REDIS_PASSWORD", raising=False)
    with pytest.raises(TransportError, match=r"refused authentication; password from none"):
        from_config({"url": bare_url, "namespace": "n"}).ping()
    with pytest.raises(TransportError, match="refused authentication") as e:
        RedisTransport(bare_url, "n", password="wrong-password").ping()
    assert server.password not in str(e.value)

    monkeypatch.setenv("MY_PW", server.password)  # the password from the variable password_env names
    from_config({"url": bare_url, "namespace": "n", "password_env": "MY_PW"}).ping()
    secret = tmp_path / "pw"
    secret.write_text(server.password + "\n")  # ... or from password_file
    from_config({"url": bare_url, "namespace": "n", "password_env": "UNSET_VAR", "password_file": str(secret)}).ping()
    with pytest.raises(TransportConfigError, match=r"transport.password_file: '/nonexistent/pw' does not exist"):
        from_config({"url": bare_url, "namespace": "n", "password_file": "/nonexistent/pw"})


def test_config_errors_name_the_field(server):
    with pytest.raises(TransportConfigError, match="transport.url: unset"):
        from_config({"url": None, "namespace": "n"})
    with pytest.raises(TransportConfigError, match=r"transport.url: 'http://:\*\*\*@h:1' is not a redis://"):
        from_config({"url": "http://:hunter2@h:1", "namespace": "n"})
    with pytest.raises(TransportConfigError, match="transport.namespace: 'a b'"):
        from_config({"url": server.url, "namespace": "a b"})
    with pytest.raises(TransportConfigError, match="transport.max_unconsumed: 0 is not None or an int >= 1"):
        from_config({"url": server.url, "namespace": "n", "max_unconsumed": 0})


def test_secrets_never_shown(server, transport):
    pw = server.password
    assert len(pw) >= 32 and pw in server.url
    for text in (repr(server), str(server), repr(transport), str(transport), repr(transport.client)):
        assert pw not in text
    assert "***" in repr(transport)
    # Not on disk either: the config went to the server on stdin.
    for f in server.data_dir.rglob("*"):
        if f.is_file():
            assert pw.encode() not in f.read_bytes(), f


def test_server_is_loopback_only_protected_and_persistent(transport):
    config = transport.client.config_get("*")
    assert config["bind"] == "127.0.0.1" and config["protected-mode"] == "yes"
    assert config["appendonly"] == "yes" and config["appendfsync"] == "everysec"


def test_acknowledged_xadds_survive_sigkill(tmp_path):
    server = EmbeddedValkey(tmp_path / "data", appendfsync="always")
    with server:
        t = RedisTransport(server.url, "durable", max_unconsumed=None)
        stream = t.stream("trajectories")
        t.ensure_group(stream, GROUP)
        sent = [t.publish(stream, encode(_traj(i))) for i in range(200)]
        t.read(stream, GROUP, "c", count=50)
        t.ack(stream, GROUP, sent[:20])
        port, url = server.port, server.url
        server.kill()
        assert not server.running
        with pytest.raises(redis.exceptions.ConnectionError):
            t.client.ping()
        server.restart()
        assert (server.port, server.url) == (port, url)
        t.client.connection_pool.disconnect()
        assert [m for m, _ in t.client.xrange(stream)] == [m.encode() for m in sent]
        assert t.pending(stream, GROUP) == 30  # the consumer group's state came back too
        assert decode(t.read(stream, GROUP, "c", 1)[0][1]).trajectory_id == "t-50"
        assert t.publish(stream, b"after") > sent[-1]  # the Lua scripts are reloaded into the new process
        t.close()
    assert not server.running
