"""Audio verifiers on real voiced audio (eSpeak at 16 kHz): prosody features, emotional continuity, DNSMOS."""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import msgpack
import numpy as np
import pytest

from antiphon.protocol import AudioClip, Trajectory, TurnRecord
from reward_service.verifiers.emotion import EmotionalContinuity, reference_from_clips
from reward_service.verifiers.prosody import measure_prosody
from reward_service.verifiers.quality import SpeechQuality

SR = 16000

USER_TEXTS = {
    "sad": ["I lost my job today and I do not know what to do.", "My dog died last night and the house feels empty."],
    "tired": ["It has been such a long week, I barely slept at all.", "I worked two shifts and I can hardly think."],
    "anxious": ["My exam is tomorrow and I am not ready at all.",
                "The doctor wants to see me again about the results."],
    "excited": ["I just got the job, I can not believe it!", "We are going to Japan next week, finally!"],
    "happy": ["We had a lovely dinner with the whole family.", "My sister called and the baby is healthy."],
}
AGENT_TEXTS = ["I hear you, let us figure this out together.", "Tell me a little more about what happened.",
               "That sounds like a lot to take in right now."]
# user emotion -> (delivery the empathy rule asks for, the opposite delivery)
MATCHING = {"sad": ("gentle", "excited"), "tired": ("calm", "excited"), "anxious": ("calm", "excited"),
            "excited": ("excited", "sad"), "happy": ("happy", "sad")}


@pytest.fixture(scope="module")
def voice():
    from simulator.voices import make_voice  # tests only: reward_service itself never imports simulator

    return make_voice("espeak", sample_rate=SR)


def clip(voice, text: str, emotion: Optional[str]) -> AudioClip:
    return AudioClip.from_float(voice.synthesize(text, emotion), SR)


Turn = Tuple[str, Optional[AudioClip], Optional[str]]  # role, audio, emotion label / style tag


def make_traj(turns: Sequence[Turn]) -> Trajectory:
    """A valid trajectory (it encodes) with two tokens per turn; agent tokens are policy tokens."""
    n = 2 * len(turns)
    mask = np.zeros(n, np.uint8)
    versions = np.full(n, -1, np.int32)
    records = []
    for i, (role, audio, emotion) in enumerate(turns):
        start = 2 * i
        if role == "assistant":
            mask[start:start + 2] = 1
            versions[start:start + 2] = 0
        records.append(TurnRecord(role, start, start + 2, text=f"turn {i}", emotion=emotion, audio=audio,
                                  weight_version=0 if role == "assistant" else -1))
    logprobs = np.where(mask == 1, -0.5, 0.0).astype(np.float32)
    return Trajectory("t-audio", "test", {}, np.arange(n, dtype=np.int32), mask, logprobs, versions, records,
                      end_reason="user_ended")


def one_exchange(voice, user_text: str, user_emotion: str, agent_text: str, agent_style: Optional[str],
                 agent_audio_emotion: Optional[str] = "same") -> Trajectory:
    audio_emotion = agent_style if agent_audio_emotion == "same" else agent_audio_emotion
    return make_traj([("user", clip(voice, user_text, user_emotion), user_emotion),
                      ("assistant", clip(voice, agent_text, audio_emotion), agent_style)])


# --- prosody --------------------------------------------------------------------------------------------------

