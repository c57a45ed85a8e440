"""Admission control: the staleness bound holds across concurrent workers, versions open new room."""
from __future__ import annotations

import asyncio
import uuid

import pytest

from antiphon.transport import Admission, AsyncAdmission, EmbeddedValkey, from_config


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with EmbeddedValkey(tmp_path_factory.mktemp("valkey")) as s:
        yield s


def _cfg(server):
    return {"url": server.url, "namespace": f"adm-{uuid.uuid4().hex[:8]}"}


def test_bound_is_staleness_plus_version_plus_one_batches(server):
    t = from_config(_cfg(server))
    adm = Admission(t)
    got = [adm.try_admit(1, 4)[0] for _ in range(10)]
    assert got == list(range(8)) + [None, None]  # (1 + 0 + 1) * 4 = 8
    adm.set_version(1)
    assert [adm.try_admit(1, 4)[0] for _ in range(5)] == [8, 9, 10, 11, None]
    adm.release(2)  # two dialogues ended with nothing to train: their room comes back
    assert adm.try_admit(1, 4) == (12, 1)
    assert adm.state() == {"admitted": 11, "ticket": 13, "version": 1}  # 12 - 2 + 1
    t.close()


def test_on_policy_admits_exactly_one_batch_per_version(server):
    t = from_config(_cfg(server))
    adm = Admission(t)
    assert sum(adm.try_admit(0, 3)[0] is not None for _ in range(6)) == 3
    t.close()


def test_concurrent_async_workers_never_overshoot(server):
    cfg = _cfg(server)

    async def worker(n_tries):
        t = from_config(cfg, asynchronous=True)
        adm = AsyncAdmission(t)
        got = []
        for _ in range(n_tries):
            ticket, _ = await adm.try_admit(2, 5)
            if ticket is not None:
                got.append(ticket)
        await t.close()
        return got

    async def main():
        return await asyncio.gather(*(worker(20) for _ in range(6)))

    tickets = [x for g in asyncio.run(main()) for x in g]
    assert sorted(tickets) == list(range(15))  # (2 + 0 + 1) * 5, each ticket once
    t = from_config(cfg)
    assert Admission(t).state()["admitted"] == 15
    t.close()


def test_bad_bounds_name_the_field(server):
    t = from_config(_cfg(server))
    with pytest.raises(ValueError, match="learner.max_staleness"):
        Admission(t).try_admit(-1, 4)
    with pytest.raises(ValueError, match="learner.batch_size"):
        Admission(t).try_admit(0, 0)
    t.close()
