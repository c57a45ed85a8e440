"""Built-in text verifiers, table-driven over small hand-built trajectories (adversarial replies included)."""
from __future__ import annotations

import asyncio
import math
from typing import Dict, List, Optional

import msgpack
import numpy as np
import pytest

from antiphon.protocol import Trajectory, TurnRecord, decode, encode
from reward_service.component import Score
from reward_service.verifiers import (NOT_APPLICABLE, AnswerCorrectness, DialogueSatisfaction, SimulatorFeedback,
                                      ThinkFormat, Verbosity)
from reward_service.verifiers.answers import check_answer, normalise

# -- trajectory builder --------------------------------------------------------------------------------
FILLER = 100  # an ordinary token: never a marker
TEXT_MARKERS = {"<think>": 1, "</think>": 2, "<|im_end|>": 3}  # for verifiers that read no tokens


def user(text: str = "hello", feedback: Optional[float] = None, open_think: bool = True, spoken: bool = True):
    """A user turn: prompt tokens ending in ``<think>`` when ``open_think``; ``spoken=False`` is the user's last
    word (a turn without tokens)."""
    return {"role": "user", "text": text, "feedback": feedback, "open_think": open_think, "spoken": spoken}


def agent(text: str = "It is fine.", reasoning: Optional[str] = "the user asks", layout: str = "R R R /T A A E"):
    """An agent turn. ``layout``: its tokens, as the loop lays them out. ``R``/``A`` a sampled reasoning/reply
    token, ``T``/``/T`` a sampled ``<think>``/``</think>``, ``E`` a sampled ``<|im_end|>``; a ``!`` suffix marks
    a forced (non-policy) token. The loop's trailing newline is added."""
    return {"role": "assistant", "text": text, "reasoning": reasoning, "layout": layout}


def build(*turns: Dict, questions=(), markers: Dict[str, int] = TEXT_MARKERS) -> Trajectory:
    code = {"R": FILLER, "A": FILLER + 1, "T": markers["<think>"], "/T": markers["</think>"],
            "E": markers["<|im_end|>"]}
    ids: List[int] = []
    mask: List[int] = []
    records = []
    for t in turns:
        start = len(ids)
        if t["role"] == "user":
            if t["spoken"]:
                body = [FILLER + 2] * 3 + ([markers["<think>"]] if t["open_think"] else [])
                ids += body
                mask += [0] * len(body)
            records.append(TurnRecord("user", start, len(ids), text=t["text"], feedback=t["feedback"]))
        else:
            for tok in t["layout"].split():
                ids.append(code[tok.rstrip("!")])
                mask.append(0 if tok.endswith("!") else 1)
            ids.append(FILLER + 3)  # the newline after <|im_end|>
            mask.append(0)
            records.append(TurnRecord("assistant", start, len(ids), text=t["text"], reasoning=t["reasoning"],
                                      weight_version=1, finish_reason="stop"))
    m = np.asarray(mask, np.uint8)
    scenario = {"scenario_id": "s", "questions": [{"turn": k, "text": "what is it?", "answer": a}
                                                  for k, a in questions]}
    logprobs, versions = np.where(m == 1, -0.5, 0.0).astype(np.float32), np.where(m == 1, 1, -1).astype(np.int32)
    return Trajectory("t", "run", scenario, np.asarray(ids, np.int32), m, logprobs, versions, records,
                      end_reason="user_ended")


def one(text="It is fine.", reasoning="the user asks", layout="R R R /T A A E", question=None, open_think=True,
        markers=TEXT_MARKERS) -> Trajectory:
    """A one-exchange dialogue; ``question`` is the reference answer to a question asked in the user turn."""
    return build(user(open_think=open_think), agent(text, reasoning, layout),
                 questions=[(0, question)] if question is not None else (), markers=markers)


@pytest.fixture(scope="module")
def markers(tiny_path) -> Dict[str, int]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_path))
    ids = dict(zip(TEXT_MARKERS, tok.convert_tokens_to_ids(list(TEXT_MARKERS))))
    assert not set(ids.values()) & set(range(FILLER, FILLER + 4))  # the builder's filler ids stay ordinary
    return ids


