"""An LRU cache in front of any voice: simulators repeat lines (openers, questions, fillers) across dialogues."""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Optional, Tuple

import numpy as np

from antiphon.dialogue import Prosody, Voice


class CachedVoice(Voice):
    """``voice`` with its last ``max_entries`` waveforms (and at most ``max_bytes`` of them) kept.

    A repeat of ``(text, emotion, prosody)`` returns the cached array itself, made read-only so that no caller
    can change what later callers get (copy it before editing). Misses synthesise outside the lock, so a slow
    voice never blocks hits; two threads missing the same key at once both synthesise, and the first
    stored result is the one both return.
    """

    def __init__(self, voice: Voice, max_entries: int = 256, max_bytes: int = 64 << 20):
        if not isinstance(voice, Voice):
            raise TypeError(f"voice must be a Voice, got {type(voice).__name__}")
        for name, value in (("max_entries", max_entries), ("max_bytes", max_bytes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.voice = voice
        self.sample_rate = voice.sample_rate
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[Tuple, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @staticmethod
    def key(text: str, emotion: Optional[str], prosody: Optional[Prosody]) -> Tuple:
        # Prosody is a mutable dataclass, hence unhashable: key on its values.
        return text, emotion, None if prosody is None else (prosody.pitch, prosody.rate, prosody.energy)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def synthesize(self, text: str, emotion: Optional[str] = None, prosody: Optional[Prosody] = None) -> np.ndarray:
        key = self.key(text, emotion, prosody)
        with self._lock:
            audio = self._entries.get(key)
            if audio is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return audio
            self.misses += 1
        # A copy: the wrapped voice may keep (or hand out) the array it returned.
        audio = np.array(self.voice.synthesize(text, emotion, prosody), dtype=np.float32)
        audio.setflags(write=False)
        if audio.nbytes > self.max_bytes:
            return audio
        with self._lock:
            if key in self._entries:  # another thread stored it meanwhile
                return self._entries[key]
            self._entries[key] = audio
            self._bytes += audio.nbytes
            while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.nbytes
        return audio
