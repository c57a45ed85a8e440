"""Shared fixtures. Heavy ones (the tiny policy, Ray, rollout workers) are built once per session."""
from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Tests never touch the user's cache or run folders.
_TMP = Path(tempfile.mkdtemp(prefix="antiphon-tests-"))
os.environ.setdefault("ANTIPHON_CACHE", str(_TMP / "cache"))
os.environ.setdefault("ANTIPHON_RUNS", str(_TMP / "runs"))
os.environ.setdefault("OMP_NUM_THREADS", "1")  # docs/cpu-stack.md: default OpenMP threading is erratic on 2 cores
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_path() -> Path:
    from antiphon.config.schema import TinyModelConfig
    from antiphon.model.tiny import ensure_tiny_policy

    return ensure_tiny_policy(dataclasses.asdict(TinyModelConfig()), os.environ["ANTIPHON_CACHE"])


@pytest.fixture(scope="session")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, namespace="antiphon-tests", log_to_driver=False)
    yield ray
    ray.shutdown()

