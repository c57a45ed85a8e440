"""The rollouts-only command appends dialogues to the stream; the dump command writes them out to listen
to -- from the stopped run's persisted Valkey data, so the stream outlived its server."""
from __future__ import annotations

import subprocess
import sys
import wave

import pytest

pytestmark = pytest.mark.slow


def test_rollout_then_dump(tmp_path):
    run_dir = tmp_path / "run"
    res = subprocess.run([sys.executable, "-m", "antiphon.rollout", "experiment.dialogues_per_round=5",
                          "experiment.rounds=1", "rollout.num_workers=1", "rollout.max_new_tokens=16",
                          "rollout.dialogue.think_budget=8", "experiment.name=dumptest",
                          f"experiment.run_dir={run_dir}"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert "5/5 dialogues appended to antiphon:dumptest:trajectories" in res.stdout
    out = tmp_path / "listen"
    res = subprocess.run([sys.executable, "-m", "antiphon.dump", "--data-dir", str(run_dir / "valkey"),
                          "--namespace", "dumptest", "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    dialogues = sorted(out.iterdir())
    assert len(dialogues) == 5
    for d in dialogues:
        text = (d / "transcript.txt").read_text()
        assert text.count("USER") == 4 and text.count("AGENT") == 3
        with wave.open(str(d / "00_user.wav")) as w:
            assert w.getframerate() == 16000 and w.getnframes() > 8000 and w.getsampwidth() == 2
