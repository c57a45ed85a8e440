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
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dialogues", type=int, default=32)
    ap.add_argument("--voice", default="espeak", choices=["espeak", "piper"])
    ap.add_argument("--max-new-tokens", type=int, default=48)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    from antiphon.protocol import decode
    from one_worker import one_rollout_worker, scenarios

    overrides = [f"rollout.max_new_tokens={args.max_new_tokens}", "rollout.dialogue.think_budget=16",
                 f"rollout.dialogue.max_concurrent={args.dialogues}", f"simulator.voice={args.voice}",
                 f"rollout.agent_voice.name={args.voice}"]
    with one_rollout_worker(overrides, namespace="bench") as bench:
        t0 = time.perf_counter()
        out = bench.run(scenarios(args.dialogues, seed=1), publish=True)
        wall = time.perf_counter() - t0
        trajs = [decode(p) for p in bench.stream_payloads("trajectories")][-out["published"]:]

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
    # How much the dialogues overlapped (the concurrency that tests/actors/test_dialogues_real.py checks).
    print(f"overlap: summed dialogue time / wall time = {t['dialogue_s'] / wall:.1f}")
    print("| part | share of dialogue time |\n|---|---|")
    for k, v in shares.items():
        print(f"| {k} | {100 * v / total:.1f}% |")
    print(f"| other (turn assembly, scheduling) | {100 * (total - sum(shares.values())) / total:.1f}% |")


if __name__ == "__main__":
    main()
