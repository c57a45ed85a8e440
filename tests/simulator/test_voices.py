"""The TTS voices on real audio: output format, and that each prosody control moves what it should."""
from __future__ import annotations

import re
import threading

import numpy as np
import pytest

from antiphon.dialogue import EMOTION_PROSODY, Prosody, Voice
from simulator.voices import (STYLE_TAGS, CachedVoice, EspeakVoice, PiperVoice, make_voice, parse_style)
from antiphon import style as tags_module

SR = 16000
TEXTS = ["I would like to book a table for two tonight.", "Could you tell me how the weather will be?"]


def median_f0(audio: np.ndarray, sr: int, fmin: float = 60.0, fmax: float = 400.0) -> float:
    """Median F0 (Hz) over voiced 40 ms frames: the autocorrelation peak within [fmin, fmax]."""
    frame = int(0.04 * sr)
    frames = np.lib.stride_tricks.sliding_window_view(audio.astype(np.float64), frame)[::frame // 2]
    frames = frames - frames.mean(axis=1, keepdims=True)
    frames = frames[np.sqrt((frames ** 2).mean(axis=1)) > 0.05 * np.abs(audio).max()]  # skip pauses
    spectrum = np.fft.rfft(frames, 2 * frame, axis=1)
    ac = np.fft.irfft(np.abs(spectrum) ** 2, axis=1)[:, :frame]
    lo, hi = int(sr / fmax), int(sr / fmin)
    lag = lo + np.argmax(ac[:, lo:hi], axis=1)
    voiced = ac[np.arange(len(ac)), lag] > 0.5 * ac[:, 0]
    assert voiced.sum() >= 5, "too few voiced frames to measure F0"
    return float(np.median(sr / lag[voiced]))


def rms(audio: np.ndarray) -> float:
    return float(np.sqrt(np.mean(audio.astype(np.float64) ** 2)))


def measure(voice: Voice, emotion=None, prosody=None):
    """(geometric-mean F0, total seconds, mean RMS) over TEXTS."""
    clips = [voice.synthesize(text, emotion, prosody) for text in TEXTS]
    f0 = float(np.exp(np.mean([np.log(median_f0(c, voice.sample_rate)) for c in clips])))
    return f0, sum(len(c) for c in clips) / voice.sample_rate, float(np.mean([rms(c) for c in clips]))


def assert_speech(audio: np.ndarray, sr: int, words: int) -> None:
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert np.isfinite(audio).all() and np.abs(audio).max() <= 1.0
    assert rms(audio) > 0.01, "silent"
    seconds = len(audio) / sr
    assert 0.15 * words < seconds < 0.8 * words, f"{seconds:.2f} s for {words} words"
    assert 70 < median_f0(audio, sr) < 300  # periodic, in the human speaking range


@pytest.fixture(scope="module")
def espeak():
    return EspeakVoice(sample_rate=SR)


@pytest.fixture(scope="module")
def piper():
    return PiperVoice(sample_rate=SR)


# --- eSpeak ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sr", [16000, 24000])
def test_espeak_speaks_at_the_requested_rate(sr):
    voice = EspeakVoice(sample_rate=sr)
    assert voice.sample_rate == sr
    audio = voice.synthesize(TEXTS[0])
    assert_speech(audio, sr, words=9)


def test_espeak_pitch_scales_f0(espeak):
    f0, _, _ = measure(espeak, prosody=Prosody())
    # The pitch factor is calibrated to scale median F0 itself, not just move eSpeak's 0..100 knob.
    assert 1.2 < measure(espeak, prosody=Prosody(pitch=1.3))[0] / f0 < 1.4
    assert 0.72 < measure(espeak, prosody=Prosody(pitch=0.8))[0] / f0 < 0.88


def test_espeak_rate_scales_duration(espeak):
    _, seconds, _ = measure(espeak, prosody=Prosody())
    assert 0.55 < measure(espeak, prosody=Prosody(rate=1.5))[1] / seconds < 0.75
    assert 1.25 < measure(espeak, prosody=Prosody(rate=0.7))[1] / seconds < 1.6


def test_espeak_energy_scales_loudness_not_pitch(espeak):
    f0_loud, _, loud = measure(espeak, prosody=Prosody(energy=1.5))
    f0_quiet, _, quiet = measure(espeak, prosody=Prosody(energy=0.75))
    assert 1.7 < loud / quiet < 2.3
    # Energy widens the intonation range too, which alone would raise median F0 ~10%; the pitch mapping
    # takes that back out.
    assert f0_loud / f0_quiet == pytest.approx(1.0, abs=0.04)


def test_espeak_excited_is_higher_and_faster_than_sad(espeak):
    f0_excited, sec_excited, rms_excited = measure(espeak, emotion="excited")
    f0_sad, sec_sad, rms_sad = measure(espeak, emotion="sad")
    assert f0_excited / f0_sad > 1.4  # EMOTION_PROSODY: 1.4 / 0.8
    assert sec_excited / sec_sad < 0.75  # 0.75 / 1.3
    assert rms_excited > 1.5 * rms_sad  # 1.4 / 0.6
    # An emotion is voiced exactly as its EMOTION_PROSODY entry.
    assert measure(espeak, prosody=EMOTION_PROSODY["excited"])[1] == pytest.approx(sec_excited, rel=0.02)


def test_espeak_is_deterministic_whatever_came_before(espeak):
    """The same call gives the same samples after any history, and in a fresh process."""
    import subprocess
    import sys

    first = espeak.synthesize(TEXTS[1], "excited")
    stock = EspeakVoice(sample_rate=SR, deterministic=False)
    for i, text in enumerate(["What? Really?!", "Hmm... okay, fine.", "Numbers 12 and 3.14"]):
        stock.synthesize(text, prosody=Prosody(pitch=0.6 + i, rate=1.8 - 0.5 * i, energy=0.5 + i))
        EspeakVoice(sample_rate=SR, voice="en-us+f3").synthesize(text, "sad")
        assert np.array_equal(espeak.synthesize(TEXTS[1], "excited"), first)
    code = ("import sys, numpy as np; from simulator.voices import EspeakVoice; "
            f"sys.stdout.buffer.write(EspeakVoice(sample_rate={SR}).synthesize({TEXTS[1]!r}, 'excited').tobytes())")
    fresh = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True).stdout
    assert np.array_equal(np.frombuffer(fresh, np.float32), first)
    # eSpeak's stock voice carries its flutter phase from call to call: the same call differs.
    assert not np.array_equal(stock.synthesize(TEXTS[1], "excited"), stock.synthesize(TEXTS[1], "excited"))


