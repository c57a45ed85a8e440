"""Admission control: the staleness bound holds across concurrent workers, versions open new room."""
from __future__ import annotations

import asyncio
import uuid

import pytest

from antiphon.transport import BlockingTransport, EmbeddedValkey, from_config


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with EmbeddedValkey(tmp_path_factory.mktemp("valkey")) as s:
        yield s


def _cfg(server):
    return {"url": server.url, "namespace": f"adm-{uuid.uuid4().hex[:8]}"}


def test_bound_is_staleness_plus_version_plus_one_batches(server):
    with BlockingTransport(from_config(_cfg(server))) as t:
        got = [t.try_admit(1, 4)[0] for _ in range(10)]
        assert got == list(range(8)) + [None, None]  # (1 + 0 + 1) * 4 = 8
        t.set_admission_version(1)
        assert [t.try_admit(1, 4)[0] for _ in range(5)] == [8, 9, 10, 11, None]
        t.release_admission(2)  # two dialogues ended with nothing to train: their room comes back
        assert t.try_admit(1, 4) == (12, 1)
        assert t.admission_state() == {"admitted": 11, "ticket": 13, "version": 1}  # 12 - 2 + 1
        t.reset_admission(version=3, admitted=2)  # a resumed run: only what it says is in flight
        assert t.admission_state() == {"admitted": 2, "ticket": 0, "version": 3}


def test_on_policy_admits_exactly_one_batch_per_version(server):
    with BlockingTransport(from_config(_cfg(server))) as t:
        assert sum(t.try_admit(0, 3)[0] is not None for _ in range(6)) == 3


def test_concurrent_async_workers_never_overshoot(server):
    cfg = _cfg(server)

    async def worker(n_tries):
        async with from_config(cfg) as t:
            got = []
            for _ in range(n_tries):
                ticket, _ = await t.try_admit(2, 5)
                if ticket is not None:
                    got.append(ticket)
        return got

    async def main():
        return await asyncio.gather(*(worker(20) for _ in range(6)))

    tickets = [x for g in asyncio.run(main()) for x in g]
    assert sorted(tickets) == list(range(15))  # (2 + 0 + 1) * 5, each ticket once
    with BlockingTransport(from_config(cfg)) as t:
        assert t.admission_state()["admitted"] == 15


def test_bad_bounds_name_the_field(server):
    with BlockingTransport(from_config(_cfg(server))) as t:
        with pytest.raises(ValueError, match="learner.max_staleness"):
            t.try_admit(-1, 4)
        with pytest.raises(ValueError, match="learner.batch_size"):
            t.try_admit(0, 0)
