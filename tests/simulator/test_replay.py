"""The replay simulator on real audio: an espeak-voiced example set replayed through the dialogue loop
(with a scripted engine), resampling, recording selection, manifest validation, and the Hydra route."""
from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from antiphon.dialogue_loop import Dialogue, DialogueSettings
from antiphon.dialogue import Scenario, UserTurn
from antiphon.model.chat import ChatFormat
from antiphon.protocol import AudioClip
from antiphon.wav import read_wav, write_wav
from simulator.replay import (ManifestError, ReplaySimulator, check, load_manifest, main, make_example,
                              parse_manifest, stable_index)
from simulator.scenarios import read_jsonl
from support import ScriptedEngine

SR = 16000
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def chat(tiny_path):
    from transformers import AutoTokenizer

    return ChatFormat(AutoTokenizer.from_pretrained(tiny_path))


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> Path:
    return make_example(tmp_path_factory.mktemp("replay") / "example", n=3, seed=0, turns=3)


def _settings(**kw):
    return DialogueSettings(**{"max_turns": 3, "think_budget": 0, "open_think": False, "simulator_timeout_s": 20.0,
                               **kw})


def _engine(chat, n=4):
    return ScriptedEngine([chat.text("[gentle] I hear you") + [chat.im_end]] * n)


def _wav_pcm(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")


def _lines(manifest: Path):
    return [json.loads(x) for x in manifest.read_text().splitlines() if x.strip()]


def _run(chat, sim, scenario, **kw):
    engine = _engine(chat)
    d = Dialogue(engine, sim, scenario, chat, None, _settings(**kw))
    return d, asyncio.run(d.run()), engine


def test_example_set_is_a_valid_manifest_of_voiced_turns(example):
    lines = _lines(example)
    assert [d["dialogue_id"] for d in lines] == ["s0-00000", "s0-00001", "s0-00002"]
    for d in lines:
        assert len(d["turns"]) == 3 and d["turns"][-1]["text"].endswith("Bye!")
        assert [t["emotion"] for t in d["turns"]] == d["scenario"]["emotion_arc"]
        for t in d["turns"]:
            with wave.open(str(example.parent / t["audio"]), "rb") as w:
                assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, SR)
                assert w.getnframes() > 0.3 * SR  # spoken words, not an empty clip
    m = parse_manifest(example)
    assert [s.to_dict() for s in read_jsonl(example.parent / "scenarios.jsonl")] == \
           [r.scenario.to_dict() for r in m.recordings]
    assert "3 dialogues, 9 user turns" in check(example)


def test_a_recording_is_replayed_through_the_dialogue_loop(chat, example):
    rec = _lines(example)[1]
    scenario = read_jsonl(example.parent / "scenarios.jsonl")[1]
    d, traj, engine = _run(chat, ReplaySimulator(str(example)), scenario)
    assert d.end_reason == "user_ended" and traj.num_agent_turns == len(rec["turns"]) - 1 == 2
    users = [t for t in traj.turns if t.role == "user"]
    assert [t.text for t in users] == [t["text"] for t in rec["turns"]]
    assert [t.emotion for t in users] == [t["emotion"] for t in rec["turns"]]
    for u, t in zip(users, rec["turns"]):  # the policy hears the recorded samples exactly
        assert u.audio.sample_rate == SR
        assert np.array_equal(u.audio.pcm, _wav_pcm(example.parent / t["audio"]))
    assert users[-1].start == users[-1].end  # the last word carries no tokens: no agent reply follows
    assert [len(r.audio) for r in engine.requests] == [1, 2]
    # The recorded question rides on the turn that asked it.
    q = scenario.questions[0] if scenario.questions else None
    if q is not None:
        assert q.text in rec["turns"][q.turn]["text"]


def test_the_last_recorded_turn_ends_the_dialogue_whatever_the_scenario_allows(chat, example):
    d, traj, _ = _run(chat, ReplaySimulator(str(example)), Scenario("s0-00002", max_turns=5))
    assert d.end_reason == "user_ended" and traj.num_agent_turns == 2
    d, traj, _ = _run(chat, ReplaySimulator(str(example)), Scenario("s0-00002", max_turns=1))
    assert d.end_reason == "turn_cap" and traj.num_agent_turns == 1


def test_direct_replay_marks_only_the_last_turn_done(example):
    sim = ReplaySimulator(str(example))

    async def go():
        turns = [await sim.start(Scenario("s0-00000"))]
        while not turns[-1].done:
            turns.append(await sim.react(None))
        with pytest.raises(RuntimeError, match="has ended"):
            await sim.react(None)
        return turns

    turns = asyncio.run(go())
    assert [t.done for t in turns] == [False, False, True]
    assert all(isinstance(t, UserTurn) and t.audio.dtype == np.float32 and t.sample_rate == SR for t in turns)
    assert turns[0].feedback is None


