"""The replay user: plays back recorded user turns (words + audio) from a JSONL manifest.

The recorded user does not hear the agent: whatever the policy says, the next recorded turn comes, and
the final recorded turn ends the dialogue (``done=True``). Format: simulator/REPLAY_FORMAT.md.

    simulator=replay +simulator.manifest=path/to/manifest.jsonl          # Hydra
    python -m simulator.replay --make-example OUT_DIR [--n 4] [--seed 0]  # a small voiced example set
    python -m simulator.replay --check MANIFEST [--scenarios-out FILE]    # validate; write matching scenarios

A recording is chosen by the scenario: the one whose ``dialogue_id`` equals ``scenario.scenario_id``, else
(with ``loop=True``) one picked from (seed, scenario_id) by a stable hash. The manifest is parsed and
validated once per process (every wav header checked); each recording's audio is decoded and resampled
once per process, on first use. Importing this module does not import torch.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import os
import threading
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from antiphon.dialogue import AgentTurn, Question, Scenario, UserSimulator, UserTurn
from antiphon.jsonl import read_jsonl, write_jsonl
from antiphon.wav import read_wav, wav_header, write_wav

_TOP_KEYS = {"dialogue_id", "scenario", "turns", "meta"}
_TURN_KEYS = {"text", "audio", "emotion", "feedback"}


class ManifestError(ValueError):
    """A malformed replay manifest; the message starts with ``file:line: field:``."""


@dataclass
class RecordedTurn:
    text: str
    audio_path: Path  # absolute
    emotion: Optional[str] = None
    feedback: Optional[float] = None
    wav_rate: int = 0  # the file's sample rate
    wav_frames: int = 0


@dataclass
class Recording:
    dialogue_id: str
    turns: List[RecordedTurn]
    scenario: Scenario  # the recorded scenario (``scenario_id`` = ``dialogue_id``; max_turns = agent turns)
    line: int
    meta: Dict[str, Any] = field(default_factory=dict)
    audio: Optional[List[np.ndarray]] = None  # decoded at the manifest's sample rate, on first use


@dataclass
class Manifest:
    path: Path
    sample_rate: int
    recordings: List[Recording]
    by_id: Dict[str, int]

    def pick(self, scenario_id: str, seed: int, loop: bool = True) -> Recording:
        """The recording named ``scenario_id``, else (``loop``) one picked from (seed, scenario_id)."""
        if scenario_id in self.by_id:
            return self.recordings[self.by_id[scenario_id]]
        if not loop:
            raise LookupError(f"{self.path}: no dialogue_id {scenario_id!r} (and simulator.loop=false)")
        return self.recordings[stable_index(seed, scenario_id, len(self.recordings))]


def stable_index(seed: int, key: str, n: int) -> int:
    """An index in [0, n) from (seed, key), the same on every machine and process (unlike ``hash``)."""
    digest = hashlib.sha256(f"{int(seed)}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % n


# ---------------------------------------------------------------------------------------------- loading

def _fail(path: str | os.PathLike, line: int, fld: str, why: str) -> ManifestError:
    return ManifestError(f"{path}:{line}: {fld}: {why}")


def _parse_line(path: Path, line: int, d: Dict[str, Any]) -> Recording:
    unknown = sorted(set(d) - _TOP_KEYS)
    if unknown:
        raise _fail(path, line, unknown[0], f"unknown field (expected {sorted(_TOP_KEYS)})")
    did = d.get("dialogue_id")
    if "dialogue_id" not in d:
        raise _fail(path, line, "dialogue_id", "missing")
    if not isinstance(did, str) or not did:
        raise _fail(path, line, "dialogue_id", f"must be a non-empty string, got {did!r}")
    turns = d.get("turns")
    if "turns" not in d:
        raise _fail(path, line, "turns", "missing")
    if not isinstance(turns, list) or len(turns) < 2:
        raise _fail(path, line, "turns", "must be a list of at least 2 user turns (an opening and a last word), "
                                         f"got {turns!r:.80}")
    out: List[RecordedTurn] = []
    for i, t in enumerate(turns):
        f = f"turns[{i}]"
        if not isinstance(t, dict):
            raise _fail(path, line, f, f"expected an object, got {type(t).__name__}")
        unknown = sorted(set(t) - _TURN_KEYS)
        if unknown:
            raise _fail(path, line, f"{f}.{unknown[0]}", f"unknown field (expected {sorted(_TURN_KEYS)})")
        for key in ("text", "audio"):
            if key not in t:
                raise _fail(path, line, f"{f}.{key}", "missing")
            if not isinstance(t[key], str):
                raise _fail(path, line, f"{f}.{key}", f"must be a string, got {t[key]!r}")
        if not t["audio"]:
            raise _fail(path, line, f"{f}.audio", "empty path")
        emotion = t.get("emotion")
        if emotion is not None and (not isinstance(emotion, str) or not emotion):
            raise _fail(path, line, f"{f}.emotion", f"must be a non-empty string or null, got {emotion!r}")
        fb = t.get("feedback")
        if fb is not None:
            if isinstance(fb, bool) or not isinstance(fb, (int, float)) or not 0.0 <= fb <= 1.0:
                raise _fail(path, line, f"{f}.feedback", f"must be a number in [0, 1] or null, got {fb!r}")
            if i == 0:
                raise _fail(path, line, f"{f}.feedback", "must be null: the opening turn follows no agent turn")
        wav_path = Path(t["audio"])
        if wav_path.is_absolute():
            raise _fail(path, line, f"{f}.audio", f"must be relative to the manifest's folder, got {t['audio']!r}")
        wav_path = (path.parent / wav_path).resolve()
        try:
            rate, frames = wav_header(wav_path)
        except ValueError as e:
            raise _fail(path, line, f"{f}.audio", str(e)) from None
        out.append(RecordedTurn(t["text"], wav_path, emotion, None if fb is None else float(fb), rate, frames))
    sd = d.get("scenario")
    if sd is None:
        sd = {}
    if not isinstance(sd, dict):
        raise _fail(path, line, "scenario", f"expected an object or null, got {type(sd).__name__}")
    if "scenario_id" in sd and sd["scenario_id"] != did:
        raise _fail(path, line, "scenario.scenario_id",
                    f"{sd['scenario_id']!r} differs from dialogue_id {did!r} (omit it or make them equal)")
    try:
        scenario = Scenario.from_dict({"max_turns": len(out) - 1, **sd, "scenario_id": did})
    except (KeyError, ValueError, TypeError) as e:
        raise _fail(path, line, "scenario", f"not a scenario ({type(e).__name__}: {e})") from None
    for q in scenario.questions:
        if not 0 <= q.turn < len(out) - 1:
            raise _fail(path, line, "scenario.questions",
                        f"turn {q.turn} is not a user turn an agent answers (0..{len(out) - 2})")
    meta = d.get("meta") or {}
    if not isinstance(meta, dict):
        raise _fail(path, line, "meta", f"expected an object, got {type(meta).__name__}")
    return Recording(did, out, scenario, line, meta)


def parse_manifest(path: str | os.PathLike, sample_rate: int = 16000) -> Manifest:
    """Parses and validates a manifest (wav headers included; audio is decoded later, per recording).

    Raises ManifestError naming ``file:line: field``.
    """
    p = Path(path).resolve()
    if not p.is_file():
        raise ManifestError(f"{p}: replay manifest not found")
    recordings: List[Recording] = []
    by_id: Dict[str, int] = {}
    for line, d in read_jsonl(p, error=_fail):
        rec = _parse_line(p, line, d)
        if rec.dialogue_id in by_id:
            first = recordings[by_id[rec.dialogue_id]].line
            raise _fail(p, line, "dialogue_id", f"{rec.dialogue_id!r} repeats line {first}")
        by_id[rec.dialogue_id] = len(recordings)
        recordings.append(rec)
    if not recordings:
        raise ManifestError(f"{p}: the manifest holds no dialogues")
    return Manifest(p, int(sample_rate), recordings, by_id)


# One parsed manifest per (file, version, sample rate) and process: a simulator is made per dialogue.
_CACHE: Dict[Tuple[str, int, int, int], Manifest] = {}
_LOCK = threading.Lock()


def load_manifest(path: str | os.PathLike, sample_rate: int = 16000) -> Manifest:
    """The parsed manifest, cached per process (key: absolute path, mtime, size, sample rate)."""
    p = Path(path).resolve()
    try:
        st = p.stat()
    except OSError:
        raise ManifestError(f"{p}: replay manifest not found") from None
    key = (str(p), st.st_mtime_ns, st.st_size, int(sample_rate))
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = parse_manifest(p, sample_rate)
        return _CACHE[key]


def recording_audio(manifest: Manifest, rec: Recording) -> List[np.ndarray]:
    """The recording's turns as float32 at the manifest's sample rate; decoded once, then shared (read-only)."""
    with _LOCK:
        if rec.audio is None:
            clips = []
            for i, t in enumerate(rec.turns):
                try:
                    a = read_wav(t.audio_path, manifest.sample_rate)
                except (OSError, wave.Error, EOFError, ValueError) as e:
                    raise _fail(manifest.path, rec.line, f"turns[{i}].audio", f"cannot decode ({e})") from None
                a.setflags(write=False)
                clips.append(a)
            rec.audio = clips
        return rec.audio


def clear_cache() -> None:
    with _LOCK:
        _CACHE.clear()


# -------------------------------------------------------------------------------------------- simulator

class ReplaySimulator(UserSimulator):
    """Replays one recorded dialogue's user turns; the final recorded turn ends the dialogue.

    ``manifest``: the JSONL manifest (REPLAY_FORMAT.md). ``loop``: scenarios whose id names no recording
    reuse one picked from (``seed``, scenario_id); with ``loop=False`` they end their dialogue with an error.
    Each turn's ``feedback`` is the recorded one: it scored the recorded agent, not the policy.
    """

    def __init__(self, manifest: str, sample_rate: int = 16000, seed: int = 0, loop: bool = True):
        if not isinstance(manifest, (str, os.PathLike)) or not str(manifest):
            raise ValueError(f"simulator.manifest: a path to a replay manifest is required, got {manifest!r}")
        self.manifest_path, self.sample_rate = str(manifest), int(sample_rate)
        self.seed, self.loop = int(seed), bool(loop)
        self.recording: Optional[Recording] = None
        self.audio: List[np.ndarray] = []
        self.turn = 0  # user turns returned so far

    def _load(self, scenario_id: str) -> Tuple[Recording, List[np.ndarray]]:
        m = load_manifest(self.manifest_path, self.sample_rate)
        rec = m.pick(scenario_id, self.seed, self.loop)
        return rec, recording_audio(m, rec)

    def _turn(self) -> UserTurn:
        rec, k = self.recording, self.turn
        t = rec.turns[k]
        q: Optional[Question] = next((q for q in rec.scenario.questions if q.turn == k), None)
        self.turn += 1
        return UserTurn(text=t.text, audio=self.audio[k], sample_rate=self.sample_rate, emotion=t.emotion,
                        feedback=t.feedback, done=self.turn == len(rec.turns), question=q)

    async def start(self, scenario: Scenario) -> UserTurn:
        # File reads, and torch's first import when resampling, stay off the event loop.
        self.recording, self.audio = await asyncio.to_thread(self._load, scenario.scenario_id)
        self.turn = 0
        return self._turn()

    async def react(self, agent: AgentTurn) -> UserTurn:
        if self.recording is None:
            raise RuntimeError("react before start")
        if self.turn >= len(self.recording.turns):
            raise RuntimeError(f"recording {self.recording.dialogue_id!r} has ended (its last turn had done=True)")
        return self._turn()


# ----------------------------------------------------------------------------------------- example set

def scenarios_of(manifest: Manifest) -> List[Scenario]:
    """One scenario per recording, ``scenario_id`` = ``dialogue_id`` and ``max_turns`` = its agent turns, so
    that ``simulator.scenarios=<these>`` replays every recording once, in full."""
    return [dataclasses.replace(r.scenario, max_turns=len(r.turns) - 1) for r in manifest.recordings]


def make_example(out_dir: str | os.PathLike, n: int = 4, seed: int = 0, turns: int = 3,
                 sample_rate: int = 16000, voice: str = "espeak") -> Path:
    """Writes OUT_DIR/manifest.jsonl, OUT_DIR/scenarios.jsonl and OUT_DIR/wav/*.wav; returns the manifest.

    ``n`` dialogues of ``turns`` user turns, from ``simulator.scenarios.generate_scenarios(n, seed)``: the
    persona's opening and goal, one disclosure per turn (plus its question, if any), and a goodbye, each
    voiced with the emotion of the scenario's arc. ``dialogue_id`` is the generated ``scenario_id``
    (``s<seed>-<i>``), so a run generating scenarios from the same seed replays recording i for scenario i.
    Feedback is left null (no agent was recorded).
    """
    from simulator.scenarios import generate_scenarios, write_jsonl as write_scenarios
    from simulator.scripted import _OPENERS
    from simulator.voices import make_voice

    if n < 1 or turns < 2:
        raise ValueError(f"need n >= 1 and turns >= 2, got n={n}, turns={turns}")
    out = Path(out_dir)
    (out / "wav").mkdir(parents=True, exist_ok=True)
    tts = make_voice(voice, sample_rate=sample_rate, cache_size=0)
    lines, scenarios = [], []
    for s in generate_scenarios(n, seed=seed, max_turns=turns):
        did = s.scenario_id  # as generated with the same seed: the launch's scenario s<seed>-<i> replays it
        questions = [q for q in s.questions if q.turn < turns - 1]  # the goodbye asks nothing
        recorded = []
        for k in range(turns):
            emotion = s.emotion_arc[min(k, len(s.emotion_arc) - 1)]
            if k == turns - 1:
                parts = ["Thank you, that helps. Bye!"]
            else:
                parts = [f"{_OPENERS.get(emotion, 'Hello.')} I want to {s.goal}." if k == 0 else ""]
                parts.append(s.disclosures[k] if k < len(s.disclosures) else "")
                parts += [f"Quick question, {q.text}" for q in questions if q.turn == k]
            text = " ".join(p for p in parts if p)
            rel = f"wav/{did}_{k}.wav"
            write_wav(out / rel, tts.synthesize(text, emotion), tts.sample_rate)
            recorded.append({"text": text, "audio": rel, "emotion": emotion, "feedback": None})
        sc = Scenario(scenario_id=did, persona=s.persona, goal=s.goal, emotion_arc=list(s.emotion_arc[:turns]),
                      questions=questions, disclosures=list(s.disclosures[:turns - 1]), max_turns=turns - 1,
                      meta=dict(s.meta))
        scenarios.append(sc)
        lines.append({"dialogue_id": did, "scenario": sc.to_dict(), "turns": recorded})
    manifest = write_jsonl(lines, out / "manifest.jsonl")
    write_scenarios(scenarios, out / "scenarios.jsonl")
    return manifest


def check(manifest: str | os.PathLike, sample_rate: int = 16000, scenarios_out: Optional[str] = None) -> str:
    """Validates a manifest and decodes all its audio; optionally writes its scenarios. A one-line summary."""
    m = parse_manifest(manifest, sample_rate)
    seconds = 0.0
    for r in m.recordings:
        seconds += sum(len(a) for a in recording_audio(m, r)) / sample_rate
    turns = sum(len(r.turns) for r in m.recordings)
    if scenarios_out:
        from simulator.scenarios import write_jsonl as write_scenarios

        write_scenarios(scenarios_of(m), scenarios_out)
    return (f"{m.path}: {len(m.recordings)} dialogues, {turns} user turns, {seconds:.1f} s of audio "
            f"at {sample_rate} Hz" + (f"; scenarios in {scenarios_out}" if scenarios_out else ""))


def main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(description="Replay-simulator manifests (simulator/REPLAY_FORMAT.md).")
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--make-example", metavar="OUT_DIR", help="write a small voiced example set to OUT_DIR")
    what.add_argument("--check", metavar="MANIFEST", help="validate a manifest and decode all its audio")
    ap.add_argument("--n", type=int, default=4, help="--make-example: dialogues")
    ap.add_argument("--seed", type=int, default=0, help="--make-example: scenario seed")
    ap.add_argument("--turns", type=int, default=3, help="--make-example: user turns per dialogue")
    ap.add_argument("--voice", default="espeak", help="--make-example: espeak | piper")
    ap.add_argument("--sample-rate", type=int, default=16000, help="wav rate written / rate checked at")
    ap.add_argument("--scenarios-out", help="--check: write one scenario per recording (JSONL)")
    a = ap.parse_args(argv)
    if a.make_example:
        manifest = make_example(a.make_example, a.n, a.seed, a.turns, a.sample_rate, a.voice)
        print(manifest)
        print(check(manifest, a.sample_rate))
    else:
        try:
            print(check(a.check, a.sample_rate, a.scenarios_out))
        except ManifestError as e:
            raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
