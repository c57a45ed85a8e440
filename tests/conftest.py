"""Shared fixtures. Expensive start-ups are shared by every test that does not need a fresh one: the tiny
policy is built once per session, one Ray instance serves the in-process actor tests and the launcher runs
(``ray_address``), and one pair of rollout workers (``rollout_pair``) serves the worker tests. Tests that
break what they start (killing a server, a replica) start their own."""
from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest

REPO = Path(__file__).resolve().parents[1]

# Tests never touch the user's cache or run folders.
_TMP = Path(tempfile.mkdtemp(prefix="antiphon-tests-"))
os.environ.setdefault("ANTIPHON_CACHE", str(_TMP / "cache"))
os.environ.setdefault("ANTIPHON_RUNS", str(_TMP / "runs"))
os.environ.setdefault("OMP_NUM_THREADS", "1")  # docs/cpu-stack.md: default OpenMP threading is erratic on 2 cores
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Logical CPUs of the session's Ray instance: room for what a launcher run reserves on it (the default
# experiment: 2 rollout workers + the learner + half a CPU per reward replica). Reservations, not cores.
RAY_CPUS = 4


# -- session fixtures released after their last test ----------------------------------------------------
# An idle pair of vLLM engines or an idle Ray instance would hold memory and CPU through the rest of the
# suite, so these are released right after the last collected test that uses them, dependents first.
_RELEASE_ORDER = ("rollout_pair", "ray_local")
_release: Dict[str, Callable[[], None]] = {}
_last_user: Dict[str, str] = {}  # fixture name -> node id of the last selected test that uses it


# `make test` runs two pytest-xdist workers (--dist loadgroup), and a group runs on one worker in file
# order: every test that uses the session's Ray instance or rollout pair is in one group (the release hook
# below counts on that order), every other module is a group of its own (module fixtures are built once,
# and a module's tests may build on each other, e.g. the README's commands), so the two workers run whole
# modules beside each other.
SERIAL_FIXTURES = {"ray_local", "ray_address", "rollout_pair"}


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(items):
    # Before every other implementation: xdist reads the group marks in its own.
    for item in items:
        shared = SERIAL_FIXTURES & set(getattr(item, "fixturenames", ()))
        item.add_marker(pytest.mark.xdist_group("engines" if shared else item.nodeid.split("::")[0]))
    result = yield
    # After them all (-m/-k deselection included): the order that will run.
    _last_user.clear()
    for item in items:
        for name in _RELEASE_ORDER:
            if name in getattr(item, "fixturenames", ()):
                _last_user[name] = item.nodeid
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    result = yield  # the test's own function and module fixtures are torn down first
    for name in _RELEASE_ORDER:
        if _last_user.get(name) == item.nodeid and name in _release:
            _release.pop(name)()
    return result


@pytest.fixture(scope="session")
def tiny_path() -> Path:
    from antiphon.config.schema import TinyModelConfig
    from antiphon.model.tiny import ensure_tiny_policy

    return ensure_tiny_policy(dataclasses.asdict(TinyModelConfig()), os.environ["ANTIPHON_CACHE"])


@pytest.fixture(scope="session")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=RAY_CPUS, include_dashboard=False, namespace="antiphon-tests", log_to_driver=False)
    _release["ray_local"] = ray.shutdown
    yield ray
    _release.pop("ray_local", ray.shutdown)()


@pytest.fixture(scope="session")
def ray_address(ray_local) -> str:
    """The session Ray instance's address, for launcher runs: ``cluster.address=<it>`` connects in a
    fraction of a second where starting a fresh instance takes 10-20 s on 2 cores. A run whose actors need
    the launcher's own environment (e.g. a ``PYTHONPATH`` set for it) starts its own instance instead:
    actors inherit the environment of the process that started Ray."""
    return ray_local.get_runtime_context().gcs_address


class RolloutPair:
    """Two rollout workers at weight version 0 with one test config, handed to one test module after
    another instead of a vLLM engine start (~20-60 s each on 2 cores) per module.

    ``acquire`` checks that they still serve the base policy: a module that broadcast new weights leaves
    them at a later version, and the next module gets fresh workers. A worker keeps the transport of its
    first streaming run, so a module that streams to another server or namespace gets fresh ones too."""

    OVERRIDES = ["rollout.num_workers=2", "rollout.max_new_tokens=48", "rollout.dialogue.think_budget=16",
                 "rollout.dialogue.max_concurrent=16"]

    def __init__(self, ray, tiny_path: Path):
        self.ray, self.tiny_path = ray, tiny_path
        self.workers: List[Any] = []
        self.transport: Optional[Tuple[str, str]] = None

    def acquire(self, transport: Optional[Any] = None) -> List[Any]:
        """The workers at weight version 0; ``transport`` (a ``TransportConfig``): the one this module streams to."""
        key = (transport.url, transport.namespace) if transport is not None else None
        if self.workers:
            versions = self.ray.get([w.weight_version.remote() for w in self.workers])
            if any(versions) or (key is not None and self.transport not in (None, key)):
                self.close()
        if not self.workers:
            from actors import launch_workers
            from antiphon.config import compose, to_dataclass

            cfg = compose(self.OVERRIDES)
            self.workers = launch_workers(str(self.tiny_path), to_dataclass(cfg.rollout), to_dataclass(cfg.model))
        if key is not None:
            self.transport = key
        return list(self.workers)

    def close(self) -> None:
        workers, self.workers, self.transport = self.workers, [], None
        if not workers:
            return
        try:
            self.ray.get([w.shutdown.remote() for w in workers], timeout=60)
        finally:
            for w in workers:
                self.ray.kill(w)


@pytest.fixture(scope="session")
def rollout_pair(tiny_path, ray_local) -> RolloutPair:
    pair = RolloutPair(ray_local, tiny_path)
    _release["rollout_pair"] = pair.close
    yield pair
    _release.pop("rollout_pair", pair.close)()