def test_prosody_moves_with_the_emotion(voice):
    syllables = {"sad": 0, "excited": 0}
    speech_s = {"sad": 0.0, "excited": 0.0}
    for text in USER_TEXTS["sad"] + USER_TEXTS["excited"] + AGENT_TEXTS:
        sad = measure_prosody(voice.synthesize(text, "sad"), SR)
        neutral = measure_prosody(voice.synthesize(text, "neutral"), SR)
        excited = measure_prosody(voice.synthesize(text, "excited"), SR)
        for f in (sad, neutral, excited):
            assert f.usable and f.reason is None
            assert 60 < f.f0_median_hz < 250 and 1.5 < f.rate_hz < 10 and 0 < f.speech_s <= f.duration_s
            assert f.f0_p10_hz <= f.f0_median_hz <= f.f0_p90_hz and f.f0_range_st >= 0
        assert sad.f0_median_hz < neutral.f0_median_hz < excited.f0_median_hz, text
        assert excited.f0_median_hz / sad.f0_median_hz > 1.4  # EMOTION_PROSODY: 1.4 / 0.8
        assert sad.intensity_db < neutral.intensity_db < excited.intensity_db, text
        assert excited.intensity_db - sad.intensity_db > 6  # 20 log10(1.4 / 0.6) = 7.4 dB
        assert sad.rate_hz < neutral.rate_hz < excited.rate_hz, text
        # Voiced at 1.3 / 0.75 = 1.73x the words per minute. Syllable nuclei are intensity peaks split by a
        # 2 dB dip, and fast speech has shallower dips: the detector finds up to 3 of 12 fewer nuclei in the
        # excited reading of a line (12 -> 9 on "We are going to Japan..."), so one line's ratio can read as
        # low as 1.33 while the pooled rate keeps to the setting.
        assert excited.rate_hz / sad.rate_hz > 1.25, text
        assert sad.syllables == pytest.approx(excited.syllables, abs=3)  # same text, about the same count
        for emotion, f in (("sad", sad), ("excited", excited)):
            syllables[emotion] += f.syllables
            speech_s[emotion] += f.speech_s
    pooled = (syllables["excited"] / speech_s["excited"]) / (syllables["sad"] / speech_s["sad"])
    assert pooled > 1.5


def test_prosody_speaking_rate_counts_syllables(voice):
    # 13 syllables; eSpeak pads little silence, so the rate is close to syllables / duration.
    f = measure_prosody(voice.synthesize("I lost my job today and I do not know what to do."), SR)
    assert 11 <= f.syllables <= 14
    assert f.rate_hz == pytest.approx(f.syllables / f.speech_s)


def test_prosody_measures_every_clip_the_same_way_each_time(voice):
    # Its speed is measured in benchmarks/latency.py (benchmarks/RESULTS.md), not asserted here.
    clips = [voice.synthesize(t, e) for t in AGENT_TEXTS for e in ("sad", "neutral", "excited")]
    first = [measure_prosody(c, SR) for c in clips]
    for c, f in zip(clips, first):
        assert f.reason is None and f.f0_median_hz > 0 and f.rate_hz > 0 and 0 < f.speech_s <= f.duration_s
        assert measure_prosody(c, SR) == f  # no state carried between calls
    assert len({f.f0_median_hz for f in first}) > 1  # the deliveries differ, and the measure sees it


def test_a_clip_heard_again_is_measured_once_and_each_caller_gets_its_own_copy(voice, monkeypatch):
    from antiphon.protocol import AudioClip
    from reward_service.verifiers import prosody

    monkeypatch.setattr(prosody, "_clip_cache", type(prosody._clip_cache)())
    monkeypatch.setattr(prosody, "CLIP_CACHE_ENTRIES", 2)
    calls = []
    monkeypatch.setattr(prosody, "measure_prosody",
                        lambda *a, **k: calls.append(1) or measure_prosody(*a, **k))
    a, b, c = (AudioClip.from_float(voice.synthesize(t), SR) for t in AGENT_TEXTS[:3])
    first = prosody.clip_prosody(a)
    assert first == measure_prosody(a.pcm, SR) and len(calls) == 1
    first.f0_median_hz = -1.0  # a caller changing its copy changes nothing for the next one
    again = prosody.clip_prosody(AudioClip(pcm=a.pcm.copy(), sample_rate=a.sample_rate))  # equal samples
    assert len(calls) == 1 and again == measure_prosody(a.pcm, SR)
    prosody.clip_prosody(b), prosody.clip_prosody(c)  # two more: the cache holds 2, ``a`` was oldest
    assert len(calls) == 3 and len(prosody._clip_cache) == 2
    prosody.clip_prosody(a)
    assert len(calls) == 4

def test_prosody_of_silence_noise_and_nothing():
    rng = np.random.default_rng(0)
    cases = {
        "no audio": measure_prosody(None, SR),
        "empty": measure_prosody(np.zeros(0, np.float32), SR),
        "too short": measure_prosody(0.3 * np.sin(np.arange(800) * 0.06), SR),
        "silent": measure_prosody(np.zeros(3 * SR, np.float32), SR),
        "unvoiced": measure_prosody(rng.normal(0, 0.1, 3 * SR).astype(np.float32), SR),
        "silent pcm": measure_prosody(np.zeros(SR, np.int16), SR),
        "nan": measure_prosody(np.full(SR, np.nan, np.float32), SR),
    }
    for what, f in cases.items():
        assert not f.usable and f.reason, what
        assert f.rate_hz is None and f.f0_median_hz is None, what
        msgpack.packb(f.as_dict())  # plain values
    assert "silent" in cases["silent"].reason and "unvoiced" in cases["unvoiced"].reason
    assert cases["unvoiced"].intensity_db is not None  # what could be measured still is
    assert "short" in cases["too short"].reason


