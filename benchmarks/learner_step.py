"""One PPO learner step on a batch shaped like the default experiment's, on this machine's CPU.

    .venv/bin/python benchmarks/learner_step.py [--threads 1] [--repeats 5]

The batch: 16 three-turn dialogues of the tiny policy in the rollout's token layout (the learner tests'
``make_scored_dialogue``), every user turn a clip of 0.5-10 s (as the scripted users' voiced turns
run; the four rollouts of a group hear the same three clips), agent turns of 20-60 random policy tokens; the
learner config is the default experiment's (group baseline, KL to a frozen reference, 2 minibatches).
Reports the median ``train_step`` time and, for the audio front end alone, forward + backward with
clips batched by length (what the learner does) against one padded batch of all clips.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


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

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from support import make_scored_dialogue  # the learner tests' real-layout dialogues

    cache = os.environ.get("ANTIPHON_CACHE") or os.path.join(tempfile.gettempdir(), "antiphon-bench-cache")
    path = ensure_tiny_policy(dataclasses.asdict(TinyModelConfig()), cache)
    cfg = to_dataclass(compose([f"learner.num_threads={a.threads}"]).learner)
    recipe = PPORecipe(cfg, path)
    recipe.setup()
    rng = np.random.default_rng(0)
    # The rollouts of one group hear the same user turns (one scenario, the same scripted lines voiced).
    seconds = [rng.uniform(0.5, 10.0, 3) for _ in range(cfg.batch_size // cfg.group_size)]
    scored = [make_scored_dialogue(recipe.policy, rng, f"d{i}", group=i // cfg.group_size, n_turns=3,
                                   reply_len=(20, 60), clip_seconds=seconds[i // cfg.group_size])
              for i in range(cfg.batch_size)]
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
          f"{int(batch.mask.sum())} policy tokens, {len(feats)} clips ({len({id(f) for f in feats})} distinct)")
    print(f"train_step: {step_s:.2f} s (median of {a.repeats})")
    print(f"audio front end fwd+bwd: by length {_median_s(bucketed, a.repeats):.2f} s, "
          f"one padded batch {_median_s(one_batch, a.repeats):.2f} s")


if __name__ == "__main__":
    main()
