"""What every entry point that starts a run does first: check the config and find the run directory,
start (or join) Ray, bring up the transport (the configured server or an embedded Valkey), and load the
scenario set. Shared by ``antiphon`` (train) and ``antiphon-rollout`` (rollouts only).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any, List

from omegaconf import DictConfig

from antiphon.config import ConfigError, discard_hydra_run_dir, to_dataclass, validate


def say(msg: str) -> None:
    print(f"[antiphon] {msg}", flush=True)


def validated_run_dir(cfg: DictConfig, prog: str) -> Path:
    """Validates the composed config (exit 2 with every problem named, before anything starts) and
    returns the run directory."""
    from hydra.core.hydra_config import HydraConfig

    try:
        validate(cfg)
    except ConfigError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        discard_hydra_run_dir()  # a rejected config leaves nothing behind
        sys.exit(2)
    return Path(cfg.experiment.run_dir or HydraConfig.get().runtime.output_dir)


def init_ray(cluster: DictConfig, num_cpus_needed: float) -> None:
    import ray

    if cluster.address:
        ray.init(address=cluster.address, namespace=cluster.namespace, log_to_driver=cluster.log_to_driver)
    else:
        num_cpus = cluster.num_cpus or max(int(num_cpus_needed + 0.999), os.cpu_count() or 1)
        ray.init(num_cpus=num_cpus, namespace=cluster.namespace, include_dashboard=cluster.include_dashboard,
                 log_to_driver=cluster.log_to_driver)


def shutdown_workers(workers: List[Any]) -> None:
    import ray

    # All at once: an engine's shutdown mostly waits for its engine process to exit (~5 s on CPU).
    pending = [w.shutdown.remote() for w in workers]
    for ref in pending:
        try:
            ray.get(ref, timeout=30)
        except Exception:  # a dead worker has nothing left to shut down
            pass
    ray.shutdown()


def _multirun_job():
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    return hc.job.num if hc.mode == RunMode.MULTIRUN else None


@contextlib.contextmanager
def transport_for_run(cfg: DictConfig, run_dir: Path):
    """The run's ``TransportConfig`` with a usable ``url``: the configured server, or an
    embedded Valkey (loopback, generated password, AOF on) that lives as long as the block. In a Hydra
    multirun each job gets its own stream namespace (``<namespace>.job<N>``), even on a shared server."""
    tcfg = to_dataclass(cfg.transport)
    job = _multirun_job()
    if job is not None:
        tcfg = dataclasses.replace(tcfg, namespace=f"{tcfg.namespace}.job{job}")
    if tcfg.url:
        yield tcfg
        return
    from antiphon.transport import EmbeddedValkey

    data_dir = Path(tcfg.data_dir or run_dir / "valkey")
    with EmbeddedValkey(data_dir, appendfsync=tcfg.appendfsync) as server:
        say(f"embedded Valkey on {server!r}, data in {data_dir}")
        yield dataclasses.replace(tcfg, url=server.url)


def load_scenarios(sim_cfg: DictConfig, seed: int):
    from simulator.scenarios import generate_scenarios, read_jsonl

    if sim_cfg.scenarios:
        return read_jsonl(sim_cfg.scenarios)
    return generate_scenarios(sim_cfg.num_scenarios, seed=sim_cfg.seed + seed, max_turns=sim_cfg.max_turns)
