"""What every voice here shares: argument checks, emotion -> prosody, and the float32 output path."""
from __future__ import annotations

import math
import numbers
import unicodedata
from typing import Optional

import numpy as np

from antiphon.dialogue import EMOTION_PROSODY, Prosody
from antiphon.wav import resample


def check_sample_rate(sample_rate: int) -> int:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive integer (Hz), got {sample_rate!r}")
    return int(sample_rate)


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


def to_output(audio: np.ndarray, orig_sr: int, sample_rate: int) -> np.ndarray:
    """Resample ``audio`` (float, ``orig_sr``) to ``sample_rate``; float32 clipped to [-1, 1].

    ``orig_sr`` need not be the rate the audio was made at: playing it back as if recorded at another rate
    is how PiperVoice shifts pitch. The resampler (``antiphon.wav.resample``, band-limited sinc) reduces the
    rate pair by its gcd, so callers keep the pair's gcd large (the kernel grows with ``orig_sr / gcd``).
    """
    return resample(audio, orig_sr, sample_rate)
