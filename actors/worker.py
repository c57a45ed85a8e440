"""The rollout worker: a Ray actor that owns one vLLM engine.

Many generate calls run concurrently inside one actor (an async actor), and vLLM batches them.
Weights arrive as a versioned state dict in checkpoint naming -- typically one ``ray.put`` by the
learner that every worker reads from the object store -- and are loaded in place between requests.
"""
from __future__ import annotations

import logging
import os
import socket
from typing import Any, Dict, List, Mapping

from antiphon.generation import GenerationRequest, GenerationResult


class RolloutWorker:
    def __init__(self, index: int, model_path: str, rollout_cfg: Mapping[str, Any], model_cfg: Mapping[str, Any]):
        self.index = int(index)
        self.model_path = str(model_path)
        self.rollout_cfg = dict(rollout_cfg)
        self.model_cfg = dict(model_cfg)
        # Each worker samples from its own stream: the same seed in two engines gives identical samples.
        self.seed = int(rollout_cfg["seed"]) + self.index
        self.engine = None

    async def start(self) -> Dict[str, Any]:
        from actors.engine import RolloutEngine

        if self.engine is None:
            self.engine = await RolloutEngine.create(self.model_path, self.rollout_cfg, self.model_cfg, self.seed)
        return self.info()

    def info(self) -> Dict[str, Any]:
        return {"index": self.index, "seed": self.seed, "pid": os.getpid(), "host": socket.gethostname(),
                "weight_version": self.engine.version if self.engine else None}

    async def generate(self, requests: List[GenerationRequest]) -> List[GenerationResult]:
        return await self.engine.generate_batch(list(requests))

    async def load_weights(self, state_dict: Mapping[str, Any], version: int) -> float:
        return await self.engine.load_weights(state_dict, version)

    def weight_version(self) -> int:
        return self.engine.version

    def shutdown(self) -> None:
        if self.engine is not None:
            self.engine.shutdown()
            self.engine = None


def launch_workers(model_path: str, rollout_cfg: Mapping[str, Any], model_cfg: Mapping[str, Any],
                   num_workers: int | None = None) -> List[Any]:
    """Starts ``rollout.num_workers`` RolloutWorker actors (engines ready on return). Needs ``ray.init()``."""
    import ray

    from actors.engine import engine_env

    n = int(num_workers if num_workers is not None else rollout_cfg["num_workers"])
    actor_cls = ray.remote(RolloutWorker).options(
        num_cpus=float(rollout_cfg["num_cpus_per_worker"]),
        num_gpus=float(rollout_cfg["num_gpus_per_worker"]),
        runtime_env={"env_vars": engine_env(rollout_cfg)},
        max_concurrency=1000,  # many dialogues' requests in flight at once
    )
    cpus, gpus = float(rollout_cfg["num_cpus_per_worker"]), float(rollout_cfg["num_gpus_per_worker"])
    total = ray.cluster_resources()
    if n * cpus > total.get("CPU", 0) or n * gpus > total.get("GPU", 0):
        # Not an error: an autoscaling cluster grows to fit. The start-up timeout below bounds the wait.
        logging.getLogger("antiphon").warning(
            "rollout.num_workers=%d x (num_cpus_per_worker=%s, num_gpus_per_worker=%s) exceeds the Ray cluster's "
            "current CPU=%s, GPU=%s; waiting up to rollout.startup_timeout_s for resources", n, cpus, gpus,
            total.get("CPU", 0), total.get("GPU", 0))
    workers = [actor_cls.remote(i, model_path, rollout_cfg, model_cfg) for i in range(n)]
    timeout = float(rollout_cfg["startup_timeout_s"])
    try:
        ray.get([w.start.remote() for w in workers], timeout=timeout)
    except ray.exceptions.GetTimeoutError:
        for w in workers:
            ray.kill(w)
        raise TimeoutError(f"rollout workers not ready after rollout.startup_timeout_s={timeout}; Ray has "
                           f"{ray.available_resources()} free for {n} x {cpus} CPU / {gpus} GPU") from None
    return workers


def broadcast_weights(workers: List[Any], state_dict: Mapping[str, Any], version: int) -> List[float]:
    """One object-store put, every worker loads it; returns each worker's load time (s)."""
    import ray

    ref = ray.put(dict(state_dict))
    return ray.get([w.load_weights.remote(ref, version) for w in workers])
