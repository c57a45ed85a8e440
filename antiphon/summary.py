"""The end of a training run: ``summary.json`` (what ran, whether reward rose, where everything is), the
learning-curve PNG and the last dialogues as wav + transcript."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Sequence

from omegaconf import DictConfig

from antiphon.report import learning_curve_png, learning_summary


def write_summary(run_dir: Path, cfg: DictConfig, *, steps_log: List[Dict[str, Any]], staleness: int,
                  reference_path: str, learner_info: Dict[str, Any], worker_stats: List[Dict[str, Any]],
                  counters: Dict[str, Any], last_dialogues: Sequence[Any], loop_s: float,
                  wall_s: float) -> Dict[str, Any]:
    from antiphon.dialogue_files import write_dialogues

    lc = cfg.learner
    mode = str(lc.mode)
    listen_dir = write_dialogues(last_dialogues, run_dir / "dialogues", None)
    curve = learning_curve_png(steps_log, run_dir / "learning_curve.png", run_name=cfg.experiment.name)
    summary = {
        "what_ran": f"{'sync' if mode == 'sync' else 'async'} PPO on spoken multi-turn dialogues: "
                    f"{cfg.rollout.num_workers} vLLM rollout workers talking with simulated, voiced users, "
                    f"{cfg.reward.replicas} reward service replica(s), one learner; weights broadcast every "
                    f"{lc.broadcast_every} step(s)",
        "learning": learning_summary(steps_log),
        "steps": len(steps_log), "mode": mode, "max_staleness": staleness,
        "cold_start": str(reference_path), "checkpoint": learner_info["last_checkpoint"],
        "learner": learner_info, "rollout_workers": worker_stats,
        "rollout_idle_s": [w.get("idle_ms", 0) / 1000 for w in worker_stats],
        "learner_wait_s": float(sum(x["perf/learner_wait_s"] for x in steps_log)),
        "loop_s": round(loop_s, 1), "transport_counters": counters,
        "listen": str(listen_dir), "learning_curve": str(curve), "tensorboard": str(run_dir / "tb"),
        "wall_s": round(wall_s, 1), "run_dir": str(run_dir),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary
