"""eSpeak NG through ctypes: a formant voice, robotic but ~1000x real time and fully controllable.

The library and its data come from the PyPI package ``espeakng-loader``; nothing is downloaded. eSpeak keeps
one global synthesiser per process (current voice, parameters, output callback), so every call runs under
one process-wide lock and sets its voice and all four parameters itself.

How a ``Prosody`` becomes eSpeak parameters (factors are relative to the voice's defaults):

=========  ==============================  =====================================================
espeak     from                            note
=========  ==============================  =====================================================
rate       ``base_rate_wpm * rate``        words per minute, clamped to eSpeak's 80..450
pitch      ``pitch`` (F0 factor)           calibrated so median F0 scales by ``pitch``; 0..100
volume     ``60 * energy``                 amplitude is linear in it; peak ~0.5 at energy 1
range      ``50 * energy``                 intonation range: aroused speech is more animated
=========  ==============================  =====================================================

Values past eSpeak's limits saturate.

eSpeak carries state from one utterance to the next (the phase of its pitch flutter, its echo buffer, the
roughness of voicing, some variants' breath noise, pitch settings left in the loaded voice), so the same text
and settings come out a few samples different depending on what the process said before: enough to move a
syllable count. So every call reloads its voice, and a deterministic voice (the default) speaks through a
variant that turns flutter, echo, roughness and breath off; the same call then gives the same samples in any
process. The variant files live in a per-process overlay of eSpeak's data folder (symlinks plus the
variants): eSpeak reads variants only from its data folder, and the installed package is not ours to write.
"""
from __future__ import annotations

import atexit
import ctypes
import os
import shutil
import tempfile
import threading
from typing import List, Optional

import numpy as np

from antiphon.checks import check_number
from antiphon.dialogue import Prosody, Voice

from .base import speakable, check_sample_rate, resolve_prosody, silence, to_output

# speak_lib.h
_AUDIO_OUTPUT_SYNCHRONOUS = 2  # no playback; espeak_Synth returns once the callback has had all the audio
_INITIALIZE_DONT_EXIT = 0x8000  # return an error instead of exit() when the data folder is missing
_RATE, _VOLUME, _PITCH, _RANGE = 1, 2, 3, 4  # espeak_PARAMETER
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_EE_OK = 0

_MIN_WPM, _MAX_WPM = 80, 450
_BASE_VOLUME = 60  # of eSpeak's 0..200 (default 100 peaks at ~0.8): leaves headroom for energy up to ~2
_BASE_RANGE = 50  # eSpeak's default intonation range

# Median F0 (autocorrelation, 5 en-us sentences) at pitch parameter 0, 5, ..., 100 and range 50, relative to
# the F0 at pitch 50. eSpeak scales the voice's base F0 by an exponential table of the pitch parameter
# (one octave over 0..100) but adds the intonation excursions on top, which compresses the ratios.
_PITCH_PARAMS = np.arange(0, 101, 5, dtype=np.float64)
_PITCH_RATIO = np.array([0.700, 0.723, 0.740, 0.762, 0.779, 0.812, 0.842, 0.880, 0.913, 0.956, 1.000,
                         1.050, 1.105, 1.162, 1.225, 1.288, 1.355, 1.432, 1.515, 1.608, 1.670])
# Each range step above 50 adds about this much to that ratio at any pitch (range 0 / 100: -0.12 / +0.13).
_RATIO_PER_RANGE = 0.0026

# Lines appended to a variant: later lines win in eSpeak's voice files. Each removes history from the output.
_STEADY = "flutter 0\necho 0 0\nroughness 0\nbreath 0 0 0 0 0 0 0 0\n"
_STEADY_PREFIX = "antiphon-steady"

_LOCK = threading.Lock()  # eSpeak is not thread-safe: all use of the library goes through it
_CALLBACK_TYPE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class _Engine:
    """The process's one eSpeak synthesiser; use only while holding ``_LOCK``."""

    def __init__(self) -> None:
        import espeakng_loader

        # RTLD_LOCAL: loaded RTLD_GLOBAL, its symbols pre-empt the espeak that piper carries in its own
        # extension, and piper segfaults in the same process (docs/cpu-stack.md).
        lib = ctypes.CDLL(espeakng_loader.get_library_path(), mode=os.RTLD_LOCAL)
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_CALLBACK_TYPE]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                     ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        lib.espeak_Synth.restype = ctypes.c_int

        self.stock_data = str(espeakng_loader.get_data_path())
        data_path = _overlay(self.stock_data)
        sample_rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, str(data_path).encode(),
                                            _INITIALIZE_DONT_EXIT)
        if sample_rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed ({sample_rate}) with data path {data_path}")
        self.lib = lib
        self.data_path = data_path
        self.sample_rate = sample_rate
        self._chunks: List[np.ndarray] = []
        # Kept on self: ctypes frees the C trampoline when the Python object goes, and eSpeak would call freed memory.
        self._callback = _CALLBACK_TYPE(self._collect)
        lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav, n_samples: int, events) -> int:
        if n_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n_samples,)).copy())
        return 0  # 0: go on synthesising

    def steady_name(self, name: str) -> str:
        """The name of ``name`` spoken through a history-free variant, its variant file written if new."""
        language, _, variant = name.partition("+")
        steady = f"{_STEADY_PREFIX}-{variant}" if variant else _STEADY_PREFIX
        path = os.path.join(self.data_path, "voices", "!v", steady)
        if not os.path.exists(path):
            if variant:
                stock = os.path.join(self.stock_data, "voices", "!v", variant)
                if not variant.strip() or os.sep in variant or not os.path.isfile(stock):
                    raise ValueError(f"unknown espeak voice {name!r}")
                with open(stock, encoding="utf-8", errors="replace") as f:
                    body = f.read().rstrip("\n") + "\n"
            else:
                body = f"language variant\nname {steady}\n"
            with open(path + ".tmp", "w", encoding="utf-8") as f:
                f.write(body + _STEADY)
            os.replace(path + ".tmp", path)
        return f"{language}+{steady}"

    def set_voice(self, name: str) -> None:
        # Reloaded on every utterance, even the same voice (0.1 ms): the previous utterance's pitch settings
        # linger in the loaded voice and would shift this one.
        if self.lib.espeak_SetVoiceByName(name.encode()) != _EE_OK:
            raise ValueError(f"unknown espeak voice {name!r} (see espeak-ng-data/voices in espeakng-loader)")

    def synth(self, text: str, rate: int, pitch: int, volume: int, pitch_range: int) -> np.ndarray:
        """int16 samples at ``self.sample_rate``."""
        for parameter, value in ((_RATE, rate), (_PITCH, pitch), (_VOLUME, volume), (_RANGE, pitch_range)):
            self.lib.espeak_SetParameter(parameter, value, 0)
        data = text.encode("utf-8") + b"\0"
        self._chunks = []
        err = self.lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        chunks, self._chunks = self._chunks, []
        if err != _EE_OK:
            raise RuntimeError(f"espeak_Synth failed with error {err} for text {text[:80]!r}")
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)