def test_builder_makes_valid_wire_trajectories():
    t = build(user(), agent(), user(feedback=0.5), agent(layout="R R R R /T! A E!"), user(feedback=1.0, spoken=False),
              questions=[(1, "7")])
    back = decode(encode(t))
    assert [x.role for x in back.turns] == ["user", "assistant", "user", "assistant", "user"]


# -- ThinkFormat ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, layout, text, reasoning, value, rules, close", [
    ({}, "R R R /T A A E", "It is fine.", "the user asks", 1.0, [], "sampled"),
    ({}, "/T A A E", "It is fine.", "", 0.5, ["empty_reasoning"], "sampled"),
    ({}, "R /T A A E", "It is fine.", "   ", 0.5, ["empty_reasoning"], "sampled"),
    # The loop ran out of thinking budget and forced </think> in: over budget, never well-formed.
    ({}, "R R R R /T! A A E", "It is fine.", "the user asks", 0.5, ["over_budget"], "forced"),
    ({"budget": 2}, "R R R /T A E", "It is fine.", "the user asks", 0.5, ["over_budget"], "sampled"),
    ({"budget": 3}, "R R R /T A E", "It is fine.", "the user asks", 1.0, [], "sampled"),
    # The turn ended inside the reasoning: no reply exists, charged once (unclosed), not twice.
    ({}, "R R R E", "", "the user asks", 0.0, ["unclosed"], "none"),
    ({}, "R R R R E!", "", "the user asks", 0.0, ["unclosed"], "none"),
    ({}, "R R /T E", "", "the user asks", 0.5, ["empty_reply"], "sampled"),
    ({}, "R R R R /T! E!", "", "the user asks", 0.0, ["over_budget", "empty_reply"], "forced"),
    ({}, "R /T A /T A E", "It </think> is fine.", "the user asks", 0.5, ["stray_marker"], "sampled"),
    ({}, "R T R /T A E", "It is fine.", "the user <think> asks", 0.5, ["stray_marker"], "sampled"),
    ({"over_budget_penalty": 0.2}, "R R R R /T! A A E", "It is fine.", "the user asks", 0.8, ["over_budget"],
     "forced"),
    ({"empty_reasoning_penalty": 0.7, "empty_reply_penalty": 0.7}, "/T E", "", "", 0.0,
     ["empty_reasoning", "empty_reply"], "sampled"),
])
def test_think_format_token_rules(tiny_path, markers, kw, layout, text, reasoning, value, rules, close):
    comp = ThinkFormat(tokenizer_path=str(tiny_path), **kw)
    (s,) = comp.score(one(text, reasoning, layout, markers=markers))
    assert s.value == pytest.approx(value)
    assert s.details["rules"] == rules and s.details["close"] == close and s.details["mode"] == "tokens"


@pytest.mark.parametrize("layout, reasoning, value, rules, opened", [
    # The prompt did not open <think>: the policy may open it itself as its first token.
    ("T R R /T A E", "the user asks", 1.0, [], "policy"),
    ("A A E", "", 0.5, ["empty_reasoning"], "none"),
    ("A /T A E", "", 0.0, ["empty_reasoning", "stray_marker"], "none"),
    ("R T R /T A E", "the user asks", 0.0, ["empty_reasoning", "stray_marker"], "none"),
])
def test_think_format_without_an_opened_think(tiny_path, markers, layout, reasoning, value, rules, opened):
    (s,) = ThinkFormat(tokenizer_path=str(tiny_path)).score(
        one("It is fine.", reasoning, layout, open_think=False, markers=markers))
    assert (s.value, s.details["rules"], s.details["opened"]) == (pytest.approx(value), rules, opened)


def test_think_format_scores_each_turn_and_counts_reasoning_tokens(tiny_path, markers):
    t = build(user(), agent(layout="R R /T A E"), user(feedback=0.5), agent(layout="R R R R /T! A E"),
              user(feedback=0.5), agent(text="", layout="R R R E"), markers=markers)
    scores = ThinkFormat(tokenizer_path=str(tiny_path)).score(t)
    assert [s.value for s in scores] == [1.0, 0.5, 0.0]
    assert [s.details["reasoning_tokens"] for s in scores] == [2, 4, 3]  # a sampled <|im_end|> is not reasoning


