"""Reward service throughput: scored trajectories/s of one replica, per-component cost, and whether one
replica keeps up with two rollout workers.

Phase 1 produces real trajectories: one Ray rollout worker (vLLM, 1 CPU) runs N spoken 3-turn dialogues
into a Redis stream (embedded Valkey), timed -> the worker's trajectories/s. Phase 2 runs one reward
replica (the service loop, in this process) over that stream with the configured components
(``reward=default`` unless given), timed -> scored/s, and each component's share of scoring time.

    .venv/bin/python benchmarks/reward_throughput.py [--dialogues 48] [--reward default]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from collections import defaultdict


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dialogues", type=int, default=48)
    ap.add_argument("--reward", default="default")
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    import ray

    from actors import launch_workers
    from antiphon.config import compose, to_plain
    from antiphon.model.tiny import resolve_model_path
    from antiphon.protocol import decode_scored
    from antiphon.transport import EmbeddedValkey, from_config
    from reward_service.compose import build_specs
    from reward_service.service import RewardService
    from simulator.scenarios import generate_scenarios

    cfg = compose([f"reward={args.reward}", f"reward.batch_size={args.batch_size}", "transport.namespace=rbench",
                   "rollout.dialogue.max_concurrent=16"])
    path = str(resolve_model_path(cfg.model))
    with tempfile.TemporaryDirectory() as tmp, EmbeddedValkey(tmp) as server:
        tcfg = dict(to_plain(cfg.transport), url=server.url)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        (worker,) = launch_workers(path, to_plain(cfg.rollout), to_plain(cfg.model), num_workers=1)
        sim = to_plain(cfg.simulator)
        ray.get(worker.run_dialogues.remote([s.to_dict() for s in generate_scenarios(8, seed=99)], sim, "w", None))
        t0 = time.perf_counter()
        out = ray.get(worker.run_dialogues.remote(
            [s.to_dict() for s in generate_scenarios(args.dialogues, seed=1)], sim, "rbench", tcfg))
        worker_rate = out["published"] / (time.perf_counter() - t0)
        ray.get(worker.shutdown.remote())
        ray.shutdown()

        async def score_all():
            t = from_config(tcfg, asynchronous=True)
            svc = RewardService(t, build_specs(to_plain(cfg.reward)["components"]), replica="bench",
                                batch_size=args.batch_size, block_ms=50)
            await svc.start()
            await svc.step()  # warm-up batch (model loads, JIT)
            t0 = time.perf_counter()
            while await svc.step():
                pass
            wall = time.perf_counter() - t0
            await t.close()
            return svc.stats["scored"] - min(svc.stats["scored"], args.batch_size), wall

        scored_n, wall = asyncio.run(score_all())
        reader = from_config(tcfg)
        per_comp, batches = defaultdict(float), set()
        for _, payload in reader.scan(reader.stream("scored"), count=10_000)[args.batch_size:]:
            s = decode_scored(payload)
            key = (s.rewards.service["replica"], s.rewards.service["score_s"])
            if key in batches:
                continue  # a batch's component timings are repeated on each of its trajectories
            batches.add(key)
            for name, c in s.rewards.components.items():
                per_comp[name] += c["seconds"]
        reader.close()

    rate = scored_n / wall
    print(f"rollout worker (1 CPU): {worker_rate:.2f} trajectories/s ({args.dialogues} dialogues)")
    print(f"reward replica (1 process, batch {args.batch_size}, reward={args.reward}): {rate:.2f} scored/s "
          f"({scored_n} trajectories in {wall:.1f}s)")
    print(f"replica / (2 x worker): {rate / (2 * worker_rate):.2f}")
    total = sum(per_comp.values()) or 1.0
    print("| component | seconds (summed over batches) | share |\n|---|---|---|")
    for name, secs in sorted(per_comp.items(), key=lambda kv: -kv[1]):
        print(f"| {name} | {secs:.2f} | {100 * secs / total:.0f}% |")


if __name__ == "__main__":
    main()
