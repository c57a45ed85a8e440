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
import time
from collections import defaultdict


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dialogues", type=int, default=48)
    ap.add_argument("--reward", default="default")
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    from antiphon.config import to_dataclass
    from antiphon.protocol import decode_scored
    from antiphon.transport import from_config
    from one_worker import one_rollout_worker, scenarios
    from reward_service.compose import build_specs
    from reward_service.service import RewardService

    overrides = [f"reward={args.reward}", f"reward.batch_size={args.batch_size}",
                 "rollout.dialogue.max_concurrent=16"]
    with one_rollout_worker(overrides, namespace="rbench") as bench:
        cfg, tcfg = bench.cfg, bench.transport_cfg
        t0 = time.perf_counter()
        out = bench.run(scenarios(args.dialogues, seed=1), publish=True, run="rbench")
        worker_rate = out["published"] / (time.perf_counter() - t0)
        bench.stop_worker()  # the replica is timed alone

        async def score_all():
            t = from_config(tcfg)
            svc = RewardService(t, build_specs(to_dataclass(cfg.reward).components), replica="bench",
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
        per_comp, batches = defaultdict(float), set()
        for payload in bench.stream_payloads("scored")[args.batch_size:]:
            s = decode_scored(payload)
            key = (s.rewards.service["replica"], s.rewards.service["score_s"])
            if key in batches:
                continue  # a batch's component timings are repeated on each of its trajectories
            batches.add(key)
            for name, c in s.rewards.components.items():
                per_comp[name] += c["seconds"]

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