def test_manifest_and_audio_are_cached_per_process(example):
    async def first_audio(seed):
        return (await ReplaySimulator(str(example), seed=seed).start(Scenario("s0-00001"))).audio

    a, b = asyncio.run(first_audio(0)), asyncio.run(first_audio(5))
    assert a is b and not a.flags.writeable  # decoded once, shared read-only
    assert load_manifest(example) is load_manifest(str(example))
    assert load_manifest(example, 22050) is not load_manifest(example)


def test_resampling_from_22050_scales_length_and_keeps_pitch(tmp_path):
    n = 22050 + 1234
    t = np.arange(n) / 22050
    write_wav(tmp_path / "a.wav", 0.5 * np.sin(2 * np.pi * 440 * t), 22050)
    write_wav(tmp_path / "b.wav", 0.3 * np.sin(2 * np.pi * 220 * t[:5000]), 22050)
    (tmp_path / "m.jsonl").write_text(json.dumps(
        {"dialogue_id": "r", "turns": [{"text": "hi", "audio": "a.wav"}, {"text": "bye", "audio": "b.wav"}]}) + "\n")
    turn = asyncio.run(ReplaySimulator(str(tmp_path / "m.jsonl"), sample_rate=SR).start(Scenario("r")))
    assert turn.sample_rate == SR and turn.audio.dtype == np.float32
    assert abs(len(turn.audio) - n * SR / 22050) <= 1
    spectrum = np.abs(np.fft.rfft(turn.audio))
    assert abs(np.argmax(spectrum) * SR / len(turn.audio) - 440) < 2
    assert abs(np.abs(turn.audio).max() - 0.5) < 0.01
    # At the file's own rate nothing is resampled.
    assert len(read_wav(tmp_path / "a.wav", 22050)) == n


def test_full_scale_samples_read_back_in_range_and_exactly(tmp_path):
    pcm = np.array([-32768, 32767, 12345, -1, 0], "<i2")
    with wave.open(str(tmp_path / "f.wav"), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(SR), w.writeframes(pcm.tobytes())
    audio = read_wav(tmp_path / "f.wav")
    assert np.abs(audio).max() <= 1.0  # the dialogue loop refuses anything above full scale
    assert AudioClip.from_float(audio, SR).pcm.tolist() == [-32767, 32767, 12345, -1, 0]


def test_a_22050_hz_example_set_replays_at_16000(chat, tmp_path):
    manifest = make_example(tmp_path / "ex22", n=1, seed=3, turns=2, sample_rate=22050)
    rec = _lines(manifest)[0]
    d, traj, _ = _run(chat, ReplaySimulator(str(manifest), sample_rate=SR), Scenario(rec["dialogue_id"]))
    assert d.end_reason == "user_ended"  # the loop refuses audio at another rate than the model's: none came
    for u, t in zip([t for t in traj.turns if t.role == "user"], rec["turns"]):
        frames = len(_wav_pcm(manifest.parent / t["audio"]))
        assert u.audio.sample_rate == SR and abs(len(u.audio.pcm) - math.ceil(frames * SR / 22050)) <= 1


def test_selection_by_scenario_id_and_a_deterministic_fallback(example):
    lines = {d["dialogue_id"]: d for d in _lines(example)}
    ids = list(lines)

    def opening(scenario_id, seed=0, loop=True):
        return asyncio.run(ReplaySimulator(str(example), seed=seed, loop=loop).start(Scenario(scenario_id))).text

    for did in ids:  # an id names its recording, whatever the seed
        assert opening(did) == opening(did, seed=9) == lines[did]["turns"][0]["text"]
    others = [f"unseen-{i}" for i in range(24)]
    picks = [opening(s) for s in others]
    assert picks == [opening(s) for s in others]  # the same every time (and in every process: sha256)
    assert picks == [lines[ids[stable_index(0, s, len(ids))]]["turns"][0]["text"] for s in others]
    assert len(set(picks)) > 1  # spread over the recordings
    assert [opening(s, seed=1) for s in others] != picks  # the seed changes the pick
    with pytest.raises(LookupError, match="no dialogue_id 'unseen-0'"):
        opening("unseen-0", loop=False)


def test_the_pick_is_stable_across_processes():
    code = "from simulator.replay import stable_index; print([stable_index(3, f'x{i}', 7) for i in range(8)])"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "123", "PATH": ""}).stdout
    assert out.strip() == str([stable_index(3, f"x{i}", 7) for i in range(8)])


