"""The real entry point with a tiny budget: Ray, vLLM rollout workers, voiced scripted users, the Redis
stream (embedded Valkey), the learner's model and a weight broadcast."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_main_entry_point_runs_end_to_end(tmp_path):
    run_dir = tmp_path / "run"
    res = subprocess.run(
        [sys.executable, "-m", "antiphon.launch", "rollout.num_workers=1", "experiment.dialogues_per_round=4",
         "experiment.rounds=2", "rollout.max_new_tokens=24", "rollout.dialogue.think_budget=8",
         f"experiment.run_dir={run_dir}"],
        capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    rounds = summary["rounds"]
    assert [r["weight_version"] for r in rounds] == [0, 1]
    for r in rounds:
        assert r["dialogues"] == r["published"] == r["trajectories"] == 4
        assert r["agent_turns"] == 12 and r["end_reasons"] == {"user_ended": 4}
        assert r["max_abs_logprob_diff"] < 1e-4 and 0 <= r["mean_user_feedback"] <= 1
    assert summary["stream"] == "antiphon:tiny_cpu:scored"  # the launcher read what the reward service wrote
    dialogues = list((run_dir / "dialogues").iterdir())
    assert len(dialogues) == 4
    assert len(list(dialogues[0].glob("*_user.wav"))) == 4 and (dialogues[0] / "transcript.txt").exists()
    assert (run_dir / "valkey").is_dir()  # the embedded server persisted there
    assert "Not wired in yet: PPO learner" in res.stdout
    for r in rounds:  # the reward service scored every dialogue, each component kept apart
        assert {"reward/total", "reward/think_format", "reward/user_feedback", "reward/verbosity"} <= set(r)
