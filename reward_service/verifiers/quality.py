"""Speech quality of the agent's voiced reply: DNSMOS (Microsoft's non-intrusive MOS predictor, via speechmos).

``SpeechQuality`` (scope "turn") scores each agent turn's audio with DNSMOS and returns the overall MOS
(OVRL, 1..5) normalised to [0, 1] as ``(MOS - 1) / 4`` (clipped). Details carry ``ovrl_mos``, ``sig_mos``
(speech signal), ``bak_mos`` (background), ``p808_mos`` and what was done to the clip.

How a clip is fed (DNSMOS scores 9.01 s windows of 16 kHz audio, ~0.3-0.8 s per window on one core):

- resampled to 16 kHz (polyphase, scipy) if needed, clipped to [-1, 1];
- a clip shorter than one window (144,160 samples) is *tiled* (repeated) to fill exactly one window. This is
  what speechmos itself does with short clips, but it repeats them to 2^k x their length and then scores
  every 1 s hop (3 windows for a 3 s clip); filling one window costs one. Zero-padding instead would add
  clean silence and inflate the background score (measured: eSpeak 2.29 tiled vs 2.75 zero-padded);
- a longer clip is scored on up to ``max_windows`` windows evenly spread over it, first and last included
  (no more than it takes to cover the clip), and the window scores are averaged. Default 1: its first 9.01 s.

Not applicable (``details["applicable"] = False``, value 0.0, with ``reason``): no audio, empty, shorter
than ``min_seconds``, or silent (peak below -60 dBFS).

speechmos (and librosa, onnxruntime) load on first use; the model is built once per process and setting
and shared by every instance. The first call in a fresh environment JIT-compiles librosa (~15-30 s): call
``warmup()`` at service start to take that off the first batch.
"""
from __future__ import annotations

import math
import os
import threading
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from antiphon.protocol import Trajectory
from reward_service.component import RewardComponent, Score, agent_turns

SR = 16000
WINDOW = 144160  # int(9.01 * 16000): one DNSMOS window
SILENT_PEAK = 1e-3

_MODELS: Dict[Tuple[bool, Optional[int]], Any] = {}
_LOCK = threading.Lock()


def dnsmos_model(personalized: bool = False, threads: Optional[int] = None):
    """The process's DNSMOS model (speechmos.dnsmos.DNSMOS) for this setting, built on first use.

    ``threads`` sets onnxruntime's intra-op threads (None: onnxruntime's default, all cores)."""
    key = (bool(personalized), threads)
    with _LOCK:
        if key not in _MODELS:
            import onnxruntime as ort
            from speechmos import dnsmos as sm

            root = os.path.dirname(os.path.abspath(sm.__file__))
            primary = os.path.join(root, "pdnsmos_models" if personalized else "dnsmos_models", "sig_bak_ovr.onnx")
            p808 = os.path.join(root, "dnsmos_models", "model_v8.onnx")
            opts = ort.SessionOptions()
            if threads:
                opts.intra_op_num_threads = int(threads)
                opts.inter_op_num_threads = 1
            model = sm.DNSMOS.__new__(sm.DNSMOS)  # its __init__ takes no session options
            model.primary_model_path = primary
            model.onnx_sess = ort.InferenceSession(primary, opts, providers=["CPUExecutionProvider"])
            model.p808_onnx_sess = ort.InferenceSession(p808, opts, providers=["CPUExecutionProvider"])
            _MODELS[key] = model
        return _MODELS[key]


