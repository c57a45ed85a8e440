"""A synthetic speaker: short spoken prompts whose prosody carries an emotion.

Not yet a dialogue simulator (that interface arrives with the multi-turn rollout work): it produces
single user utterances -- a line of text plus a voiced waveform (a harmonic tone with a pitch contour,
loudness and speaking rate set by the emotion) -- deterministically from its seed. Enough to drive
the rollout engines with real audio inputs on a machine without a TTS voice installed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List

import numpy as np

# emotion -> (base F0 Hz, F0 slope over the clip in Hz, loudness 0..1, syllables per second)
PROSODY = {
    "calm": (110.0, -10.0, 0.25, 3.0),
    "sad": (95.0, -25.0, 0.15, 2.0),
    "happy": (190.0, 40.0, 0.5, 5.0),
    "angry": (170.0, 10.0, 0.8, 6.0),
    "anxious": (210.0, 60.0, 0.4, 6.5),
}
LINES = [
    "hello, can you hear me?",
    "how do I sound today?",
    "what is {a} plus {b}?",
    "tell me something nice.",
    "I need a little help.",
]


@dataclass
class Utterance:
    text: str
    audio: np.ndarray  # float32 mono in [-1, 1]
    sample_rate: int
    emotion: str


class SyntheticSpeaker:
    def __init__(self, seed: int = 0, sample_rate: int = 16000):
        self.seed = int(seed)
        self.sample_rate = int(sample_rate)

    def voice(self, emotion: str, duration_s: float, rng: np.random.Generator) -> np.ndarray:
        f0, slope, loud, rate = PROSODY[emotion]
        n = int(duration_s * self.sample_rate)
        t = np.arange(n) / self.sample_rate
        f = f0 + slope * t / max(duration_s, 1e-3) + 3.0 * np.sin(2 * np.pi * 5.0 * t)  # contour + vibrato
        phase = 2 * np.pi * np.cumsum(f) / self.sample_rate
        wave = sum(np.sin(k * phase) / k for k in range(1, 6))
        syllables = 0.5 * (1 - np.cos(2 * np.pi * rate * t))  # amplitude envelope ~ speaking rate
        noise = 0.02 * rng.standard_normal(n)
        out = loud * syllables * wave / 2.3 + noise
        return np.clip(out, -1, 1).astype(np.float32)

    def utterance(self, index: int) -> Utterance:
        rng = np.random.default_rng([self.seed, index])
        emotion = list(PROSODY)[int(rng.integers(len(PROSODY)))]
        text = LINES[int(rng.integers(len(LINES)))].format(a=int(rng.integers(10)), b=int(rng.integers(10)))
        duration = float(rng.uniform(0.8, 2.5))
        return Utterance(text, self.voice(emotion, duration, rng), self.sample_rate, emotion)

    def utterances(self, start: int, count: int) -> List[Utterance]:
        return [self.utterance(i) for i in range(start, start + count)]
