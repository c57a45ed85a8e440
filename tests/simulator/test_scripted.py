"""The scripted user and its scenario sets: deterministic data, voiced emotion arcs, verifiable questions,
feedback on emotional match and correctness, a natural end."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from antiphon.dialogue import AgentTurn, Scenario
from simulator.scenarios import generate_scenarios, read_jsonl, write_jsonl
from simulator.scripted import ScriptedSimulator, answer_correct, emotion_match


def _agent(reply="", style=None):
    return AgentTurn(reasoning="", reply=reply, style=style, audio=None, sample_rate=16000, token_ids=[],
                     finish_reason="stop")


def test_scenario_sets_are_deterministic_files(tmp_path):
    a, b, c = generate_scenarios(50, seed=3), generate_scenarios(50, seed=3), generate_scenarios(50, seed=4)
    assert [s.to_dict() for s in a] == [s.to_dict() for s in b] != [s.to_dict() for s in c]
    back = read_jsonl(write_jsonl(a, tmp_path / "s.jsonl"))
    assert [s.to_dict() for s in back] == [s.to_dict() for s in a]
    assert any(s.questions for s in a) and all(len(s.emotion_arc) == s.max_turns == 3 for s in a)
    for s in a:
        for q in s.questions:
            x, op, y = q.text.split()[2:5]
            assert int(q.answer) == (int(x) + int(y.rstrip("?")) if op == "plus" else int(x) - int(y.rstrip("?")))


def test_bad_scenario_file_names_the_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"scenario_id": "a"}\n{"persona": "no id"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        read_jsonl(p)


@pytest.mark.parametrize("user, style, score", [
    ("sad", "gentle", 1.0), ("sad", "excited", 0.0), ("happy", "excited", 1.0), ("angry", "happy", 0.0),
    ("anxious", None, 0.5),
])
def test_emotion_match(user, style, score):
    assert emotion_match(user, style) == score


@pytest.mark.parametrize("reply, answer, ok", [
    ("it is 7.", "7", True), ("Seven!", "7", True), ("17", "7", False), ("the answer is 10", "10", True),
    ("", "3", False),
])
def test_answer_correct(reply, answer, ok):
    assert answer_correct(reply, answer) is ok


def _f0(audio, sr=16000):
    """Median autocorrelation pitch over voiced frames (espeak's voice: clear harmonics)."""
    f0s = []
    for i in range(0, len(audio) - 1024, 512):
        x = audio[i:i + 1024] - audio[i:i + 1024].mean()
        if np.sqrt((x ** 2).mean()) < 0.02:
            continue
        ac = np.correlate(x, x, "full")[1023:]
        lo, hi = sr // 400, sr // 60
        f0s.append(sr / (lo + np.argmax(ac[lo:hi])))
    return float(np.median(f0s))


def test_a_dialogue_follows_the_arc_asks_and_scores_and_ends():
    from antiphon.dialogue import Question

    sc = Scenario("x", persona="Tom", goal="get ready for a test", emotion_arc=["sad", "excited", "calm"],
                  questions=[Question(1, "what is 2 plus 3?", "5")], disclosures=["a", "b", "c"], max_turns=3)

    async def run():
        sim = ScriptedSimulator(voice="espeak")
        first = await sim.start(sc)
        second = await sim.react(_agent("[gentle] I hear you", "gentle"))
        third = await sim.react(_agent("it is 9", "excited"))  # right style, wrong answer
        last = await sim.react(_agent("", None))
        return first, second, third, last

    first, second, third, last = asyncio.run(run())
    assert first.emotion == "sad" and "get ready for a test" in first.text and first.feedback is None
    assert second.emotion == "excited" and second.question.answer == "5" and "2 plus 3" in second.text
    assert second.feedback == 1.0  # gentle meets sad
    assert third.feedback == 0.5  # style right (1) and answer wrong (0)
    assert last.done and last.feedback == 0.5
    assert all(t.audio.dtype == np.float32 and t.sample_rate == 16000 and len(t.audio) > 0.1 * 16000 * len(t.text.split())  # >= 0.1 s a word
               for t in (first, second, third, last))
    assert _f0(second.audio) > _f0(first.audio) * 1.2  # excited is voiced higher than sad


def test_two_empty_replies_end_the_dialogue_early():
    sc = Scenario("x", emotion_arc=["neutral"] * 5, max_turns=5)

    async def run():
        sim = ScriptedSimulator()
        await sim.start(sc)
        a = await sim.react(_agent(""))
        b = await sim.react(_agent("  "))
        return a, b

    a, b = asyncio.run(run())
    assert not a.done and b.done and "Never mind" in b.text
