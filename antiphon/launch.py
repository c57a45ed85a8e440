"""Main entry point: ``antiphon [hydra overrides]`` (``make demo`` runs it with the defaults).

Composes and validates the whole config before anything starts, then runs what the system has today:
the tiny audio policy served by vLLM rollout workers on Ray, spoken prompts from the configured
simulator, behaviour log-probs checked against the learner's model, and a versioned weight broadcast.
The reward service and the PPO learner are not wired in yet; the run says so at the end.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import hydra
from omegaconf import DictConfig

from antiphon.config import ConfigError, config_dir, register, to_plain, validate

log = logging.getLogger("antiphon")


def say(msg: str) -> None:
    print(f"[antiphon] {msg}", flush=True)


def init_ray(cluster: DictConfig, num_cpus_needed: float) -> None:
    import ray

    if cluster.address:
        ray.init(address=cluster.address, namespace=cluster.namespace, log_to_driver=cluster.log_to_driver)
    else:
        num_cpus = cluster.num_cpus or max(int(num_cpus_needed + 0.999), os.cpu_count() or 1)
        ray.init(num_cpus=num_cpus, namespace=cluster.namespace, include_dashboard=cluster.include_dashboard,
                 log_to_driver=cluster.log_to_driver)


@contextlib.contextmanager
def transport_for_run(cfg: DictConfig, run_dir: Path):
    """The run's transport config as a plain dict with a usable ``url``: the configured server, or an
    embedded Valkey (loopback, generated password, AOF on) that lives as long as the block."""
    tcfg = to_plain(cfg.transport)
    if tcfg.get("url"):
        yield tcfg
        return
    from antiphon.transport import EmbeddedValkey

    data_dir = Path(tcfg.get("data_dir") or run_dir / "valkey")
    with EmbeddedValkey(data_dir, appendfsync=tcfg["appendfsync"]) as server:
        say(f"embedded Valkey on {server!r}, data in {data_dir}")
        yield dict(tcfg, url=server.url)


def validated_run_dir(cfg: DictConfig, prog: str) -> Path:
    """Validates the composed config (exit 2 with every problem named, before anything starts) and
    returns the run directory."""
    from hydra.core.hydra_config import HydraConfig

    try:
        validate(cfg)
    except ConfigError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        sys.exit(2)
    return Path(cfg.experiment.run_dir or HydraConfig.get().runtime.output_dir)


def shutdown_workers(workers: List[Any]) -> None:
    import ray

    for w in workers:
        try:
            ray.get(w.shutdown.remote(), timeout=30)
        except Exception:  # a dead worker has nothing left to shut down
            pass
    ray.shutdown()


def load_scenarios(sim_cfg: DictConfig, seed: int):
    from simulator.scenarios import generate_scenarios, read_jsonl

    if sim_cfg.scenarios:
        return read_jsonl(sim_cfg.scenarios)
    return generate_scenarios(sim_cfg.num_scenarios, seed=sim_cfg.seed + seed, max_turns=sim_cfg.max_turns)


def collect(reader, stream: str, group: str, expected: int, decode_fn, timeout_s: float = 120.0):
    """Reads ``expected`` messages from the stream through ``group`` (bad ones are dead-lettered)."""
    got, deadline = [], time.monotonic() + timeout_s
    while len(got) < expected and time.monotonic() < deadline:
        batch = reader.consume_validated(stream, group, "launcher", decode_fn, count=64, block_ms=200)
        if batch:
            reader.ack(stream, group, [i for i, _ in batch])
            got += [t for _, t in batch]
    return got


def reward_summary(scored) -> Dict[str, float]:
    """Mean total reward, and each component's mean raw value over the entries it applied to."""
    import numpy as np

    if not scored:
        return {}
    out = {"reward/total": float(np.mean([s.rewards.total for s in scored]))}
    names = sorted({n for s in scored for n in s.rewards.components})
    for n in names:
        vals = [v for s in scored if n in s.rewards.components
                for v, a in zip(s.rewards.components[n]["raw"], s.rewards.components[n]["applicable"]) if a]
        if vals:
            out[f"reward/{n}"] = float(np.mean(vals))
    return out


