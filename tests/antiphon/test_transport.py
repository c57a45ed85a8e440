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

from antiphon.config.schema import TransportConfig
from antiphon.protocol import SCHEMA_VERSION, Trajectory, TurnRecord, decode, encode
from antiphon.transport import (
    Backlog, BackpressureTimeout, BlockingTransport, EmbeddedValkey, RedisTransport, TransportConfigError,
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
def make(server):
    """A blocking transport on the test server with the given settings; a fresh namespace per call, so
    streams, groups and counters never leak between tests."""
    made = []

    def make(**settings) -> BlockingTransport:
        made.append(BlockingTransport(from_config({"url": server.url, "namespace": f"t{uuid.uuid4().hex[:8]}",
                                                   **settings})))
        return made[-1]

    yield make
    for t in made:
        t.close()


@pytest.fixture
def transport(make):
    return make(max_unconsumed=None)


def _ping(cfg, **kw) -> None:
    with BlockingTransport(from_config(cfg), **kw) as t:
        t.ping()


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
    info = transport.pending_by_consumer(stream, GROUP)
    assert info["alive"] == 3 and info["dead"] == 0
    # An entry deleted from the stream while pending cannot be processed: dropped from the group and counted.
    assert transport.delete(stream, [sent[0]]) == 1
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

    dead = {d.source_id: d for d in transport.dead_letters()}
    assert set(dead) == {garbage_id, version_id}
    assert dead[garbage_id].payload == b"\xc1garbage"
    assert dead[garbage_id].reason.startswith("message: not msgpack")
    want = f"v: schema version {SCHEMA_VERSION + 1}, this build reads {SCHEMA_VERSION}"
    assert dead[version_id].reason == want
    assert dead[version_id].source == stream and dead[version_id].group == GROUP
    assert transport.counters() == {"dead_letter": 2, "dead_letter:message": 1, "dead_letter:v": 1}

    # Acknowledged: neither redelivered nor claimable, and dead-lettering again is refused (no double count).
    time.sleep(0.02)
    assert transport.claim_stale(stream, GROUP, "other", min_idle_ms=1, count=10) == [(good_id, encode(_traj(1)))]
    assert transport.consume_validated(stream, GROUP, "c", decode, count=10) == []
    assert transport.dead_letter(stream, garbage_id, b"\xc1garbage", "again", group=GROUP) is None
    assert transport.counters()["dead_letter"] == 2


def test_publish_waits_for_the_consumer_then_proceeds(make):
    transport = make(max_unconsumed=2)
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
    assert transport.length(stream) == 3


def test_publish_times_out_with_a_clear_error(make):
    transport = make(max_unconsumed=2, publish_timeout_s=0.3)
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
    assert transport.length(stream) == 2


def test_id_hint_makes_publish_idempotent(transport):
    stream = transport.stream("scored")
    first = transport.publish(stream, b"a", id_hint="t-1")
    assert transport.publish(stream, b"a", id_hint="t-1") == first
    assert transport.publish(stream, b"b", id_hint="t-2") != first
    assert transport.length(stream) == 2


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
    assert [m for m, _ in transport.scan(stream)] == ids[3:]


def test_newest_reads_without_consuming(transport):
    stream = transport.stream("trajectories")
    transport.ensure_group(stream, GROUP)
    ids = [transport.publish(stream, encode(_traj(i))) for i in range(3)]
    junk = transport.publish(stream, b"junk")
    assert [m for m, _ in transport.newest(stream, 2)] == [junk, ids[2]]  # newest first
    assert [t.trajectory_id for t in transport.newest_decoded(stream, 3, decode)] == ["t-2", "t-1"]  # junk skipped
    assert transport.backlog(stream) == Backlog(4, GROUP) and transport.counters() == {}  # nothing consumed


def test_blocking_calls_keep_a_timeout(server):
    cfg = {"url": server.url, "namespace": f"t{uuid.uuid4().hex[:8]}", "max_unconsumed": 1, "publish_timeout_s": 60}
    with BlockingTransport(from_config(cfg), timeout_s=0.3) as t:
        stream = t.stream("scored")
        t.publish(stream, b"1")
        with pytest.raises(TransportError, match="publish on .* did not finish within 0.3 s"):
            t.publish(stream, b"2")  # backpressure: nobody consumes, publish would wait 60 s
        assert t.length(stream) == 1
        with pytest.raises(AttributeError):
            t._client  # only the transport's public operations pass through


def test_async_transport(server):
    async def run():
        ns = f"a{uuid.uuid4().hex[:8]}"
        async with from_config({"url": server.url, "namespace": ns, "max_unconsumed": 2,
                                "publish_timeout_s": 5}) as t:
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
        _ping({"url": bare_url, "namespace": "n"})
    with pytest.raises(TransportError, match="refused authentication") as e:
        with BlockingTransport(RedisTransport(TransportConfig(url=bare_url, namespace="n"),
                                              password="wrong-password")) as t:
            t.ping()
    assert server.password not in str(e.value)

    monkeypatch.setenv("MY_PW", server.password)  # the password from the variable password_env names
    _ping({"url": bare_url, "namespace": "n", "password_env": "MY_PW"})
    secret = tmp_path / "pw"
    secret.write_text(server.password + "\n")  # ... or from password_file
    _ping({"url": bare_url, "namespace": "n", "password_env": "UNSET_VAR", "password_file": str(secret)})
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
    with pytest.raises(TransportConfigError, match="transport.max_unconsumd: Key 'max_unconsumd' not in"):
        from_config({"url": server.url, "namespace": "n", "max_unconsumd": 5})  # misspelt: refused
    with pytest.raises(TransportConfigError, match="transport.publish_timeout_s: Value 'soon'"):
        from_config({"url": server.url, "namespace": "n", "publish_timeout_s": "soon"})


def test_settings_default_from_the_schema(server):
    """TransportConfig is the one place the defaults live: a mapping without them takes its values."""
    t = from_config({"url": server.url, "namespace": "n"})
    d = TransportConfig()
    assert (t.max_unconsumed, t.publish_timeout_s, t.dead_letter_maxlen, t.dedupe_ttl_s, t.socket_timeout_s) == \
        (d.max_unconsumed, d.publish_timeout_s, d.dead_letter_maxlen, d.dedupe_ttl_s, d.socket_timeout_s)
    assert from_config(TransportConfig(url=server.url, namespace="n", max_unconsumed=7)).max_unconsumed == 7


def test_secrets_never_shown(server, transport):
    pw = server.password
    assert len(pw) >= 32 and pw in server.url
    # The transport and everything it holds (its client, connection pool, scripts).
    for text in (repr(server), str(server), repr(transport), str(transport), repr(vars(transport.transport))):
        assert pw not in text
    assert "***" in repr(transport)
    # Not on disk either: the config went to the server on stdin.
    for f in server.data_dir.rglob("*"):
        if f.is_file():
            assert pw.encode() not in f.read_bytes(), f


def test_server_is_loopback_only_protected_and_persistent(server):
    config = server.running_config()
    assert config["bind"] == "127.0.0.1" and config["protected-mode"] == "yes"
    assert config["appendonly"] == "yes" and config["appendfsync"] == "everysec"


def test_acknowledged_xadds_survive_sigkill(tmp_path):
    server = EmbeddedValkey(tmp_path / "data", appendfsync="always")
    with server:
        t = BlockingTransport(from_config({"url": server.url, "namespace": "durable", "max_unconsumed": None}))
        stream = t.stream("trajectories")
        t.ensure_group(stream, GROUP)
        sent = [t.publish(stream, encode(_traj(i))) for i in range(200)]
        t.read(stream, GROUP, "c", count=50)
        t.ack(stream, GROUP, sent[:20])
        port, url = server.port, server.url
        server.kill()
        assert not server.running
        with pytest.raises(TransportError, match="cannot reach"):
            t.ping()
        server.restart()
        assert (server.port, server.url) == (port, url)
        assert [m for m, _ in t.scan(stream, count=1000)] == sent  # the same transport reconnects
        assert t.pending(stream, GROUP) == 30  # the consumer group's state came back too
        assert decode(t.read(stream, GROUP, "c", 1)[0][1]).trajectory_id == "t-50"
        assert t.publish(stream, b"after") > sent[-1]  # the Lua scripts are reloaded into the new process
        t.close()
    assert not server.running
