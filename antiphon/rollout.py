"""Rollouts only: run ``experiment.rounds x experiment.dialogues_per_round`` spoken dialogues, append them
to the run's trajectory stream, and exit. Nothing trains; the stream keeps them for a reward service,
a learner, or ``python -m antiphon.dump`` to listen to.

    .venv/bin/antiphon-rollout experiment.dialogues_per_round=32 transport.url=redis://host:6379/0
"""
from __future__ import annotations

import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

from antiphon.config import config_dir, register, to_dataclass
from antiphon.run_setup import init_ray, load_scenarios, say, shutdown_workers, transport_for_run, validated_run_dir


def rollout(cfg: DictConfig, run_dir: Path) -> dict:
    import ray

    from actors import launch_workers
    from antiphon.model.tiny import resolve_model_path

    run_dir.mkdir(parents=True, exist_ok=True)
    model_path = resolve_model_path(cfg.model)
    scenarios = load_scenarios(cfg.simulator, cfg.experiment.seed)
    n = cfg.experiment.rounds * cfg.experiment.dialogues_per_round
    batch = [scenarios[i % len(scenarios)].to_dict() for i in range(n)]
    with transport_for_run(cfg, run_dir) as tcfg:
        init_ray(cfg.cluster, cfg.rollout.num_workers * cfg.rollout.num_cpus_per_worker)
        workers = []
        try:
            workers = launch_workers(str(model_path), to_dataclass(cfg.rollout), to_dataclass(cfg.model))
            t0 = time.perf_counter()
            outs = ray.get([w.run_dialogues.remote(batch[i::len(workers)], to_dataclass(cfg.simulator),
                                                   cfg.experiment.name, tcfg) for i, w in enumerate(workers)])
            wall = time.perf_counter() - t0
        finally:
            shutdown_workers(workers)
    reasons: dict = {}
    for o in outs:
        for k, v in o["end_reasons"].items():
            reasons[k] = reasons.get(k, 0) + v
    return {"dialogues": n, "published": sum(o["published"] for o in outs), "end_reasons": reasons,
            "wall_s": round(wall, 1), "namespace": cfg.transport.namespace, "embedded": not cfg.transport.url}


register()


@hydra.main(config_path=config_dir(), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    import sys

    from antiphon.run_plan import dry_run

    run_dir = validated_run_dir(cfg, "antiphon-rollout")
    if dry_run(cfg, run_dir, "antiphon-rollout"):
        return
    res = rollout(cfg, run_dir)
    say(f"{res['published']}/{res['dialogues']} dialogues appended to antiphon:{res['namespace']}:trajectories "
         f"in {res['wall_s']}s; end reasons {res['end_reasons']}")
    where = f"--data-dir {run_dir / 'valkey'}" if res["embedded"] else "--url <transport.url>"
    say(f"listen: {Path(sys.executable).parent / 'antiphon-dump'} {where} --namespace {res['namespace']} "
        f"--out {run_dir / 'dialogues'}")


if __name__ == "__main__":
    main()
