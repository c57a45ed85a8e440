"""Emotional continuity: does the agent's voiced delivery meet the emotional state the user's voice shows?

``EmotionalContinuity`` (scope "turn") scores each agent turn against the user turn it answered, from audio:

1. **The user's state, read from the user's waveform** (never from ``TurnRecord.emotion``, which a real
   deployment would not have). Each user clip's prosody (``prosody.measure_prosody``: median F0, speech
   intensity, syllable rate) becomes a point in *log-factor space* relative to the speaker's baseline::

       relative = (ln F0/F0_base, ln rate/rate_base, (dB - dB_base) * ln10 / 20)     # pitch, rate, energy

   the same coordinates as ``ln EMOTION_PROSODY[e]`` (how the voices render an emotion). The baseline is
   the speaker's own mean over the dialogue's user turns, shrunk toward a fixed reference by
   ``user_prior_turns`` pseudo-turns (one number, or one per dimension):
   ``(k * reference + sum of turns) / (k + n)`` (in a one-turn dialogue a clip reads ``k / (k + 1)`` of its
   distance from the reference: the larger k, the more absolute the reading). The reference says what
   "neutral" sounds like before the speaker has said much (default: the simulator's eSpeak voice at default
   settings, ``DEFAULT_REFERENCE``); ``user_reference=None`` uses the dialogue alone (every state is then
   relative to the speaker's average — right for unknown real speakers in long dialogues, blind to a
   dialogue that is sad throughout). A soft nearest-prototype read-out against ``ln EMOTION_PROSODY[e]``
   for the user emotions (``antiphon.dialogue.EMOTIONS``) gives a posterior over emotions, from which:
   ``arousal`` (mean log factor, scaled so "excited" is +1 and "sad" about -1: high pitch + fast + loud is
   high arousal, low + slow + quiet is low), ``valence`` (valence-ish: the posterior-weighted ``VALENCE``;
   prosody tells arousal far better than valence) and the most likely ``emotion``.

2. **The agent's delivery**, from two sources, mixed by ``audio_weight``:

   - the audio (``agent.audio``): its prosody relative to the agent voice's neutral. That neutral is
     ``agent_reference`` when given (calibrate once with ``reference_from_clips`` on neutral renderings of
     the agent voice); otherwise it is estimated from the dialogue: the mean over agent turns of
     (measured - the turn's style-tag vector), i.e. assuming the voice renders tags faithfully on average;
     without tags, ``DEFAULT_REFERENCE``.
   - the style tag (``agent.emotion``, mapped through ``EMOTION_PROSODY``; an untagged reply is voiced
     neutral), when ``use_style_tag``.

   A reply with no audio was not heard: not applicable. Audio too short/unvoiced to measure falls back
   to the tag alone.

3. **The empathy rule** (``EMPATHY_RULE``, overridable): for each user emotion, the agent styles that meet
   it, with weights:

   =========  ==================================================  ===========================================
   user       delivery that meets it                              why
   =========  ==================================================  ===========================================
   sad        gentle 1.0, calm 0.9                                soft, unhurried; never bright
   tired      calm 1.0, gentle 1.0                                low energy, slow
   anxious    calm 1.0, gentle 0.9                                steady, lower, slower: de-escalate
   angry      calm 1.0, serious 0.8, gentle 0.7                   composed and firm, never matching the heat
   happy      happy 1.0, excited 0.9, neutral 0.5                 share the brightness
   excited    excited 1.0, happy 0.9                              match the energy
   calm       calm 1.0, neutral 0.9, gentle 0.9                   stay steady
   neutral    neutral 1.0, calm 0.8, gentle 0.6, happy 0.6,       neutral or calm
              serious 0.6
   =========  ==================================================  ===========================================

   The user-state read-out considers only the user emotions the rule names.
   ``match = sum_k P(user=k) * max_s w(k, s) * sim(delivery, ln EMOTION_PROSODY[s])`` with
   ``sim = exp(-d^2 / (2 * match_width^2))`` and d the weighted RMS distance over pitch/rate/energy.

4. **Continuity**: between consecutive agent turns, the delivery may move as much as the user's state
   moved (plus ``continuity_slack``); the excess ``swing`` is penalised:
   ``continuity = exp(-swing^2 / (2 * continuity_width^2))``. The turn's value is
   ``match * (1 - continuity_weight * (1 - continuity))`` in [0, 1] (the first agent turn: ``match``).

Not applicable (``details["applicable"] = False``, value 0.0, with ``reason``): the agent opened the
dialogue, the user clip is missing/silent/unmeasurable, or the agent reply has no audio.

Known limits: prosody separates arousal well and valence poorly: "anxious" and "excited" differ mostly in
energy, so an anxious user is read partly as excited (their matching/opposite margin is the smallest);
the syllable-rate proxy undercounts fast, smoothly articulated speech (Piper) more than eSpeak; a swing
back to the right delivery after a wrong turn counts as a swing too (the match term still dominates).
Cost: ~10 ms of Praat per clip (~70 ms for a 3-exchange dialogue).
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

from antiphon.dialogue import EMOTION_PROSODY, EMOTIONS
from antiphon.protocol import Trajectory, TurnRecord
from reward_service.component import RewardComponent, Score, agent_turns
from reward_service.verifiers.prosody import ProsodyFeatures, clip_prosody, measure_prosody

DIMS = ("pitch", "rate", "energy")
_DB_TO_LOG_AMP = math.log(10) / 20

# eSpeak NG en-us at its default settings (simulator.voices.EspeakVoice, 16 kHz), measured with
# measure_prosody over five sentences: what "neutral" sounds like for the simulator's default user voice.
# (Piper's "joe" voice measured 91 Hz, 4.2 syllables/s, 69.3 dB.)
DEFAULT_REFERENCE: Dict[str, float] = {"f0_hz": 100.0, "rate_hz": 5.0, "intensity_db": 68.8}

# Valence-ish values (circumplex placement) of the user emotions.
VALENCE: Dict[str, float] = {"neutral": 0.0, "calm": 0.4, "happy": 0.8, "excited": 0.7, "sad": -0.7,
                             "angry": -0.7, "anxious": -0.6, "tired": -0.3}

EMPATHY_RULE: Dict[str, Dict[str, float]] = {
    "sad": {"gentle": 1.0, "calm": 0.9},
    "tired": {"calm": 1.0, "gentle": 1.0},
    "anxious": {"calm": 1.0, "gentle": 0.9},
    "angry": {"calm": 1.0, "serious": 0.8, "gentle": 0.7},
    "happy": {"happy": 1.0, "excited": 0.9, "neutral": 0.5},
    "excited": {"excited": 1.0, "happy": 0.9},
    "calm": {"calm": 1.0, "neutral": 0.9, "gentle": 0.9},
    "neutral": {"neutral": 1.0, "calm": 0.8, "gentle": 0.6, "happy": 0.6, "serious": 0.6},
}


def prosody_vector(emotion: str) -> np.ndarray:
    """``ln EMOTION_PROSODY[emotion]`` as (pitch, rate, energy)."""
    p = EMOTION_PROSODY[emotion]
    return np.log([p.pitch, p.rate, p.energy])


def _absolute(f: ProsodyFeatures) -> Optional[np.ndarray]:
    """A clip's (ln F0, ln rate, dB as ln amplitude), or None when not all three were measured."""
    if not f.usable:
        return None
    return np.array([math.log(f.f0_median_hz), math.log(f.rate_hz), f.intensity_db * _DB_TO_LOG_AMP])