_ENGINE: Optional[_Engine] = None


def _overlay(stock: str) -> str:
    """A temporary data folder that links every file of ``stock`` and has room for our own variants."""
    root = tempfile.mkdtemp(prefix="antiphon-espeak-")
    atexit.register(shutil.rmtree, root, True)
    # voices/ and voices/!v are real folders (the variants go in the latter); everything else is a link.
    for rel, keep in (("", "voices"), ("voices", "!v"), (os.path.join("voices", "!v"), None)):
        os.makedirs(os.path.join(root, rel), exist_ok=True)
        for name in os.listdir(os.path.join(stock, rel)):
            if name != keep:
                os.symlink(os.path.join(stock, rel, name), os.path.join(root, rel, name))
    return root


def _engine() -> _Engine:
    """The process's engine, started on first use; call while holding ``_LOCK``."""
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = _Engine()
    return _ENGINE


def _pitch_param(base_pitch: float, factor: float, pitch_range: int) -> int:
    """The eSpeak pitch parameter whose median F0 is ``factor`` times that of ``base_pitch`` at range 50."""
    target = float(np.interp(base_pitch, _PITCH_PARAMS, _PITCH_RATIO)) * factor
    target -= _RATIO_PER_RANGE * (pitch_range - _BASE_RANGE)  # the range's own F0 shift, taken back
    return round(float(np.interp(target, _PITCH_RATIO, _PITCH_PARAMS)))  # saturates at 0 / 100


class EspeakVoice(Voice):
    """eSpeak NG voice ``voice`` (e.g. "en-us", "en-us+f3"), output at ``sample_rate``.

    ``deterministic`` (default): the same call gives the same samples whatever was spoken before (see the
    module's docstring); False keeps eSpeak's stock voice, flutter and echo included.
    """

    def __init__(self, sample_rate: int = 16000, voice: str = "en-us", base_rate_wpm: float = 175,
                 base_pitch: float = 50, deterministic: bool = True):
        self.sample_rate = check_sample_rate(sample_rate)
        if not isinstance(voice, str) or not voice:
            raise ValueError(f"voice must be a non-empty espeak voice name, got {voice!r}")
        check_number("base_rate_wpm", base_rate_wpm, _MIN_WPM, _MAX_WPM)
        check_number("base_pitch", base_pitch, 0, 100)
        self.voice = voice
        self.base_rate_wpm = float(base_rate_wpm)
        self.base_pitch = float(base_pitch)
        if not isinstance(deterministic, bool):
            raise ValueError(f"deterministic must be true or false, got {deterministic!r}")
        self.deterministic = deterministic
        with _LOCK:
            engine = _engine()
            try:  # an unknown voice fails here, not at the first utterance
                self._espeak_name = engine.steady_name(voice) if deterministic else voice
                engine.set_voice(self._espeak_name)
            except ValueError:
                raise ValueError(f"unknown espeak voice {voice!r} (see espeak-ng-data/voices in espeakng-loader)"
                                 ) from None

    def espeak_parameters(self, prosody: Prosody) -> dict:
        """The eSpeak rate / pitch / volume / range that voice ``prosody`` (see the module's table)."""
        pitch_range = round(float(np.clip(_BASE_RANGE * prosody.energy, 0, 100)))
        return {
            "rate": round(float(np.clip(self.base_rate_wpm * prosody.rate, _MIN_WPM, _MAX_WPM))),
            "pitch": _pitch_param(self.base_pitch, prosody.pitch, pitch_range),
            "volume": round(float(np.clip(_BASE_VOLUME * prosody.energy, 0, 200))),
            "pitch_range": pitch_range,
        }

    def synthesize(self, text: str, emotion: Optional[str] = None, prosody: Optional[Prosody] = None) -> np.ndarray:
        prosody = resolve_prosody(text, emotion, prosody)
        text = speakable(text)
        if not text.strip():
            return silence()
        parameters = self.espeak_parameters(prosody)
        with _LOCK:
            engine = _engine()
            engine.set_voice(self._espeak_name)
            samples = engine.synth(text, **parameters)
        return to_output(samples.astype(np.float32) / 32768.0, engine.sample_rate, self.sample_rate)