def run(cfg: DictConfig, run_dir: Path) -> Dict[str, Any]:
    import numpy as np
    import ray
    import torch
    import transformers

    from actors import broadcast_weights, launch_workers
    from antiphon.listen import write_dialogues
    from antiphon.model.tiny import resolve_model_path
    from antiphon.protocol import decode, decode_scored
    from antiphon.transport import from_config
    from learner.policy import PolicyModel, behaviour_gap

    transformers.utils.logging.disable_progress_bar()
    run_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    model_path = resolve_model_path(cfg.model)
    say(f"policy: {model_path}")
    rollout_cfg, model_cfg, sim_cfg = to_plain(cfg.rollout), to_plain(cfg.model), to_plain(cfg.simulator)
    scenarios = load_scenarios(cfg.simulator, cfg.experiment.seed)

    scoring = bool(cfg.reward.components)
    reward_cfg = to_plain(cfg.reward)
    with transport_for_run(cfg, run_dir) as tcfg:
        reader = from_config(tcfg)
        # With reward components, the launcher reads what the reward service scored; else the raw stream.
        stream, group = reader.stream("scored" if scoring else "trajectories"), "launcher"
        reader.ensure_group(stream, group)
        init_ray(cfg.cluster, cfg.rollout.num_workers * cfg.rollout.num_cpus_per_worker
                 + (0.5 * cfg.reward.replicas if scoring else 0))
        workers: List[Any] = []
        replicas: List[Any] = []
        replica_runs: List[Any] = []
        try:
            t0 = time.perf_counter()
            workers = launch_workers(str(model_path), rollout_cfg, model_cfg)
            say(f"{len(workers)} rollout workers ready in {time.perf_counter() - t0:.1f}s")
            if scoring:
                from reward_service.replica import launch_replicas

                replicas, replica_runs = launch_replicas(tcfg, reward_cfg)
                say(f"{len(replicas)} reward service replicas scoring with "
                    f"{[c.get('name') or c['_target_'].rsplit('.', 1)[-1] for c in reward_cfg['components']]}")
            policy = PolicyModel(model_path, device=cfg.learner.device.value, dtype=cfg.learner.dtype.value,
                                 temperature=cfg.rollout.temperature)
            torch.manual_seed(cfg.experiment.seed)

            rounds, trajs_all = [], []
            version = 0
            per_round = cfg.experiment.dialogues_per_round
            for r in range(cfg.experiment.rounds):
                batch = [scenarios[(r * per_round + i) % len(scenarios)].to_dict() for i in range(per_round)]
                shards = [batch[i::len(workers)] for i in range(len(workers))]
                t0 = time.perf_counter()
                outs = ray.get([w.run_dialogues.remote(s, sim_cfg, cfg.experiment.name, tcfg)
                                for w, s in zip(workers, shards)])
                wall = time.perf_counter() - t0
                published = sum(o["published"] for o in outs)
                if scoring:
                    scored = collect(reader, stream, group, published, decode_scored)
                    trajs = [x.trajectory for x in scored]
                else:
                    scored, trajs = [], collect(reader, stream, group, published, decode)
                reasons: Dict[str, int] = {}
                for o in outs:
                    for k, v in o["end_reasons"].items():
                        reasons[k] = reasons.get(k, 0) + v
                gap = behaviour_gap(policy, trajs) if trajs else float("nan")
                agent_turns = sum(t.num_agent_turns for t in trajs)
                feedback = [u.feedback for t in trajs for u in t.turns if u.role == "user" and u.feedback is not None]
                audio_s = sum(u.audio.seconds for t in trajs for u in t.turns if u.role == "user" and u.audio)
                rounds.append({"round": r, "weight_version": version, "dialogues": len(batch),
                               "published": published, "trajectories": len(trajs), "agent_turns": agent_turns,
                               "policy_tokens": int(sum(t.policy_mask.sum() for t in trajs)),
                               "user_audio_s": round(audio_s, 1), "wall_s": round(wall, 2),
                               "turns_per_s": round(agent_turns / wall, 2), "end_reasons": reasons,
                               "mean_user_feedback": float(np.mean(feedback)) if feedback else None,
                               "max_abs_logprob_diff": gap, **reward_summary(scored)})
                say(f"round {r}: {len(trajs)}/{len(batch)} spoken dialogues through the stream, {agent_turns} "
                     f"agent turns ({audio_s:.0f}s of user audio) in {wall:.1f}s at weight version {version}; "
                     f"end reasons {reasons}; mean user feedback "
                     f"{np.mean(feedback) if feedback else float('nan'):.2f}; "
                     f"max |behaviour - learner log-prob| = {gap:.2e}")
                if scored:
                    say(f"  rewards: total {rounds[-1]['reward/total']:.3f}; " + ", ".join(
                        f"{k} {v:.3f}" for k, v in rounds[-1].items() if k.startswith("reward/") and k != "reward/total"))
                trajs_all += trajs
                if r + 1 < cfg.experiment.rounds:
                    # Exercise the broadcast path with a synthetic update (noise, not a learning step).
                    with torch.no_grad():
                        for p in policy.model.parameters():
                            p.add_(torch.randn_like(p) * 0.02)
                    version += 1
                    load_s = broadcast_weights(workers, policy.state_dict_for_rollout(), version)
                    say(f"broadcast weight version {version} to {len(workers)} workers "
                         f"(load {max(load_s):.3f}s max)")
            counters: Dict[str, Any] = dict(reader.counters())
            if replicas:
                from reward_service.replica import stop_replicas

                counters["reward_replicas"] = stop_replicas(replicas, replica_runs)
        finally:
            shutdown_workers(workers)
            reader.close()

    listen_dir = write_dialogues(trajs_all[:4], run_dir / "dialogues", policy.tokenizer)
    summary = {
        "what_ran": "spoken multi-turn dialogues: vLLM rollout workers on Ray talked with simulated, voiced "
                    "users and streamed the trajectories through Redis"
                    + (f"; {cfg.reward.replicas} reward service replica(s) scored every agent turn and dialogue"
                       if scoring else "")
                    + "; behaviour log-probs were checked against the learner's model over whole dialogues; "
                    "weights were perturbed (not trained) and broadcast between rounds",
        "not_yet": "PPO learner" if scoring else "reward scoring (reward.components is empty), PPO learner",
        "model_path": str(model_path), "num_workers": cfg.rollout.num_workers, "rounds": rounds,
        "stream": stream, "transport_counters": counters, "listen": str(listen_dir),
        "wall_s": round(time.perf_counter() - t_start, 1), "run_dir": str(run_dir),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


register()


@hydra.main(config_path=config_dir(), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    summary = run(cfg, validated_run_dir(cfg, "antiphon"))
    run_dir = Path(summary["run_dir"])
    say(f"done in {summary['wall_s']}s. What ran: {summary['what_ran']}.")
    say(f"Not wired in yet: {summary['not_yet']}. Outputs: {run_dir}/summary.json; "
         f"listen to some dialogues in {summary['listen']}")


if __name__ == "__main__":
    main()
