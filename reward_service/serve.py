"""Reward service replica as its own process, against any Redis/Valkey URL:

    python -m reward_service.serve transport.url=redis://host:6379/0 transport.namespace=<run> \\
        reward=default +replica=reward-1

The same Hydra config as the launcher; only ``transport`` and ``reward`` are used here.
"""
from __future__ import annotations

import asyncio
import os
import socket
import sys
from typing import Any, Dict, Mapping, Optional, Union

import hydra
from omegaconf import DictConfig

from antiphon.config import (ConfigError, config_dir, discard_hydra_run_dir, register, to_dataclass,
                             validate)
from antiphon.config.schema import RewardConfig


async def serve(transport_cfg: Dict[str, Any], reward_cfg: Union[RewardConfig, Mapping[str, Any]], replica: str,
                stop: Optional[asyncio.Event] = None, max_idle_s: Optional[float] = None) -> Dict[str, Any]:
    """Runs one replica until ``stop`` (or ``max_idle_s`` without messages); returns its counts.
    ``reward_cfg``: the schema's ``RewardConfig`` (a mapping given by hand is read through it)."""
    from antiphon.transport import from_config
    from reward_service.compose import build_specs
    from reward_service.service import RewardService

    reward_cfg = to_dataclass(reward_cfg, RewardConfig)
    transport = from_config(transport_cfg)
    try:
        svc = RewardService(transport, build_specs(reward_cfg.components), replica=replica,
                            group=reward_cfg.group, batch_size=reward_cfg.batch_size,
                            claim_idle_ms=reward_cfg.claim_idle_ms, block_ms=reward_cfg.block_ms,
                            max_deliveries=reward_cfg.max_deliveries)
        return await svc.run(stop=stop, max_idle_s=max_idle_s)
    finally:
        await transport.close()


register()


@hydra.main(config_path=config_dir(), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        validate(cfg, extra_keys=("replica",))
        if not cfg.transport.url:
            raise ConfigError("transport.url=None: a standalone reward service needs the run's Redis/Valkey URL")
        if not cfg.reward.components:
            raise ConfigError("reward.components=[]: nothing to score with (e.g. reward=default)")
    except ConfigError as e:
        print(f"reward_service: {e}", file=sys.stderr)
        discard_hydra_run_dir()
        sys.exit(2)
    replica = cfg.get("replica") or f"{socket.gethostname()}-{os.getpid()}"
    counts = asyncio.run(serve(to_dataclass(cfg.transport), to_dataclass(cfg.reward), replica))
    print(f"[reward_service] {replica}: {counts}")


if __name__ == "__main__":
    main()