# --- emotional continuity -------------------------------------------------------------------------------------

@pytest.mark.parametrize("user_emotion", sorted(MATCHING))
def test_matching_delivery_beats_the_opposite(voice, user_emotion):
    verifier = EmotionalContinuity()
    match_style, opposite_style = MATCHING[user_emotion]
    for user_text in USER_TEXTS[user_emotion]:
        for agent_text in AGENT_TEXTS:
            good, = verifier.score(one_exchange(voice, user_text, user_emotion, agent_text, match_style))
            bad, = verifier.score(one_exchange(voice, user_text, user_emotion, agent_text, opposite_style))
            assert good.details["applicable"] and bad.details["applicable"]
            assert good.value > bad.value + 0.2, (user_text, agent_text, good.details, bad.details)
            assert 0.0 <= bad.value < good.value <= 1.0
            assert good.details["agent"]["closest_style"] == match_style
            assert match_style in good.details["expected"]["styles"]


def test_the_user_state_is_read_from_audio_not_the_label(voice):
    verifier = EmotionalContinuity()
    arousal = {}
    for emotion in ("sad", "tired", "excited", "happy"):
        for text in USER_TEXTS[emotion]:
            audio = clip(voice, text, emotion)
            agent = clip(voice, AGENT_TEXTS[0], "calm")
            labelled, = verifier.score(make_traj([("user", audio, emotion), ("assistant", agent, "calm")]))
            mislabelled, = verifier.score(make_traj([("user", audio, "neutral"), ("assistant", agent, "calm")]))
            unlabelled, = verifier.score(make_traj([("user", audio, None), ("assistant", agent, "calm")]))
            assert labelled.value == mislabelled.value == unlabelled.value
            state = labelled.details["user"]
            arousal[(emotion, text)] = state["arousal"]
            low = emotion in ("sad", "tired")
            assert state["emotion"] in (("sad", "tired", "calm") if low else ("excited", "happy", "angry", "anxious"))
            assert (state["arousal"] < -0.4) if low else (state["arousal"] > 0.4)
            assert (state["valence"] < 0) if low else (state["valence"] > 0)
            for key in ("f0_median_hz", "intensity_db", "rate_hz"):
                assert key in state["features"]
    assert max(a for (e, _), a in arousal.items() if e in ("sad", "tired")) < \
        min(a for (e, _), a in arousal.items() if e in ("excited", "happy"))


def test_state_relative_to_the_speaker_alone(voice):
    # No fixed reference: each turn reads relative to the speaker's own mean over the dialogue.
    verifier = EmotionalContinuity(user_reference=None)
    traj = make_traj([
        ("user", clip(voice, USER_TEXTS["sad"][0], "sad"), None),
        ("assistant", clip(voice, AGENT_TEXTS[0], "gentle"), "gentle"),
        ("user", clip(voice, USER_TEXTS["excited"][0], "excited"), None),
        ("assistant", clip(voice, AGENT_TEXTS[1], "excited"), "excited"),
    ])
    first, second = verifier.score(traj)
    assert first.details["user"]["arousal"] < -0.3 < 0.3 < second.details["user"]["arousal"]
    assert first.value > 0.6 and second.value > 0.5
    # The agent followed the user's swing, so its own swing is not penalised.
    assert second.details["continuity"] > 0.9


