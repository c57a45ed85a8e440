"""The dialogue loop with a scripted engine and simulators (unit tier): token-in/token-out, masks, faults."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from antiphon.dialogue_loop import Dialogue, DialogueSettings
from antiphon.dialogue import AgentTurn, Scenario, UserSimulator, UserTurn
from antiphon.model.chat import ChatFormat
from antiphon.protocol import decode, encode
from support import ScriptedEngine

SR = 16000


class TalkativeUser(UserSimulator):
    def __init__(self, turns=3, faults=None):
        self.k, self.turns, self.faults = 0, turns, faults or {}
        self.heard = []

    def _turn(self, done=False):
        audio = 0.1 * np.sin(np.linspace(0, 300, SR)).astype(np.float32)
        bad = self.faults.get(self.k)
        if bad == "nan":
            audio[3] = np.nan
        elif bad == "empty":
            audio = np.zeros(0, np.float32)
        elif bad == "rate":
            return UserTurn("hi", audio, 8000)
        elif bad == "long":
            audio = np.zeros(31 * SR, np.float32)
        elif bad == "raise":
            raise RuntimeError("simulator broke")
        self.k += 1
        return UserTurn(f"turn {self.k}", audio, SR, emotion="sad", feedback=0.5 if self.k > 1 else None, done=done)

    async def start(self, scenario):
        return self._turn()

    async def react(self, agent: AgentTurn):
        self.heard.append(agent)
        if self.faults.get(self.k) == "hang":
            await asyncio.sleep(10)
        return self._turn(done=self.k >= self.turns)


@pytest.fixture(scope="module")
def chat(tiny_path):
    from transformers import AutoTokenizer

    return ChatFormat(AutoTokenizer.from_pretrained(tiny_path))


def _settings(**kw):
    return DialogueSettings(**{"max_turns": 3, "think_budget": 0, "open_think": False, "simulator_timeout_s": 1.0,
                               **kw})


def _noncanonical_reply(chat):
    """Token ids for ' hello' spelled out one byte-token at a time: decoding and re-encoding changes them."""
    ids = [chat.tokenizer.convert_tokens_to_ids(c) for c in ["Ġ", "h", "e", "l", "l", "o"]]
    assert chat.tokenizer.encode(chat.tokenizer.decode(ids), add_special_tokens=False) != ids
    return ids + [chat.im_end]


def test_earlier_turns_are_never_retokenised(chat):
    weird = _noncanonical_reply(chat)
    engine = ScriptedEngine([weird, chat.text("[gentle] ok") + [chat.im_end], chat.text("bye") + [chat.im_end]])
    d = Dialogue(engine, TalkativeUser(), Scenario("s"), chat, None, _settings())
    traj = asyncio.run(d.run())
    assert traj is not None and traj.num_agent_turns == 3 and traj.end_reason == "user_ended"
    # The second request's context holds the first reply's ids exactly as generated.
    second = engine.requests[1].prompt_ids
    first_agent = traj.turns[1]
    assert list(traj.token_ids[first_agent.start:first_agent.end - 1]) == weird  # minus the "\n" glue
    assert second[first_agent.start:first_agent.start + len(weird)] == weird
    # Every request extends the previous one: token-in/token-out.
    for a, b in zip(engine.requests, engine.requests[1:]):
        assert b.prompt_ids[:len(a.prompt_ids)] == a.prompt_ids
    assert [len(r.audio) for r in engine.requests] == [1, 2, 3]


def test_only_sampled_tokens_are_policy_tokens(chat):
    engine = ScriptedEngine([chat.text("[gentle] ok") + [chat.im_end]] * 3)
    traj = decode(encode(asyncio.run(Dialogue(engine, TalkativeUser(), Scenario("s"), chat, None, _settings()).run())))
    for t in traj.turns:
        span = traj.policy_mask[t.start:t.end]
        if t.role == "user":
            assert not span.any()
        else:  # generated ids then the "\n" glue
            assert span[:-1].all() and span[-1] == 0
            assert t.weight_version == 7 and t.emotion == "gentle" and t.text == "ok"
    assert (traj.versions[traj.policy_mask == 1] == 7).all()
    assert np.allclose(traj.logprobs[traj.policy_mask == 1], -0.5)
    # The user's closing turn is kept (feedback for the last agent turn) without tokens.
    last = traj.turns[-1]
    assert last.role == "user" and last.start == last.end == len(traj.token_ids) and last.feedback == 0.5


def test_thinking_budget_forces_end_of_reasoning(chat):
    think = [chat.tokenizer.convert_tokens_to_ids("a")] * 4  # hits the budget of 4 without </think>
    engine = ScriptedEngine([think, chat.text("fine") + [chat.im_end]])
    s = _settings(max_turns=1, think_budget=4, open_think=True)
    traj = asyncio.run(Dialogue(engine, TalkativeUser(turns=1), Scenario("s"), chat, None, s).run())
    agent = traj.turns[1]
    ids = list(traj.token_ids[agent.start:agent.end])
    end_think = chat.tokenizer.convert_tokens_to_ids("</think>")
    k = ids.index(end_think)
    assert traj.policy_mask[agent.start + k] == 0  # forced, not sampled
    assert agent.reasoning == "aaaa" and agent.text == "fine"
    assert engine.requests[0].max_new_tokens == 4 and end_think in engine.requests[0].stop_token_ids


@pytest.mark.parametrize("fault, reason", [
    ({0: "nan"}, "bad_audio:nan_or_inf"),
    ({0: "empty"}, "bad_audio:empty"),
    ({0: "rate"}, "bad_audio:sample_rate_8000_expected_16000"),
    ({1: "long"}, "bad_audio:too_long_31.0s"),
    ({0: "raise"}, "simulator_error:start:RuntimeError: simulator broke"),
    ({1: "hang"}, "simulator_timeout:react[0]"),
    ({2: "nan"}, "bad_audio:nan_or_inf"),
])
def test_simulator_faults_end_the_dialogue_with_a_reason(chat, fault, reason):
    engine = ScriptedEngine([chat.text("ok") + [chat.im_end]] * 3)
    d = Dialogue(engine, TalkativeUser(faults=fault), Scenario("s"), chat, None, _settings())
    traj = asyncio.run(d.run())
    assert d.end_reason == reason
    if traj is not None:  # what was finished before the fault is kept, and consistent
        decode(encode(traj))
        assert traj.turns[-1].role in ("assistant", "user")


def test_context_cap_ends_the_dialogue(chat):
    engine = ScriptedEngine([chat.text("ok") + [chat.im_end]] * 3)
    d = Dialogue(engine, TalkativeUser(), Scenario("s"), chat, None, _settings(max_context_tokens=60),
                 tokens_per_clip=lambda n: 25)
    traj = asyncio.run(d.run())
    assert d.end_reason == "context_cap"
    assert traj is None or len(traj.token_ids) <= 60


def test_a_failing_agent_voice_ends_the_dialogue_keeping_the_turn(chat):
    from antiphon.dialogue import Voice

    class BrokenVoice(Voice):
        def synthesize(self, text, emotion=None, prosody=None):
            raise RuntimeError("no voice today")

    engine = ScriptedEngine([chat.text("ok") + [chat.im_end]] * 3)
    d = Dialogue(engine, TalkativeUser(), Scenario("s"), chat, BrokenVoice(), _settings())
    traj = asyncio.run(d.run())
    assert d.end_reason == "agent_voice_error:RuntimeError: no voice today"
    assert traj.num_agent_turns == 1 and traj.turns[-1].audio is None
