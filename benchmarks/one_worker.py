"""What the rollout benchmarks share: one Ray rollout worker on the tiny policy, an embedded Valkey for
its trajectories, and a warm-up round, so that the timed rounds measure steady state.

    with one_rollout_worker(["rollout.max_new_tokens=48"], namespace="bench") as bench:
        out = bench.run(scenarios(32, seed=1), publish=True)
        payloads = bench.stream_payloads("trajectories")

Imported by the scripts beside it (``benchmarks/`` is a folder of scripts, run as files).
"""
from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Sequence

WARMUP_DIALOGUES = 8


def scenarios(n: int, seed: int) -> List[Dict[str, Any]]:
    from simulator.scenarios import generate_scenarios

    return [s.to_dict() for s in generate_scenarios(n, seed=seed)]


@dataclass
class Bench:
    cfg: Any  # the composed config
    worker: Any  # the Ray actor handle
    transport_cfg: Dict[str, Any]  # the embedded Valkey's transport settings
    simulator_cfg: Dict[str, Any]

    def run(self, scenario_dicts: Sequence[Dict[str, Any]], publish: bool, run: str = "bench") -> Dict[str, Any]:
        """``RolloutWorker.run_dialogues``; with ``publish`` the trajectories go to the stream."""
        import ray

        return ray.get(self.worker.run_dialogues.remote(list(scenario_dicts), self.simulator_cfg, run,
                                                        self.transport_cfg if publish else None))

    def stop_worker(self) -> None:
        """Shuts the worker and Ray down now (the stream stays), so later timing has the machine to itself."""
        import ray

        if ray.is_initialized():
            ray.get(self.worker.shutdown.remote())
            ray.shutdown()

    def stream_payloads(self, kind: str) -> List[bytes]:
        """Every message on the ``kind`` stream, oldest first (read without consuming)."""
        from antiphon.transport import BlockingTransport, from_config

        reader = BlockingTransport(from_config(self.transport_cfg))
        try:
            return [p for _, p in reader.scan(reader.stream(kind), count=10_000)]
        finally:
            reader.close()


@contextlib.contextmanager
def one_rollout_worker(overrides: Sequence[str], namespace: str) -> Iterator[Bench]:
    """Composes the config with ``overrides``, starts Valkey (temp dir), Ray (2 CPUs) and one rollout
    worker, runs ``WARMUP_DIALOGUES`` unpublished dialogues, and tears everything down on exit."""
    import ray

    from actors import launch_workers
    from antiphon.config import compose, to_dataclass
    from antiphon.model.tiny import resolve_model_path
    from antiphon.transport import EmbeddedValkey

    cfg = compose([*overrides, f"transport.namespace={namespace}"])
    path = str(resolve_model_path(cfg.model))
    with tempfile.TemporaryDirectory() as tmp, EmbeddedValkey(tmp) as server:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            (worker,) = launch_workers(path, to_dataclass(cfg.rollout), to_dataclass(cfg.model), num_workers=1)
            bench = Bench(cfg, worker, dataclasses.replace(to_dataclass(cfg.transport), url=server.url), to_dataclass(cfg.simulator))
            bench.run(scenarios(WARMUP_DIALOGUES, seed=99), publish=False, run="warmup")
            yield bench
            bench.stop_worker()
        finally:
            ray.shutdown()