def test_importing_the_module_does_not_import_torch():
    code = "import sys, simulator.replay; assert 'torch' not in sys.modules and 'torchaudio' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


GOOD = {"dialogue_id": "ok", "turns": [{"text": "hi", "audio": "a.wav"}, {"text": "bye", "audio": "a.wav"}]}


def _bad(d, **turn1):
    d = json.loads(json.dumps(d))
    d["turns"][1].update(turn1)
    return json.dumps(d)


@pytest.mark.parametrize("line2, field, why", [
    ('{"dialogue_id": "x", "turns": [', "record", "not JSON"),
    ('["x"]', "record", "expected a JSON object"),
    (json.dumps({"turns": GOOD["turns"]}), "dialogue_id", "missing"),
    (json.dumps({"dialogue_id": "x"}), "turns", "missing"),
    (json.dumps({"dialogue_id": "x", "turns": GOOD["turns"][:1]}), "turns", "at least 2"),
    (json.dumps({"dialogue_id": "x", "turns": [GOOD["turns"][0], {"audio": "a.wav"}]}), "turns[1].text", "missing"),
    (_bad({**GOOD, "dialogue_id": "x"}, audio="gone.wav"), "turns[1].audio", "file not found"),
    (_bad({**GOOD, "dialogue_id": "x"}, audio="stereo.wav"), "turns[1].audio", "PCM16 mono"),
    (_bad({**GOOD, "dialogue_id": "x"}, feedback=1.5), "turns[1].feedback", "[0, 1]"),
    (_bad({**GOOD, "dialogue_id": "x"}, emotions="sad"), "turns[1].emotions", "unknown field"),
    (json.dumps(GOOD), "dialogue_id", "repeats line 1"),
    (json.dumps({**GOOD, "dialogue_id": "x", "scenario": {"scenario_id": "y"}}), "scenario.scenario_id", "differs"),
])
def test_a_malformed_manifest_names_file_line_and_field(tmp_path, line2, field, why):
    write_wav(tmp_path / "a.wav", np.zeros(800), SR)
    with wave.open(str(tmp_path / "stereo.wav"), "wb") as w:
        w.setnchannels(2), w.setsampwidth(2), w.setframerate(SR), w.writeframes(b"\0" * 3200)
    m = tmp_path / "manifest.jsonl"
    m.write_text(json.dumps(GOOD) + "\n" + line2 + "\n")
    with pytest.raises(ManifestError) as e:
        parse_manifest(m)
    assert str(e.value).startswith(f"{m}:2: {field}: ") and why in str(e.value)


def test_a_malformed_manifest_ends_the_dialogue_with_its_message(chat, tmp_path):
    m = tmp_path / "manifest.jsonl"
    m.write_text(json.dumps({"dialogue_id": "x", "turns": [{"text": "hi", "audio": "nope.wav"}] * 2}) + "\n")
    d, traj, _ = _run(chat, ReplaySimulator(str(m)), Scenario("x"))
    assert traj is None
    assert d.end_reason.startswith(f"simulator_error:start:ManifestError: {m}:1: turns[0].audio: file not found")


def test_the_command_checks_a_manifest_and_writes_its_scenarios(example, tmp_path, capsys):
    main(["--check", str(example), "--scenarios-out", str(tmp_path / "s.jsonl")])
    assert "3 dialogues" in capsys.readouterr().out
    assert [s.scenario_id for s in read_jsonl(tmp_path / "s.jsonl")] == ["s0-00000", "s0-00001", "s0-00002"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{}\n")
    with pytest.raises(SystemExit, match=f"error: {bad}:1: dialogue_id: missing"):
        main(["--check", str(bad)])


def test_the_hydra_route_builds_the_simulator(chat, example):
    from antiphon.config import compose, to_dataclass
    from antiphon.dialogue import simulator_factory

    cfg = compose(["simulator=replay", f"+simulator.manifest={example}", "+simulator.loop=false"])
    import yaml

    assert "manifest" not in yaml.safe_load((REPO / "configs/simulator/replay.yaml").read_text())  # not a schema key
    assert cfg.simulator._target_ == "simulator.replay.ReplaySimulator"
    make_sim = simulator_factory(to_dataclass(cfg.simulator), cfg.model.sample_rate)
    sim = make_sim()
    assert isinstance(sim, ReplaySimulator) and make_sim() is not sim
    assert (sim.manifest_path, sim.sample_rate, sim.seed, sim.loop) == (str(example), cfg.model.sample_rate, 0, False)
    d, traj, _ = _run(chat, sim, Scenario("s0-00000", max_turns=cfg.simulator.max_turns))
    assert d.end_reason == "user_ended" and traj.num_agent_turns == 2