@pytest.mark.parametrize("text, reasoning, only_in_reasoning", [
    ("I am not sure.", "3 plus 4 is 7", True),
    ("It is 7.", "3 plus 4 is 7", False),
    ("It is 8.", "3 plus 4 is 8", False),
])
def test_think_format_reports_an_answer_left_in_the_reasoning(tiny_path, markers, text, reasoning,
                                                             only_in_reasoning):
    (s,) = ThinkFormat(tokenizer_path=str(tiny_path)).score(
        one(text, reasoning, question="7", markers=markers))
    assert s.value == 1.0  # format only: correctness is AnswerCorrectness' business
    assert s.details["answer_only_in_reasoning"] is only_in_reasoning


def test_think_format_no_question_no_answer_detail(tiny_path, markers):
    (s,) = ThinkFormat(tokenizer_path=str(tiny_path)).score(one(markers=markers))
    assert "answer_only_in_reasoning" not in s.details


@pytest.mark.parametrize("text, reasoning, value, rules", [
    ("It is fine.", "the user asks", 1.0, []),
    ("It is fine.", None, 0.5, ["empty_reasoning"]),
    ("", "the user asks", 0.5, ["empty_reply"]),
    (" ", " ", 0.0, ["empty_reasoning", "empty_reply"]),
])
def test_think_format_text_mode(text, reasoning, value, rules):
    (s,) = ThinkFormat().score(one(text, reasoning))
    assert (s.value, s.details["rules"], s.details["mode"]) == (value, rules, "text")


def test_think_format_text_mode_cannot_see_a_forced_close():
    (s,) = ThinkFormat().score(one(layout="R R R R /T! A A E"))
    assert s.value == 1.0


@pytest.mark.parametrize("kw, match", [
    ({"budget": 0, "tokenizer_path": "x"}, "budget=0"),
    ({"budget": "8", "tokenizer_path": "x"}, "budget='8'"),
    ({"budget": True, "tokenizer_path": "x"}, "budget=True"),
    ({"budget": 8}, "needs tokenizer_path"),
    ({"over_budget_penalty": -0.1}, "over_budget_penalty=-0.1"),
    ({"unclosed_penalty": 1.5}, "unclosed_penalty=1.5"),
    ({"empty_reply_penalty": "high"}, "empty_reply_penalty='high'"),
    ({"stray_marker_penalty": math.nan}, "stray_marker_penalty=nan"),
    ({"tokenizer_path": "/nonexistent/tokenizer"}, "tokenizer_path='/nonexistent/tokenizer'"),
])
def test_think_format_bad_arguments_are_named(kw, match):
    with pytest.raises(ValueError, match=match):
        ThinkFormat(**kw)


# -- AnswerCorrectness ---------------------------------------------------------------------------------
@pytest.mark.parametrize("reply, answer, value, verdict", [
    ("It is 7.", "7", 1.0, "correct"),
    ("It is seven.", "7", 1.0, "correct"),
    ("SEVEN!", "7", 1.0, "correct"),
    ("It is 12.", "twelve", 1.0, "correct"),
    ("It is 7.0", "7", 1.0, "correct"),
    ("It is 2.50 now", "2.5", 1.0, "correct"),
    ("About 1,000 people.", "1000", 1.0, "correct"),
    ("About 1000 people.", "1,000", 1.0, "correct"),
    ("Twenty-one, I think.", "21", 1.0, "correct"),
    ("It is 7, yes, 7.", "7", 1.0, "correct"),  # one distinct number, said twice
    ("Paris, of course.", "Paris", 1.0, "correct"),
    ("It is New York.", "new york", 1.0, "correct"),
    ("It is 17.", "7", 0.0, "missing"),
    ("It is 7.5.", "7", 0.0, "missing"),
    ("Twenty-one.", "20", 0.0, "missing"),  # a compound is one number, not a 20
    ("Seventeen.", "7", 0.0, "missing"),
    ("York is new.", "new york", 0.0, "missing"),
    ("", "7", 0.0, "missing"),
    ("It is 7 or 8.", "7", 0.0, "hedged"),
    ("Maybe seven, maybe eight.", "7", 0.0, "hedged"),
    ("Somewhere in 7-8.", "7", 0.0, "hedged"),
    ("6, 7, 8, one of those.", "7", 0.0, "hedged"),
    ("The one you want is 7.", "7", 0.0, "hedged"),  # strict by design: a numeric reply states one number
])
def test_answer_correctness(reply, answer, value, verdict):
    (s,) = AnswerCorrectness().score(one(reply, "I will work it out", question=answer))
    assert (s.value, s.details["verdict"], s.details["applicable"]) == (value, verdict, True)


