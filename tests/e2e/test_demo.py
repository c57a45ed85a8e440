"""The real entry point with a tiny budget: Ray, vLLM rollout workers, the learner's model, a broadcast."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_main_entry_point_runs_end_to_end(tmp_path):
    run_dir = tmp_path / "run"
    res = subprocess.run(
        [sys.executable, "-m", "antiphon.launch", "rollout.num_workers=1", "experiment.num_prompts=6",
         "experiment.rounds=2", "rollout.max_new_tokens=16", f"experiment.run_dir={run_dir}"],
        capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    rounds = summary["rounds"]
    assert [r["weight_version"] for r in rounds] == [0, 1]
    assert all(r["prompts"] == 6 and r["generated_tokens"] > 0 for r in rounds)
    assert all(r["max_abs_logprob_diff"] < 1e-4 for r in rounds)
    records = [json.loads(x) for x in (run_dir / "rollouts.jsonl").read_text().splitlines()]
    assert len(records) == 12 and {r["weight_version"] for r in records} == {0, 1}
    assert "rollouts only" in res.stdout and "Not wired in yet" in res.stdout