def to_16k(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    wave = np.asarray(wave, dtype=np.float32).reshape(-1)
    if sample_rate != SR and wave.size:
        from scipy.signal import resample_poly

        g = math.gcd(int(sample_rate), SR)
        wave = resample_poly(wave.astype(np.float64), SR // g, int(sample_rate) // g).astype(np.float32)
    return np.clip(np.nan_to_num(wave), -1.0, 1.0)


def windows(wave16k: np.ndarray, max_windows: int = 1) -> Tuple[List[np.ndarray], str]:
    """The one-window inputs for a 16 kHz clip, and how they were made ("tiled", "exact", "cropped")."""
    n = len(wave16k)
    if n < WINDOW:
        return [np.tile(wave16k, -(-WINDOW // n))[:WINDOW]], "tiled"
    if n == WINDOW:
        return [wave16k], "exact"
    k = max(1, min(int(max_windows), -(-n // WINDOW)))  # enough windows to cover the clip, at most max_windows
    starts = np.linspace(0, n - WINDOW, k).astype(int) if k > 1 else [0]
    return [wave16k[s:s + WINDOW] for s in starts], "cropped"


def dnsmos_scores(wave: np.ndarray, sample_rate: int, max_windows: int = 1, personalized: bool = False,
                  threads: Optional[int] = None) -> Dict[str, Any]:
    """DNSMOS of a non-empty float waveform: {ovrl_mos, sig_mos, bak_mos, p808_mos, windows, fit}."""
    wave16k = to_16k(wave, sample_rate)
    if wave16k.size == 0:
        raise ValueError("empty audio")
    model = dnsmos_model(personalized, threads)
    wins, fit = windows(wave16k, max_windows)
    rows = [model(w.astype(np.float32), SR, personalized) for w in wins]
    out: Dict[str, Any] = {k: float(np.mean([r[k] for r in rows]))
                           for k in ("ovrl_mos", "sig_mos", "bak_mos", "p808_mos")}
    out.update(windows=len(wins), fit=fit)
    return out


class SpeechQuality(RewardComponent):
    """DNSMOS overall MOS of each agent reply's audio, as (MOS - 1) / 4 in [0, 1]. See the module doc."""

    scope = "turn"

    def __init__(self, name: Optional[str] = None, max_windows: int = 1, min_seconds: float = 0.25,
                 personalized: bool = False, threads: Optional[int] = None):
        super().__init__(name)
        if isinstance(max_windows, bool) or not isinstance(max_windows, int) or max_windows < 1:
            raise ValueError(f"max_windows must be a positive integer, got {max_windows!r}")
        if min_seconds < 0:
            raise ValueError(f"min_seconds must be >= 0, got {min_seconds}")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
        self.max_windows, self.min_seconds = max_windows, float(min_seconds)
        self.personalized, self.threads = bool(personalized), threads

    def warmup(self) -> None:
        """Load the model and run one window (JIT-compiles librosa on a fresh environment)."""
        noise = np.random.default_rng(0).normal(0, 0.05, WINDOW).clip(-1, 1)
        dnsmos_scores(noise, SR, 1, self.personalized, self.threads)

    def score_clip(self, clip) -> Score:
        """The Score of one ``AudioClip`` (or None)."""
        if clip is None:
            return Score(0.0, {"applicable": False, "reason": "no audio"})
        if len(clip.pcm) == 0:
            return Score(0.0, {"applicable": False, "reason": "empty audio"})
        seconds = clip.seconds
        if seconds < self.min_seconds:
            return Score(0.0, {"applicable": False, "reason": f"too short ({seconds:.3f} s < {self.min_seconds} s)"})
        wave = clip.to_float()
        peak = float(np.abs(wave).max())
        if peak < SILENT_PEAK:
            peak_db = 20 * math.log10(max(peak, 1e-10))
            return Score(0.0, {"applicable": False, "reason": f"silent (peak {peak_db:.1f} dBFS)"})
        s = dnsmos_scores(wave, clip.sample_rate, self.max_windows, self.personalized, self.threads)
        value = min(1.0, max(0.0, (s["ovrl_mos"] - 1.0) / 4.0))
        details = {"applicable": True, "seconds": round(seconds, 3)}
        details.update({k: (round(v, 3) if isinstance(v, float) else v) for k, v in s.items()})
        return Score(float(value), details)

    def score(self, traj: Trajectory) -> List[Score]:
        return [self.score_clip(agent.audio) for _, agent in agent_turns(traj)]
