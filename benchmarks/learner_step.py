"""One PPO learner step on a batch shaped like the default experiment's, on this machine's CPU.

    .venv/bin/python benchmarks/learner_step.py [--threads 1] [--repeats 5]

The batch: 16 three-turn dialogues of the tiny policy, every user turn a spoken clip (lengths drawn
from 0.5-10 s, as the scripted users' voiced turns run), agent turns of 20-60 policy tokens; the
learner config is the default experiment's (group baseline, KL to a frozen reference, 2 minibatches).
Reports the median ``train_step`` time and, for the audio front end alone, forward + backward with
clips batched by length (what the learner does) against one padded batch of all clips.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time

import numpy as np
import torch


def _dialogue(policy, rng, tid: str, group: int):
    from antiphon.model.chat import ChatFormat
    from antiphon.protocol import AudioClip, Rewards, ScoredTrajectory, Trajectory, TurnRecord

    chat = ChatFormat(policy.tokenizer)
    allowed = np.flatnonzero(~policy.banned.cpu().numpy())
    ids, mask, turns = [], [], []
    for k in range(3):
        start = len(ids)
        seconds = float(rng.uniform(0.5, 10.0))
        t = np.arange(int(16000 * seconds)) / 16000
        clip = AudioClip.from_float(0.3 * np.sin(2 * np.pi * rng.uniform(120, 260) * t), 16000)
        ids += chat.user_turn(f"user says {k}", num_audio=1) + chat.assistant_prefix(True)
        mask += [0] * (len(ids) - len(mask))
        turns.append(TurnRecord("user", start, len(ids), text=f"user says {k}", emotion="sad", audio=clip,
                                feedback=None if k == 0 else 0.5))
        a0 = len(ids)
        n = int(rng.integers(20, 60))
        ids += [int(x) for x in rng.choice(allowed, size=n)] + [chat.im_end]
        mask += [1] * (n + 1)
        ids += chat.newline
        mask += [0] * len(chat.newline)
        turns.append(TurnRecord("assistant", a0, len(ids), text="reply", reasoning="r", emotion="calm",
                                weight_version=0, finish_reason="stop"))
    m = np.asarray(mask, np.uint8)
    traj = Trajectory(tid, "bench", {"scenario_id": f"s{group}"}, np.asarray(ids, np.int32), m,
                      np.where(m == 1, -1.0, 0.0).astype(np.float32), np.where(m == 1, 0, -1).astype(np.int32),
                      turns, end_reason="user_ended", meta={"group": group, "wall_s": 1.0})
    r = [float(x) for x in rng.uniform(0, 1, 3)]
    comps = {"match": {"scope": "turn", "weight": 1.0, "status": "ok", "raw": r, "norm": r, "applicable": [True] * 3}}
    return ScoredTrajectory(traj, Rewards(turn=r, dialogue=0.5, components=comps))


def _median_s(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (learner.num_threads)")
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()

    from antiphon.config import compose, to_dataclass
    from antiphon.config.schema import TinyModelConfig
    from antiphon.model.tiny import ensure_tiny_policy
    from learner.batch import build_batch
    from learner.recipe import PPORecipe

    cache = os.environ.get("ANTIPHON_CACHE") or os.path.join(tempfile.gettempdir(), "antiphon-bench-cache")
    path = ensure_tiny_policy(dataclasses.asdict(TinyModelConfig()), cache)
    cfg = to_dataclass(compose([f"learner.num_threads={a.threads}"]).learner)
    recipe = PPORecipe(cfg, path)
    recipe.setup()
    rng = np.random.default_rng(0)
    scored = [_dialogue(recipe.policy, rng, f"d{i}", i // cfg.group_size) for i in range(cfg.batch_size)]
    batch = build_batch(recipe.policy, scored)
    step_s = _median_s(lambda: recipe.train_step(batch, 0), a.repeats)

    frontend = recipe.policy.frontend
    feats = batch.model_inputs["audio_features"]

    def bucketed():
        torch.cat(frontend(batch.model_inputs["clips"], feats)).sum().backward()

    def one_batch():
        torch.cat(frontend._encode(feats)).sum().backward()

    print(f"machine: {os.cpu_count()} cores; torch {torch.__version__}; threads {a.threads}")
    print(f"batch: {len(batch)} dialogues, width {batch.model_inputs['input_ids'].shape[1]}, "
          f"{int(batch.mask.sum())} policy tokens, {len(feats)} clips")
    print(f"train_step: {step_s:.2f} s (median of {a.repeats})")
    print(f"audio front end fwd+bwd: by length {_median_s(bucketed, a.repeats):.2f} s, "
          f"one padded batch {_median_s(one_batch, a.repeats):.2f} s")


if __name__ == "__main__":
    main()
