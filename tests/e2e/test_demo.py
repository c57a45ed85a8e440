"""The real entry point with small budgets: cold start, Ray, vLLM rollout workers, voiced scripted users,
embedded Valkey, the reward service and the PPO learner broadcasting weights back."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def _run(run_dir, ray_address, *overrides, timeout=900):
    """One launcher run on the session's Ray instance (``cluster.address``)."""
    res = subprocess.run([sys.executable, "-m", "antiphon.launch", f"experiment.run_dir={run_dir}",
                          f"cluster.address={ray_address}", *overrides], capture_output=True, text=True,
                         timeout=timeout)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    return res, json.loads((run_dir / "summary.json").read_text())


def _metrics(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def sync_run(tmp_path_factory, ray_address):
    """One sync run for the module: its outputs are checked below, and its checkpoint is what the resume
    test continues from."""
    run_dir = tmp_path_factory.mktemp("sync") / "run"
    res, summary = _run(run_dir, ray_address, "learner.mode=sync", "learner.steps=3", "learner.batch_size=4",
                        "learner.group_size=2", "rollout.num_workers=1", "learner.checkpoint_every=2",
                        "learner.minibatches=1",  # one update per step: its ratio is exactly the fresh one
                        "learner.estimator=gae")  # the learned-critic path (the demo default is the group baseline)
    return run_dir, res, summary


def test_sync_run_trains_on_policy_and_writes_everything(sync_run):
    """Sync mode: every trained token was sampled by the weights being trained, so the learner's
    proximal log-probs equal vLLM's behaviour log-probs (ratio 1 within 1e-4) at every step."""
    run_dir, res, summary = sync_run
    steps = _metrics(run_dir)
    assert [m["step"] for m in steps] == [1, 2, 3] and [m["version"] for m in steps] == [1, 2, 3]
    for m in steps:
        assert m["behav/max_abs_logp_diff"] < 1e-4, m
        assert abs(m["ratio/mean"] - 1) < 1e-4 and m["staleness/max"] == 0
        assert m["rollout/trajectories"] == 4 and m["reward/total"] == m["reward/total"]
        assert {"loss/policy", "loss/value", "kl/approx", "clip/low_frac", "value/explained_variance",
                "perf/grad_norm", "kl/behav_prox"} <= set(m)
    assert "step 3/3" in res.stdout and "reward" in res.stdout and "tok/s" in res.stdout
    assert summary["learner"]["trained"] == 12 and summary["mode"] == "sync"
    assert summary["learner"]["counts"].get("dropped_stale", 0) == 0
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").glob("step_*"))
    assert ckpts == ["step_000002", "step_000003"]
    final = run_dir / "checkpoints" / "step_000003"
    state = json.loads((final / "state.json").read_text())
    assert state["version"] == 3 and len(state["trained_ids"]) == 12 == len(set(state["trained_ids"]))
    assert (final / "policy" / "model.safetensors").exists() and (final / "learner.pt").exists()
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    assert (run_dir / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "reward/total" in summary["learning"]["reward"]
    assert any((run_dir / "dialogues").iterdir())


def test_resume_from_a_checkpoint_continues_the_version(sync_run, ray_address, tmp_path):
    first, _, _ = sync_run  # its step-2 checkpoint: the state after two sync steps
    second = tmp_path / "second"
    res, summary = _run(second, ray_address, f"resume={first / 'checkpoints' / 'step_000002'}", "learner.steps=3",
                        "learner.batch_size=4", "learner.group_size=2", "rollout.num_workers=1",
                        "learner.mode=sync", "learner.cold_start.enabled=false")
    steps = _metrics(second)
    assert [m["step"] for m in steps] == [3] and steps[0]["version"] == 3
    assert steps[0]["behav/max_abs_logp_diff"] < 1e-4  # the workers run the checkpoint's weights
    assert "resuming from" in res.stdout
