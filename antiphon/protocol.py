"""The wire format antiphon owns: a finished dialogue (trajectory), msgpack-encoded, versioned.

No pickle anywhere: a message is a msgpack map of plain values; arrays travel as little-endian bytes
whose dtype the schema fixes (never read from the message). ``decode`` validates everything a consumer
relies on and raises ``ProtocolError`` naming the field, so a bad message can be dead-lettered.

Token layout: ``token_ids`` is the whole dialogue as the policy saw it, with ONE ``<|AUDIO|>`` per user
clip (engines and the learner expand it). ``policy_mask`` is 1 exactly on tokens the policy sampled;
``logprobs`` and ``versions`` are the behaviour log-prob and weight version of those tokens (0 / -1
elsewhere). Each turn records its token span; user turns carry the clip the policy heard.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import msgpack
import numpy as np

SCHEMA_VERSION = 1
MAX_MESSAGE_BYTES = 64 * 2**20


class ProtocolError(ValueError):
    """A message that cannot be accepted. ``field`` names where, the message says why."""

    def __init__(self, field_name: str, why: str):
        super().__init__(f"{field_name}: {why}")
        self.field = field_name


@dataclass
class AudioClip:
    pcm: np.ndarray  # int16 mono
    sample_rate: int

    @classmethod
    def from_float(cls, wave: np.ndarray, sample_rate: int) -> "AudioClip":
        wave = np.asarray(wave, dtype=np.float32)
        return cls(np.round(np.clip(wave, -1.0, 1.0) * 32767.0).astype(np.int16), int(sample_rate))

    def to_float(self) -> np.ndarray:
        return self.pcm.astype(np.float32) / 32767.0

    @property
    def seconds(self) -> float:
        return len(self.pcm) / self.sample_rate


@dataclass
class TurnRecord:
    role: str  # "user" | "assistant"
    start: int  # token span [start, end) in Trajectory.token_ids
    end: int
    text: str = ""  # user: what was said; assistant: the reply without reasoning
    reasoning: Optional[str] = None  # assistant: the <think> part
    emotion: Optional[str] = None  # user: spoken with; assistant: the style it expressed
    audio: Optional[AudioClip] = None  # user: the clip the policy heard; assistant: the voiced reply
    feedback: Optional[float] = None  # user: the simulator's score of the previous agent turn
    weight_version: int = -1  # assistant: the version that generated the turn
    finish_reason: Optional[str] = None
    timing: Dict[str, float] = field(default_factory=dict)


@dataclass
class Trajectory:
    trajectory_id: str
    run: str
    scenario: Dict[str, Any]
    token_ids: np.ndarray  # int32
    policy_mask: np.ndarray  # uint8
    logprobs: np.ndarray  # float32
    versions: np.ndarray  # int32
    turns: List[TurnRecord]
    end_reason: str
    worker: int = 0
    created_at: float = 0.0
    meta: Dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @property
    def num_agent_turns(self) -> int:
        return sum(1 for t in self.turns if t.role == "assistant")


# -- encoding ------------------------------------------------------------------------------------
_ARRAYS = {"token_ids": "<i4", "policy_mask": "|u1", "logprobs": "<f4", "versions": "<i4"}


def _clip_out(c: Optional[AudioClip]):
    if c is None:
        return None
    return {"pcm": np.ascontiguousarray(c.pcm, dtype="<i2").tobytes(), "sr": int(c.sample_rate)}


def encode(t: Trajectory) -> bytes:
    msg = {
        "v": SCHEMA_VERSION,
        "id": t.trajectory_id, "run": t.run, "scenario": t.scenario, "end_reason": t.end_reason,
        "worker": int(t.worker), "created_at": float(t.created_at), "meta": t.meta,
        **{k: np.ascontiguousarray(getattr(t, k), dtype=d).tobytes() for k, d in _ARRAYS.items()},
        "turns": [{
            "role": x.role, "start": int(x.start), "end": int(x.end), "text": x.text, "reasoning": x.reasoning,
            "emotion": x.emotion, "audio": _clip_out(x.audio), "feedback": x.feedback,
            "weight_version": int(x.weight_version), "finish_reason": x.finish_reason, "timing": x.timing,
        } for x in t.turns],
    }
    return msgpack.packb(msg, use_bin_type=True)


# -- decoding + validation -----------------------------------------------------------------------
def _need(m: Dict[str, Any], key: str, typ, where: str):
    if key not in m:
        raise ProtocolError(f"{where}{key}", "missing")
    v = m[key]
    if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
        raise ProtocolError(f"{where}{key}", f"expected {getattr(typ, '__name__', typ)}, got {type(v).__name__}")
    return v


def _opt(m: Dict[str, Any], key: str, typ, where: str):
    v = m.get(key)
    if v is not None and not isinstance(v, typ):
        raise ProtocolError(f"{where}{key}", f"expected {getattr(typ, '__name__', typ)} or nil, got {type(v).__name__}")
    return v


def _clip_in(m: Any, where: str) -> Optional[AudioClip]:
    if m is None:
        return None
    if not isinstance(m, dict):
        raise ProtocolError(where, "expected a map")
    pcm = _need(m, "pcm", bytes, where + ".")
    sr = _need(m, "sr", int, where + ".")
    if sr <= 0:
        raise ProtocolError(f"{where}.sr", f"sample rate {sr} is not positive")
    if len(pcm) % 2:
        raise ProtocolError(f"{where}.pcm", "int16 PCM has an odd byte count")
    return AudioClip(np.frombuffer(pcm, dtype="<i2").astype(np.int16), sr)


def _envelope(data: bytes, version: int, what: str) -> Dict[str, Any]:
    """The message's top-level map, once its size, msgpack encoding and ``v`` (== ``version``) are checked."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise ProtocolError("message", f"{len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        m = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as e:  # msgpack raises several unrelated types on garbage
        raise ProtocolError("message", f"not msgpack ({type(e).__name__}: {e})") from None
    if not isinstance(m, dict):
        raise ProtocolError("message", f"expected a map, got {type(m).__name__}")
    if m.get("v") != version:
        raise ProtocolError("v", f"{what} version {m.get('v')!r}, this build reads {version}")
    return m