@pytest.mark.parametrize("reply, reasoning, verdict", [
    ("Let me think about it.", "3 plus 4 is 7", "only_in_reasoning"),
    ("Hmm.", "so the answer is seven", "only_in_reasoning"),
    ("Hmm.", "3 plus 4 is 17", "missing"),
])
def test_an_answer_only_in_the_reasoning_scores_zero(reply, reasoning, verdict):
    (s,) = AnswerCorrectness().score(one(reply, reasoning, question="7"))
    assert (s.value, s.details["verdict"]) == (0.0, verdict)


def test_turns_without_a_question_are_not_applicable():
    t = build(user(), agent("It is 7."), user(feedback=1.0), agent("It is 9."), user(feedback=1.0),
              agent("No idea."), user(feedback=0.0, spoken=False), questions=[(0, "7"), (2, "5")])
    scores = AnswerCorrectness().score(t)
    assert [s.value for s in scores] == [1.0, NOT_APPLICABLE, 0.0]
    assert [s.details["applicable"] for s in scores] == [True, False, True]
    assert scores[2].details["question_turn"] == 2


def test_the_users_last_word_is_no_question_turn():
    # Question keys count user turns with tokens: the tokenless closing turn (index 2 here) is never answered.
    t = build(user(), agent("It is 7."), user(feedback=1.0), agent("It is 7."), user(feedback=1.0, spoken=False),
              questions=[(2, "7"), (9, "7")])
    assert [s.details["applicable"] for s in AnswerCorrectness().score(t)] == [False, False]


@pytest.mark.parametrize("questions, match", [
    ([{"turn": "0", "answer": "7"}], r"scenario.questions\[0\]"),
    ([{"turn": 0}], r"scenario.questions\[0\]"),
    ([{"turn": 0, "answer": "?!"}], "has no words or numbers"),
])
def test_malformed_scenario_questions_raise(questions, match):
    t = one("It is 7.")
    t.scenario["questions"] = questions
    with pytest.raises(ValueError, match=match):
        AnswerCorrectness().score(t)


@pytest.mark.parametrize("text, tokens", [
    ("It's 1,234.50!", ["it", "s", "1234.5"]),
    ("ninety-nine or twenty", ["99", "or", "20"]),
    ("zero, 007", ["0", "7"]),
    ("1,2345", ["1", "2345"]),
])
def test_normalise(text, tokens):
    assert normalise(text) == tokens


def test_check_answer_lists_the_reply_numbers():
    assert check_answer("seven or 8", "7") == ("hedged", ["7", "8"])


# -- Verbosity ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("words, value", [(0, 0.0), (4, 0.0), (5, 0.0), (6, -0.1), (7, -0.2), (8, -0.3), (50, -0.3)])
def test_verbosity_words(words, value):
    (s,) = Verbosity(target=5, slope=0.1, cap=0.3).score(one(" ".join(["word"] * words)))
    assert s.value == pytest.approx(value)
    assert (s.details["length"], s.details["over"]) == (words, max(0, words - 5))


def test_verbosity_in_tokens_counts_the_spoken_reply(tiny_path):
    from transformers import AutoTokenizer

    text = "it is seven because three plus four is seven"
    n = len(AutoTokenizer.from_pretrained(str(tiny_path)).encode(text, add_special_tokens=False))
    assert n > 3
    (s,) = Verbosity(target=3, unit="tokens", slope=0.01, cap=1.0, tokenizer_path=str(tiny_path)).score(one(text))
    assert s.details["length"] == n and s.value == pytest.approx(-0.01 * (n - 3))


@pytest.mark.parametrize("kw, match", [
    ({"unit": "chars"}, "unit='chars'"),
    ({"target": -1}, "target=-1"),
    ({"target": 2.5}, "target=2.5"),
    ({"slope": -0.1}, "slope=-0.1"),
    ({"cap": math.inf}, "cap=inf"),
    ({"unit": "tokens"}, "needs tokenizer_path"),
    ({"tokenizer_path": "/some/tok"}, "only with unit='tokens'"),
])
def test_verbosity_bad_arguments_are_named(kw, match):
    with pytest.raises(ValueError, match=match):
        Verbosity(**kw)