def test_espeak_variants_stay_deterministic():
    voice = EspeakVoice(sample_rate=SR, voice="en-us+f3")
    a = voice.synthesize(TEXTS[0])
    EspeakVoice(sample_rate=SR, deterministic=False).synthesize(TEXTS[1], "excited")
    assert np.array_equal(voice.synthesize(TEXTS[0]), a)
    assert median_f0(a, SR) > 1.3 * median_f0(EspeakVoice(sample_rate=SR).synthesize(TEXTS[0]), SR)  # f3: female
    with pytest.raises(ValueError, match="'en-us\\+nobody'"):
        EspeakVoice(voice="en-us+nobody")
    with pytest.raises(ValueError, match="deterministic"):
        EspeakVoice(deterministic="yes")


def test_espeak_threads_do_not_mix_settings(espeak):
    pitches = [0.8, 1.0, 1.3, 0.9]
    serial = [espeak.synthesize(TEXTS[0], prosody=Prosody(pitch=p)) for p in pitches]
    results = {}

    def speak(i, p):
        results[i] = [espeak.synthesize(TEXTS[0], prosody=Prosody(pitch=p)) for _ in range(5)]

    threads = [threading.Thread(target=speak, args=(i, p)) for i, p in enumerate(pitches)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, audio in enumerate(serial):  # deterministic: sample for sample what a lone thread gets
        assert all(np.array_equal(a, audio) for a in results[i]), f"pitch {pitches[i]}"


# --- Piper ----------------------------------------------------------------------------------------------------

def test_piper_speaks_naturally(piper):
    audio = piper.synthesize(TEXTS[1])
    assert_speech(audio, SR, words=9)
    # Continuous speech, not a burst and then silence: most 40 ms frames reach 1% of the peak.
    frame_peaks = np.abs(audio[: len(audio) // 640 * 640].reshape(-1, 640)).max(axis=1)
    assert (frame_peaks > 0.01 * frame_peaks.max()).mean() > 0.8


def test_piper_rate_energy_and_pitch(piper):
    f0, seconds, loudness = measure(piper, prosody=Prosody())
    assert 0.6 < measure(piper, prosody=Prosody(rate=1.4))[1] / seconds < 0.85
    assert 1.5 < measure(piper, prosody=Prosody(energy=1.6))[2] / measure(piper, prosody=Prosody(energy=0.8))[2] < 2.5
    f0_high, seconds_high, _ = measure(piper, prosody=Prosody(pitch=1.3))
    assert 1.15 < f0_high / f0 < 1.45
    assert 0.85 < seconds_high / seconds < 1.15  # the pitch shift keeps the duration


def test_espeak_and_piper_share_a_process(espeak, piper):
    # espeak is loaded RTLD_LOCAL: loaded globally, piper's own espeak would crash here.
    for voice in (espeak, piper, espeak):
        assert rms(voice.synthesize("Still talking.")) > 0.01


# --- shared behaviour -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("voice_cls", [EspeakVoice, PiperVoice])
def test_empty_text_is_silence(voice_cls):
    audio = voice_cls().synthesize("  ")
    assert audio.dtype == np.float32 and audio.shape == (0,)


def test_bad_arguments_are_named(espeak):
    with pytest.raises(ValueError, match="'furious'"):
        espeak.synthesize("hi", emotion="furious")
    with pytest.raises(ValueError, match="'furious'"):  # checked even when a prosody is given
        espeak.synthesize("hi", emotion="furious", prosody=Prosody())
    with pytest.raises(ValueError, match=r"Prosody\.rate"):
        espeak.synthesize("hi", prosody=Prosody(rate=0.0))
    with pytest.raises(ValueError, match=r"Prosody\.pitch"):
        espeak.synthesize("hi", prosody=Prosody(pitch=float("nan")))
    with pytest.raises(TypeError, match="text"):
        espeak.synthesize(None)
    with pytest.raises(ValueError, match="'xx-nowhere'"):
        EspeakVoice(voice="xx-nowhere")
    with pytest.raises(ValueError, match="sample_rate"):
        EspeakVoice(sample_rate=0)
    with pytest.raises(ValueError, match="model_path"):
        PiperVoice(model_path="/nonexistent/voice.onnx")
    with pytest.raises(ValueError, match="'festival'"):
        make_voice("festival")
    # The voice still works after the failed voice switch.
    assert rms(espeak.synthesize("hi")) > 0.01


def test_make_voice():
    voice = make_voice("espeak", sample_rate=22050)
    assert isinstance(voice, CachedVoice) and isinstance(voice.voice, EspeakVoice)
    assert voice.sample_rate == 22050
    assert isinstance(make_voice("piper", cache_size=0), PiperVoice)


# --- CachedVoice ----------------------------------------------------------------------------------------------

class CountingVoice(EspeakVoice):
    def __init__(self):
        super().__init__(sample_rate=SR)
        self.calls = 0

    def synthesize(self, text, emotion=None, prosody=None):
        self.calls += 1
        return super().synthesize(text, emotion, prosody)


def test_cache_returns_the_stored_array():
    inner = CountingVoice()
    voice = CachedVoice(inner)
    first = voice.synthesize("Hello there.", "happy")
    again = voice.synthesize("Hello there.", "happy")
    assert again is first and inner.calls == 1
    assert (voice.hits, voice.misses) == (1, 1)
    assert not first.flags.writeable  # no caller can change what the next one gets
    voice.synthesize("Hello there.", "sad")
    voice.synthesize("Hello there.", prosody=Prosody(pitch=1.2))
    assert voice.synthesize("Hello there.", prosody=Prosody(pitch=1.2)) is not first
    assert inner.calls == 3 and len(voice) == 3


def test_cache_evicts_least_recently_used():
    inner = CountingVoice()
    voice = CachedVoice(inner, max_entries=2)
    a = voice.synthesize("one")
    voice.synthesize("two")
    assert voice.synthesize("one") is a  # "one" is now the most recent
    voice.synthesize("three")  # evicts "two"
    assert len(voice) == 2 and inner.calls == 3
    assert voice.synthesize("one") is a and inner.calls == 3
    voice.synthesize("two")
    assert inner.calls == 4


def test_cache_bounds_bytes():
    inner = CountingVoice()
    one = inner.synthesize("one")
    voice = CachedVoice(inner, max_bytes=int(one.nbytes * 1.5))
    voice.synthesize("one")
    voice.synthesize("one more")  # larger than "one": together they exceed the budget
    assert len(voice) == 1 and voice.nbytes <= voice.max_bytes
    big = CachedVoice(inner, max_bytes=16)
    big.synthesize("too long to keep")
    assert len(big) == 0


# --- style tags -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, style, rest", [
    ("[calm] Take a breath.", "calm", "Take a breath."),
    ("[Excited]That's great news!", "excited", "That's great news!"),
    ("[ gentle ] I hear you.", "gentle", "I hear you."),
    ("Oh [happy]!", "happy", "Oh!"),
    ("I see.[serious]Listen", "serious", "I see. Listen"),
    ("[sad] I'm sorry. [calm] Take your time.", "sad", "I'm sorry. Take your time."),
    ("[calm][happy] Both.", "calm", "Both."),
    ("([neutral] aside)", "neutral", "(aside)"),
    ("line one [calm]\nline two", "calm", "line one\nline two"),
    ("[whisper] not a tag", None, "[whisper] not a tag"),
    ("[calmly] not a tag either", None, "[calmly] not a tag either"),
    ("[unknown] hi [sad]", "sad", "[unknown] hi"),
    ("No tags at all.", None, "No tags at all."),
    ("[happy]", "happy", ""),
    ("", None, ""),
])
def test_parse_style(text, style, rest):
    assert parse_style(text) == (style, rest)


def test_style_tags_voice_as_documented():
    assert set(STYLE_TAGS) == {"neutral", "calm", "gentle", "happy", "excited", "sad", "serious"}
    rows = re.findall(r"^(\w+)\s+``(\w+)``\s+([\d.]+), ([\d.]+), ([\d.]+)", tags_module.__doc__, re.M)
    assert {tag for tag, *_ in rows} == set(STYLE_TAGS)
    for tag, emotion, pitch, rate, energy in rows:
        assert STYLE_TAGS[tag] == emotion
        assert EMOTION_PROSODY[emotion] == Prosody(float(pitch), float(rate), float(energy)), tag


@pytest.mark.parametrize("name", ["espeak", "piper"])
def test_control_characters_from_a_policy_are_not_spoken(name):
    from simulator.voices import make_voice

    voice = make_voice(name, cache_size=0)
    out = voice.synthesize("hello\x00 there\x1b\ufffd friend")
    assert out.dtype == np.float32 and out.size > 0 and np.isfinite(out).all()