def decode(data: bytes) -> Trajectory:
    """Parses and validates one message; raises ProtocolError (naming the field) on anything off."""
    m = _envelope(data, SCHEMA_VERSION, "schema")
    arrays = {}
    for k, dt in _ARRAYS.items():
        raw = _need(m, k, bytes, "")
        if len(raw) % np.dtype(dt).itemsize:
            raise ProtocolError(k, f"{len(raw)} bytes is not a whole number of {dt}")
        arrays[k] = np.frombuffer(raw, dtype=dt).astype(np.dtype(dt).newbyteorder("="))
    n = len(arrays["token_ids"])
    for k, a in arrays.items():
        if len(a) != n:
            raise ProtocolError(k, f"length {len(a)} != token_ids length {n}")
    mask = arrays["policy_mask"]
    if not np.isin(mask, (0, 1)).all():
        raise ProtocolError("policy_mask", "values other than 0/1")
    lp = arrays["logprobs"]
    if not np.isfinite(lp).all():
        raise ProtocolError("logprobs", "NaN or inf")
    if (lp[mask == 1] > 1e-4).any():
        raise ProtocolError("logprobs", "positive log-probability on a policy token")
    if (arrays["versions"][mask == 1] < 0).any():
        raise ProtocolError("versions", "policy token without a weight version")

    turns = []
    raw_turns = _need(m, "turns", list, "")
    pos = 0
    for i, tm in enumerate(raw_turns):
        w = f"turns[{i}]."
        if not isinstance(tm, dict):
            raise ProtocolError(f"turns[{i}]", "expected a map")
        role = _need(tm, "role", str, w)
        if role not in ("user", "assistant"):
            raise ProtocolError(w + "role", f"{role!r} is not user/assistant")
        start, end = _need(tm, "start", int, w), _need(tm, "end", int, w)
        if not (start == pos and start <= end <= n):
            raise ProtocolError(w + "start", f"span [{start}, {end}) does not continue at {pos} within {n} tokens")
        pos = end
        if role == "user" and mask[start:end].any():
            raise ProtocolError(w + "start", "a user turn's tokens are marked as policy tokens")
        feedback = _opt(tm, "feedback", (int, float), w)
        if feedback is not None and not math.isfinite(feedback):
            raise ProtocolError(w + "feedback", f"{feedback} is not finite")
        timing = _opt(tm, "timing", dict, w) or {}
        turns.append(TurnRecord(
            role=role, start=start, end=end, text=_opt(tm, "text", str, w) or "",
            reasoning=_opt(tm, "reasoning", str, w), emotion=_opt(tm, "emotion", str, w),
            audio=_clip_in(tm.get("audio"), f"turns[{i}].audio"),
            feedback=None if feedback is None else float(feedback),
            weight_version=_opt(tm, "weight_version", int, w) if tm.get("weight_version") is not None else -1,
            finish_reason=_opt(tm, "finish_reason", str, w), timing={str(k): float(v) for k, v in timing.items()},
        ))
    if raw_turns and pos != n:
        raise ProtocolError("turns", f"spans cover {pos} of {n} tokens")
    if mask.any() and not raw_turns:
        raise ProtocolError("turns", "policy tokens but no turns")
    for t in turns:
        if t.role == "assistant" and mask[t.start:t.end].any() and t.weight_version < 0:
            raise ProtocolError("turns", "an agent turn with policy tokens has no weight_version")
    return Trajectory(
        trajectory_id=_need(m, "id", str, ""), run=_need(m, "run", str, ""),
        scenario=_need(m, "scenario", dict, ""), end_reason=_need(m, "end_reason", str, ""),
        worker=_opt(m, "worker", int, "") or 0, created_at=float(_opt(m, "created_at", (int, float), "") or 0.0),
        meta=_opt(m, "meta", dict, "") or {}, turns=turns, **arrays,
    )


