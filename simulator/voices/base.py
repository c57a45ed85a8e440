"""What every voice here shares: argument checks, emotion -> prosody, and the float32 output path."""
from __future__ import annotations

import functools
import math
import numbers
import unicodedata
from typing import Optional

import numpy as np

from antiphon.dialogue import EMOTION_PROSODY, Prosody


def check_sample_rate(sample_rate: int) -> int:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive integer (Hz), got {sample_rate!r}")
    return int(sample_rate)


def check_number(name: str, value, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not low <= value <= high:
        raise ValueError(f"{name} must be a number in [{low}, {high}], got {value!r}")


def resolve_prosody(text: str, emotion: Optional[str], prosody: Optional[Prosody]) -> Prosody:
    """Check ``synthesize``'s arguments and return the prosody to voice.

    An explicit ``prosody`` wins; otherwise the emotion's ``EMOTION_PROSODY``; otherwise neutral. The emotion
    is checked even when ``prosody`` is given, so a typo never passes silently.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if emotion is not None and emotion not in EMOTION_PROSODY:
        raise ValueError(f"unknown emotion {emotion!r}; expected one of {sorted(EMOTION_PROSODY)}")
    if prosody is None:
        return EMOTION_PROSODY[emotion or "neutral"]
    if not isinstance(prosody, Prosody):
        raise TypeError(f"prosody must be a Prosody, got {type(prosody).__name__}")
    for name in ("pitch", "rate", "energy"):
        value = getattr(prosody, name)
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"Prosody.{name} must be a positive finite number, got {value!r}")
    return prosody


def speakable(text: str) -> str:
    """``text`` without control characters (a policy can sample any byte; a NUL breaks both engines)
    and without the U+FFFD left where undecodable bytes were."""
    return "".join(" " if unicodedata.category(c) == "Cc" and c not in "\n\t" else c
                   for c in text if c != "\ufffd")


def silence() -> np.ndarray:
    """What an empty or whitespace-only text sounds like."""
    return np.zeros(0, dtype=np.float32)


@functools.lru_cache(maxsize=64)
def _resampler(orig_sr: int, sample_rate: int):
    import torchaudio  # here, not at import: configs that name a voice must validate without torch

    # Building the sinc kernel costs more than applying it (2 ms vs 0.25 ms for 3 s of 22.05 -> 16 kHz), and
    # the rate pairs in use are few (one per voice, one per pitch factor): keep the kernels.
    return torchaudio.transforms.Resample(orig_sr, sample_rate)


def to_output(audio: np.ndarray, orig_sr: int, sample_rate: int) -> np.ndarray:
    """Resample ``audio`` (float, ``orig_sr``) to ``sample_rate``; float32 clipped to [-1, 1].

    ``orig_sr`` need not be the rate the audio was made at: playing it back as if recorded at another rate
    is how PiperVoice shifts pitch. Band-limited sinc resampling (torchaudio) reduces the rate pair by its
    gcd, so callers keep the pair's gcd large (the kernel grows with ``orig_sr / gcd``).
    """
    audio = np.asarray(audio, dtype=np.float32)
    if orig_sr != sample_rate and audio.size:
        import torch

        audio = _resampler(int(orig_sr), int(sample_rate))(torch.from_numpy(audio)).numpy()
    # Sinc resampling overshoots slightly near full scale.
    return np.clip(audio, -1.0, 1.0).astype(np.float32, copy=False)
