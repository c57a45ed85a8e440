"""The run's metrics sink: one ``metrics.jsonl`` line per learner step, the same values in TensorBoard.

TensorBoard also gets the staleness histogram of the step's tokens and, on the steps the learner returns
samples for, sample dialogues as text and audio per turn. A missing ``tensorboard`` package only turns
TensorBoard off; the JSONL file is always written.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict

import numpy as np

from antiphon.report import METRICS_FILE

log = logging.getLogger("antiphon")


class MetricsSink:
    """Writes a learner step's output (``{"metrics": {...}, "staleness_hist": [...], "samples": [...]}``)."""

    def __init__(self, run_dir: Path, tensorboard: bool = True):
        self.path = Path(run_dir) / METRICS_FILE
        self.tb_dir = Path(run_dir) / "tb"
        self.tb = _summary_writer(self.tb_dir) if tensorboard else None

    def write(self, step: int, version: int, out: Dict[str, Any]) -> Dict[str, Any]:
        """Appends the step's line (``step``, ``version``, ``time_s``, then the metrics) and logs it to
        TensorBoard; returns the line."""
        m = out["metrics"]
        line = {"step": step, "version": version, "time_s": m.pop("time_s"), **m}
        with open(self.path, "a") as f:
            f.write(json.dumps(line) + "\n")
        if self.tb is not None:
            tensorboard_step(self.tb, step, out)
        return line

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None


def _summary_writer(path: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a runtime dependency; a trimmed install still trains
        log.warning("tensorboard not installed: no TensorBoard logs")
        return None
    return SummaryWriter(str(path))


def tensorboard_step(tb, step: int, out: Dict[str, Any]) -> None:
    """Scalars (NaN skipped), the staleness histogram, and sample dialogues (text + audio per turn)."""
    for k, v in out["metrics"].items():
        if isinstance(v, (int, float)) and v == v:
            tb.add_scalar(k, v, step)
    hist = out.get("staleness_hist") or [0]
    values = np.repeat(np.arange(len(hist)), hist)
    if values.size:
        tb.add_histogram("staleness/tokens", values, step)
    for i, s in enumerate(out.get("samples", [])):
        tb.add_text(f"dialogue/{i}", f"reward {s['reward']:.3f}\n\n" + s["transcript"].replace("\n", "  \n"), step)
        for j, a in enumerate(s["audio"][:6]):
            wave = np.asarray(a["pcm"], dtype=np.float32) / 32767.0
            if wave.size == 0:  # a turn voiced as silence (e.g. a reply that was only a style tag)
                continue
            tb.add_audio(f"dialogue/{i}/turn{j}_{a['role']}", wave[None], step, sample_rate=a["sample_rate"])
    tb.flush()


def progress_line(step: int, steps: int, out: Dict[str, Any], tokens_per_s: float, elapsed: float) -> str:
    """``step 12/80 | v12 | reward 4.41 | user_feedback 0.36 | ... | staleness 1.95 | 640 tok/s | 95s``."""
    m = out["metrics"]
    parts = [f"step {step}/{steps}", f"v{out['version']}", f"reward {m['reward/total']:.3f}"]
    for k in ("reward/user_feedback", "reward/emotional_continuity"):
        if k in m:
            parts.append(f"{k.split('/')[1]} {m[k]:.2f}")
    parts += [f"kl {m.get('kl/update', float('nan')):.4f}", f"staleness {m['staleness/mean']:.2f}",
              f"{tokens_per_s:.0f} tok/s", f"{elapsed:.0f}s"]
    return " | ".join(parts)