def test_the_agent_audio_alone_decides(voice):
    # An end-to-end speech agent: no style tags, only what its audio sounds like against its neutral voice.
    reference = reference_from_clips([voice.synthesize(t) for t in AGENT_TEXTS + USER_TEXTS["happy"]], SR)
    assert 80 < reference["f0_hz"] < 130 and 3 < reference["rate_hz"] < 7
    verifier = EmotionalContinuity(use_style_tag=False, audio_weight=1.0, agent_reference=reference)
    for user_emotion in ("sad", "excited"):
        match_style, opposite_style = MATCHING[user_emotion]
        for agent_text in AGENT_TEXTS:
            user_text = USER_TEXTS[user_emotion][0]
            good, = verifier.score(one_exchange(voice, user_text, user_emotion, agent_text, None, match_style))
            bad, = verifier.score(one_exchange(voice, user_text, user_emotion, agent_text, None, opposite_style))
            assert good.details["agent"]["source"] == "audio"
            assert good.value > bad.value + 0.25, (good.details, bad.details)


def test_a_tag_the_voice_did_not_render_does_not_count(voice):
    # The reply is tagged gentle but was voiced excited: the user heard excitement.
    reference = reference_from_clips([voice.synthesize(t) for t in AGENT_TEXTS], SR)
    verifier = EmotionalContinuity(agent_reference=reference)
    user_text, agent_text = USER_TEXTS["sad"][0], AGENT_TEXTS[0]
    honest, = verifier.score(one_exchange(voice, user_text, "sad", agent_text, "gentle"))
    lying, = verifier.score(one_exchange(voice, user_text, "sad", agent_text, "gentle", "excited"))
    assert honest.value > lying.value + 0.3
    assert lying.details["agent"]["tag_audio_distance"] > 0.3 > honest.details["agent"]["tag_audio_distance"]


def test_abrupt_swings_are_penalised_when_the_user_is_steady(voice):
    verifier = EmotionalContinuity()
    sad = [clip(voice, t, "sad") for t in USER_TEXTS["sad"] + USER_TEXTS["tired"][:1]]

    def dialogue(styles):
        turns: List[Turn] = []
        for user_audio, style, text in zip(sad, styles, AGENT_TEXTS):
            turns += [("user", user_audio, "sad"), ("assistant", clip(voice, text, style), style)]
        return verifier.score(make_traj(turns))

    steady = dialogue(["gentle", "gentle", "gentle"])
    swinging = dialogue(["gentle", "excited", "gentle"])
    assert [s.details["continuity"] for s in steady] == pytest.approx([1.0, 1.0, 1.0], abs=0.05)
    assert swinging[1].details["swing"] > 0.2 and swinging[1].details["continuity"] < 0.5
    assert swinging[1].value < 0.2 < 0.7 < steady[1].value
    # Swinging back is a swing too, but the right delivery still scores far above staying wrong.
    assert steady[2].value > swinging[2].value > dialogue(["gentle", "excited", "excited"])[2].value
    for s in steady + swinging:
        msgpack.packb(s.details)  # details travel with the scored trajectory


def test_missing_or_silent_audio_is_not_applicable(voice):
    verifier = EmotionalContinuity()
    speech_u = clip(voice, USER_TEXTS["sad"][0], "sad")
    speech_a = clip(voice, AGENT_TEXTS[0], "gentle")
    silent = AudioClip(np.zeros(2 * SR, np.int16), SR)
    empty = AudioClip(np.zeros(0, np.int16), SR)
    cases = {
        "agent opens": [("assistant", speech_a, "gentle")],
        "silent user": [("user", silent, "sad"), ("assistant", speech_a, "gentle")],
        "empty user": [("user", empty, "sad"), ("assistant", speech_a, "gentle")],
        "no user audio": [("user", None, "sad"), ("assistant", speech_a, "gentle")],
        "no agent audio": [("user", speech_u, "sad"), ("assistant", None, "gentle")],
        "empty agent audio": [("user", speech_u, "sad"), ("assistant", empty, "gentle")],
    }
    for what, turns in cases.items():
        scores = verifier.score(make_traj(turns))
        assert len(scores) == 1, what
        assert scores[0].details["applicable"] is False and scores[0].details["reason"], what
        assert scores[0].value == 0.0
    # A silent agent clip without a usable tag has nothing to measure; with a tag it falls back to the tag.
    no_tag = EmotionalContinuity(use_style_tag=False, audio_weight=1.0)
    s, = no_tag.score(make_traj([("user", speech_u, "sad"), ("assistant", silent, None)]))
    assert s.details["applicable"] is False and "silent" in s.details["reason"]
    s, = verifier.score(make_traj([("user", speech_u, "sad"), ("assistant", silent, "gentle")]))
    assert s.details["applicable"] and s.details["agent"]["source"] == "tag" and s.value > 0.6
    # One bad turn does not spoil the others.
    mixed = verifier.score(make_traj([("user", silent, "sad"), ("assistant", speech_a, "gentle"),
                                      ("user", speech_u, "sad"), ("assistant", speech_a, "gentle")]))
    assert [m.details["applicable"] for m in mixed] == [False, True]


