"""PCM16 mono wav files and resampling: the one reader and writer antiphon uses.

Replay recordings, the example sets written for them and the dialogues a run writes out for listening are
all PCM16 mono wavs. Samples convert as ``antiphon.protocol.AudioClip`` does (float x 32767, rounded and
clipped; back by / 32767), so what is read from a file is exactly what the policy hears from the wire.
torch/torchaudio are imported only when resampling, so that importing this module stays light.
"""
from __future__ import annotations

import functools
import os
import wave
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np

from antiphon.protocol import AudioClip

PathLike = Union[str, os.PathLike]


def write_wav(path: PathLike, audio: np.ndarray, sample_rate: int) -> Path:
    """``audio`` as a PCM16 mono wav (int16 samples as they are; float samples in [-1, 1]); makes the folder."""
    a = np.asarray(audio)
    pcm = a if a.dtype == np.int16 else AudioClip.from_float(a, sample_rate).pcm
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(p), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(sample_rate))
        w.writeframes(np.ascontiguousarray(pcm, dtype="<i2").tobytes())
    return p


def wav_header(path: PathLike) -> Tuple[int, int]:
    """(sample rate, frames) of a PCM16 mono wav, without reading the samples; ValueError saying what is wrong."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"file not found: {p}")
    try:
        with wave.open(str(p), "rb") as w:
            ch, width, rate, frames = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
    except (wave.Error, EOFError) as e:
        raise ValueError(f"{p}: not a PCM wav ({e})") from None
    if ch != 1 or width != 2:
        raise ValueError(f"{p}: expected PCM16 mono, got {ch} channel(s) of {8 * width} bit")
    if frames == 0:
        raise ValueError(f"{p}: no audio frames")
    return rate, frames


def read_wav(path: PathLike, sample_rate: Optional[int] = None) -> np.ndarray:
    """A PCM16 mono wav as float32 in [-1, 1], resampled to ``sample_rate`` when given and different."""
    with wave.open(str(path), "rb") as w:
        if w.getnchannels() != 1 or w.getsampwidth() != 2:
            raise ValueError(f"{path}: expected PCM16 mono")
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    audio = np.clip(pcm.astype(np.float32) / 32767.0, -1.0, 1.0)  # -32768 would be just below -1
    if sample_rate is not None and int(sample_rate) != rate:
        audio = resample(audio, rate, int(sample_rate))
    return audio


@functools.lru_cache(maxsize=64)
def _resampler(orig: int, new: int):
    import torchaudio

    # Building the sinc kernel costs more than applying it (2 ms vs 0.25 ms for 3 s of 22.05 -> 16 kHz), and
    # the rate pairs in use are few (one per voice or recording set, one per pitch factor): keep the kernels.
    return torchaudio.transforms.Resample(orig, new)


def resample(audio: np.ndarray, orig: int, new: int) -> np.ndarray:
    """Band-limited (sinc) resampling of float audio; float32 clipped to [-1, 1] (the filter overshoots a
    full-scale input slightly). The kernel grows with ``orig / gcd(orig, new)``: keep the pair's gcd large."""
    audio = np.asarray(audio, dtype=np.float32)
    if int(orig) != int(new) and audio.size:
        import torch

        audio = _resampler(int(orig), int(new))(torch.from_numpy(np.ascontiguousarray(audio))).numpy()
    return np.clip(audio, -1.0, 1.0).astype(np.float32, copy=False)