def _reference_vector(ref: Mapping[str, float]) -> np.ndarray:
    missing = [k for k in ("f0_hz", "rate_hz", "intensity_db") if k not in ref]
    if missing:
        raise ValueError(f"a prosody reference needs f0_hz, rate_hz and intensity_db; missing {missing}")
    if ref["f0_hz"] <= 0 or ref["rate_hz"] <= 0:
        raise ValueError(f"reference f0_hz and rate_hz must be positive, got {dict(ref)}")
    return np.array([math.log(ref["f0_hz"]), math.log(ref["rate_hz"]), float(ref["intensity_db"]) * _DB_TO_LOG_AMP])


def reference_from_clips(waves: Sequence[np.ndarray], sample_rate: int) -> Dict[str, float]:
    """A voice's neutral reference (for ``agent_reference`` / ``user_reference``) from clips it spoke neutrally:
    geometric-mean F0 and rate, mean intensity over the measurable clips."""
    vs = [v for v in (_absolute(measure_prosody(w, sample_rate)) for w in waves) if v is not None]
    if not vs:
        raise ValueError("none of the clips had measurable prosody")
    m = np.mean(vs, axis=0)
    return {"f0_hz": float(math.exp(m[0])), "rate_hz": float(math.exp(m[1])),
            "intensity_db": float(m[2] / _DB_TO_LOG_AMP)}


