"""The tiny default learns, and a Hydra sweep of it ends with a comparison of its jobs."""
from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("seed", [0, 1])
def test_tiny_default_reward_rises_because_the_policy_learned(tmp_path, ray_address, seed):
    """The default experiment, shortened to 50 learner steps. Margin: at a fixed policy the batch-mean
    reward of one step (16 dialogues) varies with a standard deviation of ~0.3-0.4 (measured), so the
    last-20% mean must exceed the first-20% mean by more than twice the standard error of that
    difference, estimated from the run's own two windows -- a chance rise passes with probability
    ~2% per seed. Learning, not a schedule: the reward is computed by fixed verifiers on dialogues the
    policy produced; what moves is the policy's emotional match with the user (user_feedback)."""
    run_dir = tmp_path / "run"
    res = subprocess.run([sys.executable, "-m", "antiphon.launch", f"experiment.run_dir={run_dir}",
                          f"cluster.address={ray_address}",  # the session's Ray instance: no start-up per run
                          "learner.steps=50", f"experiment.seed={seed}", f"learner.seed={seed}",
                          f"rollout.seed={seed}"], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    steps = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    total = [m["reward/total"] for m in steps]
    k = int(0.2 * len(total))
    first, last = total[:k], total[-k:]
    delta = statistics.mean(last) - statistics.mean(first)
    se = math.sqrt(statistics.variance(first) / k + statistics.variance(last) / k)
    assert delta > 2 * se, (delta, se, total)
    summary = json.loads((run_dir / "summary.json").read_text())
    r = summary["learning"]["reward"]
    assert r["reward/total"]["last"] > r["reward/total"]["first"]
    assert r["reward/user_feedback"]["last"] > r["reward/user_feedback"]["first"]
    # The format the cold start taught survives RL (the KL to the cold-start policy holds it).
    assert r["reward/think_format"]["last"] > 0.8


def test_multirun_sweep_runs_isolated_jobs_and_compares_them(tmp_path, ray_address):
    sweep = tmp_path / "sweep"
    res = subprocess.run(
        [sys.executable, "-m", "antiphon.launch", "-m", "learner.max_staleness=0,4", "learner.clip_high=0.2,0.28",
         "learner.steps=3", "learner.batch_size=4", "learner.group_size=2", "rollout.num_workers=1",
         "learner.cold_start.enabled=false", f"hydra.sweep.dir={sweep}",
         f"cluster.address={ray_address}"],  # every job on the session's Ray instance: no start-up per job
        capture_output=True, text=True, timeout=1500)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    jobs = sorted(p for p in sweep.iterdir() if (p / ".hydra").is_dir())
    assert len(jobs) == 4
    for job in jobs:
        summary = json.loads((job / "summary.json").read_text())
        assert summary["steps"] == 3 and (job / "metrics.jsonl").exists()
        assert (job / "valkey").is_dir()  # each job its own embedded server and stream namespace
    table = (sweep / "comparison.md").read_text()
    for label in ("max_staleness=0", "max_staleness=4", "clip_high=0.2", "clip_high=0.28"):
        assert label in table
    assert len([x for x in table.splitlines() if x.startswith("|")]) == 2 + 4  # header, rule, 4 jobs
    assert (sweep / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    assert "comparison written to" in res.stdout