# -- SimulatorFeedback / DialogueSatisfaction ------------------------------------------------------------
FULL = (user(), agent(), user(feedback=0.75), agent(), user(feedback=0.25, spoken=False))  # closing word's feedback
CUT = (user(), agent(), user(feedback=0.75), agent())  # ended before the user reacted to the last turn
ZERO = (user(), agent(), user(feedback=0.0, spoken=False))  # 0.0 is feedback, not its absence
NONE = (user(), agent(), user(spoken=False))  # a simulator that gives no feedback


@pytest.mark.parametrize("turns, values, applicable, mean, last", [
    (FULL, [0.75, 0.25], [True, True], 0.5, 0.25),
    (CUT, [0.75, NOT_APPLICABLE], [True, False], 0.75, 0.75),
    (ZERO, [0.0], [True], 0.0, 0.0),
    (NONE, [NOT_APPLICABLE], [False], None, None),
])
def test_feedback(turns, values, applicable, mean, last):
    t = build(*turns)
    scores = SimulatorFeedback().score(t)
    assert [s.value for s in scores] == values and [s.details["applicable"] for s in scores] == applicable
    for mode, want in (("mean", mean), ("last", last)):
        s = DialogueSatisfaction(mode=mode).score(t)
        assert isinstance(s, Score)
        if want is None:
            assert (s.value, s.details["applicable"]) == (NOT_APPLICABLE, False)
        else:
            assert (s.value, s.details["applicable"]) == (pytest.approx(want), True)


def test_dialogue_satisfaction_bad_mode_is_named():
    with pytest.raises(ValueError, match="mode='median'"):
        DialogueSatisfaction(mode="median")


# -- the component contract ------------------------------------------------------------------------------
def test_every_verifier_keeps_the_contract_and_plain_details(tiny_path, markers):
    trajs = [build(*FULL, questions=[(0, "7")], markers=markers),
             build(user(), agent("It is 7 or 8.", layout="R R R R /T! A E!"), markers=markers)]
    comps = [ThinkFormat(tokenizer_path=str(tiny_path), budget=8), AnswerCorrectness(), Verbosity(),
             SimulatorFeedback(), DialogueSatisfaction(name="satisfaction")]
    assert comps[-1].name == "satisfaction" and comps[0].name == "ThinkFormat"
    for comp in comps:
        results = asyncio.run(comp.score_batch(trajs))
        for traj, res in zip(trajs, results):
            scores = res if comp.scope == "turn" else [res]
            assert comp.scope != "turn" or len(scores) == traj.num_agent_turns
            for s in scores:
                assert isinstance(s, Score) and math.isfinite(s.value)
                msgpack.packb(s.details)  # details travel on the wire (scored trajectories)


def test_the_default_reward_set_builds_without_torch_or_transformers(tiny_path):
    """The reward service reads the policy's tokenizer from its ``tokenizer.json``: a replica of the default
    reward set starts without importing torch or transformers (~11 s of CPU each, measured)."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from antiphon.config import compose, to_dataclass\n"
            "from antiphon.config.schema import RewardConfig\n"
            "from reward_service.compose import build_specs\n"
            f"cfg = compose(['model.path={tiny_path}'])\n"
            "specs = build_specs(to_dataclass(cfg.reward, RewardConfig).components)\n"
            "assert specs[0].component.marker_ids is not None\n"
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules), len(specs))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.split() == ["[]", "6"], res.stdout


def test_file_tokenizer_agrees_with_transformers(tiny_path):
    from transformers import AutoTokenizer

    from reward_service.verifiers.common import FileTokenizer, load_tokenizer

    hf = AutoTokenizer.from_pretrained(str(tiny_path))
    ours = load_tokenizer(str(tiny_path), "test")
    assert isinstance(ours, FileTokenizer)
    tokens = ["<think>", "</think>", "<|im_end|>", "<|AUDIO|>", "no-such-token-here"]
    assert ours.convert_tokens_to_ids(tokens)[:4] == hf.convert_tokens_to_ids(tokens)[:4]
    assert ours.convert_tokens_to_ids(tokens)[4] is None
    for text in ["it is seven, because 3 + 4 = 7!", "  spaced   out\ttext\n", "<think>why</think> fine<|im_end|>"]:
        assert ours.encode(text, add_special_tokens=False) == hf.encode(text, add_special_tokens=False)