def _r(x: float, digits: int = 3) -> float:
    return round(float(x), digits)


def _vec_dict(v: Optional[np.ndarray]) -> Optional[Dict[str, float]]:
    return None if v is None else {d: _r(x) for d, x in zip(DIMS, v)}


def _feature_dict(f: ProsodyFeatures) -> Dict[str, Any]:
    d = f.as_dict()
    keep = ("duration_s", "speech_s", "f0_median_hz", "f0_range_st", "intensity_db", "rate_hz", "reason")
    return {k: d[k] for k in keep if d[k] is not None}


class EmotionalContinuity(RewardComponent):
    """See the module doc. Weights and widths are in log-factor units (ln of EMOTION_PROSODY factors)."""

    scope = "turn"

    def __init__(self, name: Optional[str] = None,
                 user_reference: Optional[Mapping[str, float]] = DEFAULT_REFERENCE,
                 user_prior_turns: Union[float, Mapping[str, float]] = 3.0,
                 agent_reference: Optional[Mapping[str, float]] = None,
                 use_style_tag: bool = True,
                 audio_weight: float = 0.5,
                 feature_weights: Optional[Mapping[str, float]] = None,
                 state_width: float = 0.12,
                 match_width: float = 0.15,
                 continuity_weight: float = 0.3,
                 continuity_slack: float = 0.1,
                 continuity_width: float = 0.15,
                 empathy_rule: Optional[Mapping[str, Mapping[str, float]]] = None):
        super().__init__(name)
        self.user_reference = None if user_reference is None else _reference_vector(user_reference)
        self.agent_reference = None if agent_reference is None else _reference_vector(agent_reference)
        if isinstance(user_prior_turns, Mapping):
            unknown = set(user_prior_turns) - set(DIMS)
            if unknown:
                raise ValueError(f"user_prior_turns keys must be among {DIMS}, got {sorted(unknown)}")
            prior = np.array([float(user_prior_turns.get(d, 3.0)) for d in DIMS])
        else:
            prior = np.full(len(DIMS), float(user_prior_turns))
        if (prior < 0).any():
            raise ValueError(f"user_prior_turns must be >= 0, got {user_prior_turns}")
        if not 0.0 <= audio_weight <= 1.0:
            raise ValueError(f"audio_weight must be in [0, 1], got {audio_weight}")
        if not use_style_tag and audio_weight == 0.0:
            raise ValueError("use_style_tag=False with audio_weight=0 leaves nothing to measure the delivery by")
        if not 0.0 <= continuity_weight <= 1.0:
            raise ValueError(f"continuity_weight must be in [0, 1], got {continuity_weight}")
        for k, v in (("state_width", state_width), ("match_width", match_width),
                     ("continuity_width", continuity_width)):
            if not v > 0:
                raise ValueError(f"{k} must be positive, got {v}")
        fw = dict(feature_weights or {})
        unknown = set(fw) - set(DIMS)
        if unknown:
            raise ValueError(f"feature_weights keys must be among {DIMS}, got {sorted(unknown)}")
        self.weights = np.array([float(fw.get(d, 1.0)) for d in DIMS])
        if (self.weights < 0).any() or self.weights.sum() <= 0:
            raise ValueError(f"feature_weights must be non-negative and not all zero, got {fw}")
        rule = {k: dict(v) for k, v in (empathy_rule or EMPATHY_RULE).items()}
        for user_emotion, styles in rule.items():
            if user_emotion not in EMOTIONS:
                raise ValueError(f"empathy_rule: unknown user emotion {user_emotion!r}; expected one of {EMOTIONS}")
            bad = [s for s in styles if s not in EMOTION_PROSODY]
            if bad or not styles:
                raise ValueError(f"empathy_rule[{user_emotion!r}]: styles must be non-empty keys of "
                                 f"EMOTION_PROSODY, got {bad or styles}")
        self.rule = rule
        self.user_prior_turns = prior
        self.use_style_tag = bool(use_style_tag)
        self.audio_weight = float(audio_weight)
        self.state_width, self.match_width = float(state_width), float(match_width)
        self.continuity_weight, self.continuity_slack = float(continuity_weight), float(continuity_slack)
        self.continuity_width = float(continuity_width)
        self.user_emotions = [e for e in EMOTIONS if e in rule]
        self._user_protos = np.array([prosody_vector(e) for e in self.user_emotions])
        self._arousal_unit = self._mean(prosody_vector("excited"))

    # -- geometry in log-factor space ------------------------------------------------------------
    def _mean(self, v: np.ndarray) -> float:
        return float((self.weights * v).sum() / self.weights.sum())

    def distance(self, a: np.ndarray, b: np.ndarray) -> float:
        """Weighted RMS distance over (pitch, rate, energy)."""
        return math.sqrt(self._mean((np.asarray(a) - np.asarray(b)) ** 2))

    def arousal(self, v: np.ndarray) -> float:
        """Mean log factor, in units of "excited" (+1); "sad" is about -1.1."""
        return self._mean(v) / self._arousal_unit

    def user_state(self, relative: np.ndarray) -> Dict[str, Any]:
        """Posterior over user emotions (soft nearest prototype), arousal and valence-ish of a relative vector."""
        d2 = np.array([self.distance(relative, p) ** 2 for p in self._user_protos])
        logits = -d2 / (2 * self.state_width ** 2)
        post = np.exp(logits - logits.max())
        post /= post.sum()
        top = int(np.argmax(post))
        return {"posterior": {e: float(p) for e, p in zip(self.user_emotions, post)},
                "emotion": self.user_emotions[top], "confidence": float(post[top]),
                "arousal": self.arousal(relative),
                "valence": float(sum(p * VALENCE.get(e, 0.0) for e, p in zip(self.user_emotions, post)))}

    def style_similarity(self, delivery: np.ndarray, style: str) -> float:
        return math.exp(-self.distance(delivery, prosody_vector(style)) ** 2 / (2 * self.match_width ** 2))

    def match(self, posterior: Mapping[str, float], delivery: np.ndarray) -> float:
        sims: Dict[str, float] = {}
        total = 0.0
        for emotion, p in posterior.items():
            best = 0.0
            for style, w in self.rule[emotion].items():
                if style not in sims:
                    sims[style] = self.style_similarity(delivery, style)
                best = max(best, w * sims[style])
            total += p * best
        return float(total)

    def expected_styles(self, posterior: Mapping[str, float], top: int = 3) -> Dict[str, float]:
        acc: Dict[str, float] = {}
        for emotion, p in posterior.items():
            for style, w in self.rule[emotion].items():
                acc[style] = acc.get(style, 0.0) + p * w
        return {s: _r(w) for s, w in sorted(acc.items(), key=lambda kv: -kv[1])[:top]}

    def closest_style(self, delivery: np.ndarray) -> str:
        return min(EMOTION_PROSODY, key=lambda s: self.distance(delivery, prosody_vector(s)))

    # -- baselines -------------------------------------------------------------------------------
    def user_baseline(self, absolutes: Sequence[np.ndarray]) -> Optional[np.ndarray]:
        n = len(absolutes)
        if n == 0:
            return self.user_reference
        if self.user_reference is None:
            return np.mean(absolutes, axis=0)
        k = self.user_prior_turns  # per dimension
        return (k * self.user_reference + np.sum(absolutes, axis=0)) / (k + n)

    def _tag_vector(self, agent: TurnRecord) -> Optional[np.ndarray]:
        if not self.use_style_tag:
            return None
        tag = agent.emotion or "neutral"  # an untagged reply is voiced neutral
        return prosody_vector(tag) if tag in EMOTION_PROSODY else None

    def agent_baseline(self, pairs: Sequence[tuple]) -> tuple:
        """(baseline, how) from [(absolute audio vector or None, tag vector or None)] of the dialogue's agent turns."""
        if self.agent_reference is not None:
            return self.agent_reference, "agent_reference"
        est = [a - t for a, t in pairs if a is not None and t is not None]
        if est:
            return np.mean(est, axis=0), "dialogue_tags"
        return _reference_vector(DEFAULT_REFERENCE), "default_reference"

    # -- scoring ---------------------------------------------------------------------------------
    def score(self, traj: Trajectory) -> List[Score]:
        pairs = agent_turns(traj)
        user_turns = [t for t in traj.turns if t.role == "user"]
        user_feats = {id(t): clip_prosody(t.audio) for t in user_turns}
        user_abs = {k: _absolute(f) for k, f in user_feats.items()}
        measured = [v for v in user_abs.values() if v is not None]
        base_u = self.user_baseline(measured)

        agent_feats = [clip_prosody(a.audio) for _, a in pairs]
        agent_abs = [_absolute(f) for f in agent_feats]
        tag_vecs = [self._tag_vector(a) for _, a in pairs]
        base_a, base_a_how = self.agent_baseline(list(zip(agent_abs, tag_vecs)))

        scores: List[Score] = []
        prev = None  # (user relative, delivery) of the previous scored agent turn
        for i, (user, agent) in enumerate(pairs):
            details: Dict[str, Any] = {"applicable": True}
            why = None
            if user is None:
                why = "no user turn before this agent turn"
            elif user_abs[id(user)] is None:
                why = f"user audio not measurable: {user_feats[id(user)].reason}"
            elif agent.audio is None or len(agent.audio.pcm) == 0:
                why = "agent reply has no audio"
            audio_rel = None if agent_abs[i] is None else agent_abs[i] - base_a
            tag_vec = tag_vecs[i]
            if why is None and audio_rel is None and tag_vec is None:
                why = f"agent audio not measurable ({agent_feats[i].reason}) and no style tag"
            if why is not None:
                scores.append(Score(0.0, {"applicable": False, "reason": why}))
                continue

            user_rel = user_abs[id(user)] - base_u
            state = self.user_state(user_rel)
            if audio_rel is not None and tag_vec is not None:
                delivery = self.audio_weight * audio_rel + (1 - self.audio_weight) * tag_vec
                source = "audio+tag"
            elif audio_rel is not None:
                delivery, source = audio_rel, "audio"
            else:
                delivery, source = tag_vec, "tag"
            match = self.match(state["posterior"], delivery)

            continuity, swing = 1.0, None
            if prev is not None:
                du = self.distance(user_rel, prev[0])
                da = self.distance(delivery, prev[1])
                swing = max(0.0, da - du - self.continuity_slack)
                continuity = math.exp(-swing ** 2 / (2 * self.continuity_width ** 2))
            value = match * (1 - self.continuity_weight * (1 - continuity))
            prev = (user_rel, delivery)

            details.update({
                "user": {"features": _feature_dict(user_feats[id(user)]), "relative": _vec_dict(user_rel),
                         "emotion": state["emotion"], "confidence": _r(state["confidence"]),
                         "arousal": _r(state["arousal"]), "valence": _r(state["valence"])},
                "expected": {"styles": self.expected_styles(state["posterior"])},
                "agent": {"features": _feature_dict(agent_feats[i]), "style_tag": agent.emotion,
                          "audio_relative": _vec_dict(audio_rel), "baseline": base_a_how,
                          "delivery": _vec_dict(delivery), "source": source,
                          "arousal": _r(self.arousal(delivery)), "closest_style": self.closest_style(delivery)},
                "match": _r(match), "continuity": _r(continuity),
            })
            if swing is not None:
                details["swing"] = _r(swing)
            if audio_rel is not None and tag_vec is not None:
                details["agent"]["tag_audio_distance"] = _r(self.distance(audio_rel, tag_vec))
            scores.append(Score(float(value), details))
        return scores