# -- scored trajectories (reward service -> learner) -----------------------------------------------
SCORED_SCHEMA_VERSION = 1


@dataclass
class Rewards:
    """What the reward service adds: a reward per agent turn (placed at its last token by the learner),
    a dialogue reward (placed at the last agent token), and every component's values, kept apart."""

    turn: List[float]  # weighted sum of the turn-scope components, one per agent turn
    dialogue: float  # weighted sum of the dialogue-scope components
    components: Dict[str, Dict[str, Any]]  # name -> {scope, weight, status, raw, norm, details}
    service: Dict[str, Any] = field(default_factory=dict)  # replica, timing

    @property
    def total(self) -> float:
        return float(sum(self.turn) + self.dialogue)


@dataclass
class ScoredTrajectory:
    trajectory: Trajectory
    rewards: Rewards


def encode_scored(s: ScoredTrajectory) -> bytes:
    return msgpack.packb({"v": SCORED_SCHEMA_VERSION, "trajectory": encode(s.trajectory),
                          "rewards": {"turn": [float(x) for x in s.rewards.turn],
                                      "dialogue": float(s.rewards.dialogue),
                                      "components": s.rewards.components, "service": s.rewards.service}},
                         use_bin_type=True)


def decode_scored(data: bytes) -> ScoredTrajectory:
    """Parses and validates a scored message (its trajectory included); ProtocolError naming the field."""
    m = _envelope(data, SCORED_SCHEMA_VERSION, "scored schema")
    traj = decode(_need(m, "trajectory", bytes, ""))
    r = _need(m, "rewards", dict, "")
    turn = _need(r, "turn", list, "rewards.")
    n_agent = traj.num_agent_turns
    if len(turn) != n_agent:
        raise ProtocolError("rewards.turn", f"{len(turn)} rewards for {n_agent} agent turns")
    values = [*turn, _need(r, "dialogue", (int, float), "rewards.")]
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in values):
        raise ProtocolError("rewards.turn", "non-finite or non-numeric reward")
    return ScoredTrajectory(traj, Rewards(turn=[float(x) for x in turn], dialogue=float(values[-1]),
                                          components=_need(r, "components", dict, "rewards."),
                                          service=_opt(r, "service", dict, "rewards.") or {}))
