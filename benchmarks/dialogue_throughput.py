"""Spoken-dialogue throughput of one rollout worker, and where a turn's time goes.

One Ray rollout worker (vLLM, 1 CPU) runs N concurrent 3-turn dialogues with the scripted simulator;
trajectories go through a Redis stream on an embedded Valkey (AOF everysec), as in a real run. Reports
agent turns/s, audio seconds/s, and the share of dialogue time spent in generation, the agent's TTS, the
simulator (its words and voice), audio features (the policy's audio front end) and encode + transport.
Shares are summed over dialogues and divided by the summed dialogue wall time; dialogues overlap, so
waiting for the engine counts as generation.

    .venv/bin/python benchmarks/dialogue_throughput.py [--dialogues 32] [--voice espeak|piper]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dialogues", type=int, default=32)
    ap.add_argument("--voice", default="espeak", choices=["espeak", "piper"])
    ap.add_argument("--max-new-tokens", type=int, default=48)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    import ray

    from actors import launch_workers
    from antiphon.config import compose, to_plain
    from antiphon.model.tiny import resolve_model_path
    from antiphon.protocol import decode
    from antiphon.transport import EmbeddedValkey, from_config
    from simulator.scenarios import generate_scenarios

    cfg = compose([f"rollout.max_new_tokens={args.max_new_tokens}", "rollout.dialogue.think_budget=16",
                   f"rollout.dialogue.max_concurrent={args.dialogues}", f"simulator.voice={args.voice}",
                   f"rollout.agent_voice.name={args.voice}", "transport.namespace=bench"])
    path = str(resolve_model_path(cfg.model))
    with tempfile.TemporaryDirectory() as tmp, EmbeddedValkey(tmp) as server:
        tcfg = dict(to_plain(cfg.transport), url=server.url)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        (worker,) = launch_workers(path, to_plain(cfg.rollout), to_plain(cfg.model), num_workers=1)
        sim = to_plain(cfg.simulator)
        warm = [s.to_dict() for s in generate_scenarios(8, seed=99)]
        ray.get(worker.run_dialogues.remote(warm, sim, "bench", tcfg))
        batch = [s.to_dict() for s in generate_scenarios(args.dialogues, seed=1)]
        t0 = time.perf_counter()
        out = ray.get(worker.run_dialogues.remote(batch, sim, "bench", tcfg))
        wall = time.perf_counter() - t0
        reader = from_config(tcfg)
        entries = reader.scan(reader.stream("trajectories"), count=10_000)
        trajs = [decode(p) for _, p in entries][-out["published"]:]
        reader.close()
        ray.get(worker.shutdown.remote())
        ray.shutdown()

    t = out["timing"]
    turns = sum(x.num_agent_turns for x in trajs)
    user_audio = sum(u.audio.seconds for x in trajs for u in x.turns if u.role == "user" and u.audio)
    agent_audio = sum(a.audio.seconds for x in trajs for a in x.turns if a.role == "assistant" and a.audio)
    total = t["dialogue_s"] + t["encode_publish_s"]  # publishing happens after a dialogue's own clock stops
    gen = t["generate_s"] - t.get("audio_features_s", 0.0)
    shares = {"generation": gen, "agent TTS": t["tts_s"], "simulator (words + voice)": t["simulator_s"],
              "audio features": t.get("audio_features_s", 0.0), "encode + transport": t["encode_publish_s"]}
    print(f"{out['published']} dialogues, {turns} agent turns in {wall:.2f}s, voice={args.voice}, "
          f"1 worker (1 CPU), {args.dialogues} concurrent")
    print(f"agent turns/s: {turns / wall:.2f}   user audio s/s: {user_audio / wall:.1f}   "
          f"agent audio voiced s/s: {agent_audio / wall:.1f}")
    print("| part | share of dialogue time |\n|---|---|")
    for k, v in shares.items():
        print(f"| {k} | {100 * v / total:.1f}% |")
    print(f"| other (turn assembly, scheduling) | {100 * (total - sum(shares.values())) / total:.1f}% |")


if __name__ == "__main__":
    main()
