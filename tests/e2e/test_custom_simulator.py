"""The README's own simulator example, in a module outside the repo, chosen by a Hydra override only."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from antiphon.dialogue import UserSimulator

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _readme_example() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("## Write your own simulator", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_example_is_a_complete_simulator(tmp_path):
    (tmp_path / "my_sims.py").write_text(_readme_example())
    sys.path.insert(0, str(tmp_path))
    try:
        import my_sims

        assert issubclass(my_sims.CountingUser, UserSimulator)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("my_sims", None)


def test_custom_simulator_runs_through_a_hydra_override(tmp_path):
    pkg = tmp_path / "outside"
    pkg.mkdir()
    (pkg / "my_sims.py").write_text(_readme_example())
    run_dir = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(pkg) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run(
        [sys.executable, "-m", "antiphon.launch", "simulator._target_=my_sims.CountingUser", "+simulator.turns=3",
         "rollout.num_workers=1", "learner.steps=1", "learner.batch_size=4", "learner.group_size=2",
         "learner.cold_start.enabled=false", "rollout.max_new_tokens=16", "rollout.dialogue.think_budget=8",
         f"experiment.run_dir={run_dir}"],
        capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    (step,) = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert step["rollout/trajectories"] == 4 and step["rollout/agent_turns"] == 12  # 3 turns each, as asked
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rollout_workers"][0]["end_reasons"].get("user_ended", 0) >= 4
    transcripts = list((run_dir / "dialogues").glob("*/transcript.txt"))
    assert transcripts and "Let us count. One." in transcripts[0].read_text()


def test_unknown_simulator_parameter_fails_before_anything_starts(tmp_path):
    pkg = tmp_path / "outside"
    pkg.mkdir()
    (pkg / "my_sims.py").write_text(_readme_example())
    env = dict(os.environ, PYTHONPATH=str(pkg))
    res = subprocess.run([sys.executable, "-m", "antiphon.launch", "simulator._target_=my_sims.CountingUser",
                          "+simulator.turnz=3"], capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 2 and "simulator.turnz=3" in res.stderr and "policy:" not in res.stdout
