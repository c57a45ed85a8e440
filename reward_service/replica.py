"""Reward service replicas as Ray actors (what the launcher starts; ``reward_service.serve`` is the
same loop as a standalone process)."""
from __future__ import annotations

import asyncio
from typing import Any, Dict, List, Optional, Tuple

from antiphon.config.schema import RewardConfig


class RewardReplica:
    def __init__(self, transport_cfg: Dict[str, Any], reward_cfg: RewardConfig, name: str):
        from antiphon.affinity import pin_process
        from antiphon.config import to_dataclass

        reward_cfg = to_dataclass(reward_cfg, RewardConfig)
        pin_process(reward_cfg.cpu_affinity, "reward.cpu_affinity")
        self.transport_cfg, self.reward_cfg, self.name = transport_cfg, reward_cfg, name
        self._stop: Optional[asyncio.Event] = None

    async def run(self, max_idle_s: Optional[float] = None) -> Dict[str, Any]:
        from reward_service.serve import serve

        self._stop = asyncio.Event()
        return await serve(self.transport_cfg, self.reward_cfg, self.name, stop=self._stop, max_idle_s=max_idle_s)

    async def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()


def launch_replicas(transport_cfg: Dict[str, Any], reward_cfg: RewardConfig,
                    num_cpus: float = 0.5) -> Tuple[List[Any], List[Any]]:
    """Starts ``reward.replicas`` actors serving the run's stream; returns (actors, their run refs)."""
    import ray

    from antiphon.config import to_dataclass

    cls = ray.remote(RewardReplica).options(num_cpus=num_cpus, max_concurrency=4)
    reward_cfg = to_dataclass(reward_cfg, RewardConfig)
    actors = [cls.remote(transport_cfg, reward_cfg, f"reward-{i}") for i in range(reward_cfg.replicas)]
    return actors, [a.run.remote() for a in actors]


def stop_replicas(actors: List[Any], runs: List[Any], timeout_s: float = 60) -> List[Dict[str, Any]]:
    import ray

    ray.get([a.stop.remote() for a in actors], timeout=timeout_s)
    return ray.get(runs, timeout=timeout_s)