def test_bad_configuration_is_refused():
    with pytest.raises(ValueError, match="intensity_db"):
        EmotionalContinuity(user_reference={"f0_hz": 100, "rate_hz": 5})
    with pytest.raises(ValueError, match="audio_weight"):
        EmotionalContinuity(audio_weight=1.5)
    with pytest.raises(ValueError, match="furious"):
        EmotionalContinuity(empathy_rule={"sad": {"furious": 1.0}})
    with pytest.raises(ValueError, match="feature_weights"):
        EmotionalContinuity(feature_weights={"loudness": 1.0})
    with pytest.raises(ValueError, match="nothing"):
        EmotionalContinuity(use_style_tag=False, audio_weight=0.0)
    assert EmotionalContinuity(user_prior_turns={"pitch": 0.5}).user_prior_turns.tolist() == [0.5, 3.0, 3.0]
    assert EmotionalContinuity().scope == SpeechQuality().scope == "turn"


# --- speech quality (DNSMOS) ----------------------------------------------------------------------------------

def test_quality_not_applicable_without_speech():
    quality = SpeechQuality()
    traj = make_traj([("user", None, None), ("assistant", None, None),
                      ("user", None, None), ("assistant", AudioClip(np.zeros(0, np.int16), SR), None),
                      ("user", None, None), ("assistant", AudioClip(np.zeros(3 * SR, np.int16), SR), None),
                      ("user", None, None), ("assistant", AudioClip(np.full(100, 1000, np.int16), SR), None)])
    scores = quality.score(traj)
    assert [s.details["applicable"] for s in scores] == [False] * 4
    assert [s.details["reason"].split()[0] for s in scores] == ["no", "empty", "silent", "too"]
    with pytest.raises(ValueError, match="max_windows"):
        SpeechQuality(max_windows=0)


@pytest.mark.slow  # the first DNSMOS call in a fresh environment JIT-compiles librosa: 16-42 s measured here
def test_dnsmos_ranks_speech_above_noise(voice):
    quality = SpeechQuality(threads=1)
    rng = np.random.default_rng(0)
    speech = [clip(voice, t, None) for t in AGENT_TEXTS[:2]]
    noise = AudioClip.from_float(rng.normal(0, 0.1, 3 * SR), SR)
    noisy = AudioClip.from_float(speech[0].to_float() + rng.normal(0, 0.05, len(speech[0].pcm)), SR)
    from simulator.voices import make_voice

    speech_22k = AudioClip.from_float(make_voice("espeak", sample_rate=22050).synthesize(AGENT_TEXTS[0]), 22050)
    turns: List[Turn] = []
    for c in speech + [noisy, noise, speech_22k]:
        turns += [("user", None, None), ("assistant", c, None)]
    scores = quality.score(make_traj(turns))
    for s in scores:
        assert s.details["applicable"] and 0.0 <= s.value <= 1.0
        assert s.value == pytest.approx(max(0.0, (s.details["ovrl_mos"] - 1) / 4), abs=1e-3)
        assert s.details["windows"] == 1 and s.details["fit"] == "tiled"
        msgpack.packb(s.details)
    clean_a, clean_b, noisy_s, noise_s, resampled = scores
    assert noise_s.details["ovrl_mos"] < 1.5  # docs/cpu-stack.md: white noise 1.1
    assert min(clean_a.details["ovrl_mos"], clean_b.details["ovrl_mos"], resampled.details["ovrl_mos"]) > 2.0
    assert min(clean_a.value, clean_b.value, resampled.value) > noisy_s.value > noise_s.value
    # A long reply is cropped to windows (here up to 2).
    long = AudioClip(np.tile(speech[0].pcm, 8), SR)
    s = SpeechQuality(max_windows=2, threads=1).score_clip(long)
    assert s.details["fit"] == "cropped" and s.details["windows"] == 2 and s.details["ovrl_mos"] > 2.0
