"""Main entry point: ``antiphon [hydra overrides]`` (``make demo`` runs it with the defaults).

Composes and validates the whole config before anything starts, then runs what the system has today:
the tiny audio policy served by vLLM rollout workers on Ray, spoken prompts from the configured
simulator, behaviour log-probs checked against the learner's model, and a versioned weight broadcast.
The reward service and the PPO learner are not wired in yet; the run says so at the end.
"""
from __future__ import annotations

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


def _say(msg: str) -> None:
    print(f"[antiphon] {msg}", flush=True)


def _init_ray(cluster: DictConfig, num_cpus_needed: float) -> None:
    import ray

    if cluster.address:
        ray.init(address=cluster.address, namespace=cluster.namespace, log_to_driver=cluster.log_to_driver)
    else:
        num_cpus = cluster.num_cpus or max(int(num_cpus_needed + 0.999), os.cpu_count() or 1)
        ray.init(num_cpus=num_cpus, namespace=cluster.namespace, include_dashboard=cluster.include_dashboard,
                 log_to_driver=cluster.log_to_driver)


def run(cfg: DictConfig, run_dir: Path) -> Dict[str, Any]:
    import numpy as np
    import ray
    import torch
    from hydra.utils import instantiate

    from actors import broadcast_weights, launch_workers
    from antiphon.generation import GenerationRequest
    from antiphon.model.chat import ChatFormat
    from antiphon.model.tiny import resolve_model_path
    from learner.policy import PolicyModel, Sample

    import transformers

    transformers.utils.logging.disable_progress_bar()
    run_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    model_path = resolve_model_path(cfg.model)
    _say(f"policy: {model_path}")
    rollout_cfg, model_cfg = to_plain(cfg.rollout), to_plain(cfg.model)
    speaker = instantiate(cfg.simulator)

    _init_ray(cfg.cluster, cfg.rollout.num_workers * cfg.rollout.num_cpus_per_worker)
    workers: List[Any] = []
    try:
        t0 = time.perf_counter()
        workers = launch_workers(str(model_path), rollout_cfg, model_cfg)
        _say(f"{len(workers)} rollout workers ready in {time.perf_counter() - t0:.1f}s")
        policy = PolicyModel(model_path, device=cfg.learner.device.value, dtype=cfg.learner.dtype.value,
                             temperature=cfg.rollout.temperature)
        chat = ChatFormat(policy.tokenizer)
        torch.manual_seed(cfg.experiment.seed)

        rounds, records = [], []
        version = 0
        for r in range(cfg.experiment.rounds):
            utts = speaker.utterances(r * cfg.experiment.num_prompts, cfg.experiment.num_prompts)
            reqs = [GenerationRequest(f"r{r}-{i}", chat.user_turn(u.text, num_audio=1)
                                      + chat.assistant_prefix(open_think=True), [u.audio])
                    for i, u in enumerate(utts)]
            shards = [reqs[i::len(workers)] for i in range(len(workers))]
            t0 = time.perf_counter()
            outs = ray.get([w.generate.remote(s) for w, s in zip(workers, shards)])
            gen_s = time.perf_counter() - t0
            by_id = {res.request_id: res for shard in outs for res in shard}
            results = [by_id[q.request_id] for q in reqs]
            learner_lp = policy.completion_logprobs(
                [Sample(q.prompt_ids, res.token_ids, q.audio) for q, res in zip(reqs, results)])
            max_diff = max(float(np.abs(np.asarray(res.logprobs) - lp).max()) for res, lp in zip(results, learner_lp)
                           if len(lp))
            tokens = sum(len(res.token_ids) for res in results)
            audio_s = sum(len(u.audio) / u.sample_rate for u in utts)
            rounds.append({"round": r, "weight_version": version, "prompts": len(reqs), "generated_tokens": tokens,
                           "generation_s": round(gen_s, 3), "tokens_per_s": round(tokens / gen_s, 1),
                           "audio_seconds_in": round(audio_s, 2), "max_abs_logprob_diff": max_diff,
                           "mean_behaviour_logprob": float(np.mean([np.mean(x.logprobs) for x in results]))})
            _say(f"round {r}: {len(reqs)} spoken prompts ({audio_s:.1f}s audio) -> {tokens} tokens in "
                 f"{gen_s:.2f}s ({tokens / gen_s:.0f} tok/s) at weight version {version}; "
                 f"max |behaviour - learner log-prob| = {max_diff:.2e}")
            for q, res, u in zip(reqs, results, utts):
                records.append({"request_id": q.request_id, "weight_version": res.weight_version,
                                "user_text": u.text, "user_emotion": u.emotion,
                                "reply": policy.tokenizer.decode(res.token_ids), "finish_reason": res.finish_reason,
                                "num_tokens": len(res.token_ids), "sum_logprob": float(np.sum(res.logprobs))})
            if r + 1 < cfg.experiment.rounds:
                # Exercise the broadcast path with a synthetic update (noise, not a learning step).
                with torch.no_grad():
                    for p in policy.model.parameters():
                        p.add_(torch.randn_like(p) * 0.02)
                version += 1
                load_s = broadcast_weights(workers, policy.state_dict_for_rollout(), version)
                _say(f"broadcast weight version {version} to {len(workers)} workers "
                     f"(load {max(load_s):.3f}s max)")

        with open(run_dir / "rollouts.jsonl", "w") as f:
            for rec in records:
                f.write(json.dumps(rec) + "\n")
        summary = {
            "what_ran": "rollouts only: vLLM rollout workers on Ray served the tiny audio policy to synthetic "
                        "spoken prompts; behaviour log-probs were checked against the learner's model; weights "
                        "were perturbed (not trained) and broadcast between rounds",
            "not_yet": "user-simulator dialogues, reward service, PPO learner",
            "model_path": str(model_path), "num_workers": len(workers), "rounds": rounds,
            "wall_s": round(time.perf_counter() - t_start, 1),
        }
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary
    finally:
        for w in workers:
            try:
                ray.get(w.shutdown.remote(), timeout=30)
            except Exception:  # a dead worker has nothing left to shut down
                pass
        ray.shutdown()


register()


@hydra.main(config_path=config_dir(), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    try:
        validate(cfg)
    except ConfigError as e:
        print(f"antiphon: {e}", file=sys.stderr)
        sys.exit(2)
    run_dir = Path(cfg.experiment.run_dir or HydraConfig.get().runtime.output_dir)
    summary = run(cfg, run_dir)
    _say(f"done in {summary['wall_s']}s. What ran: {summary['what_ran']}.")
    _say(f"Not wired in yet: {summary['not_yet']}. Outputs: {run_dir}/summary.json, {run_dir}/rollouts.jsonl")


if __name__ == "__main__":
    main()
