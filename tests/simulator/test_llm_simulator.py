"""The LLM user simulator: the openai backend against a local HTTP server (unit tier), the vllm backend on a
real in-process engine running the tiny checkpoint, through the dialogue loop (slow tier)."""
from __future__ import annotations

import asyncio
import json
import socket
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from antiphon.dialogue import AgentTurn, Question, Scenario, UserTurn
from simulator.llm import LLMSimulator, LLMSimulatorError, parse_line
from support import ScriptedEngine

SR = 16000
KEY = "sk-test-4f9d2c-never-print-me"


class FakeChatServer:
    """An OpenAI-format chat endpoint on 127.0.0.1 answering from a script; records every request.

    A scripted answer is a string (the completion), ``("status", code, body)``, ``("raw", body)`` or
    ``("hold",)``: no answer until ``release`` is set (then a late completion; ``answered`` is set once sent).
    """

    def __init__(self, answers):
        self.answers, self.requests = list(answers), []
        self.release, self.answered = threading.Event(), threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.requests.append({"path": self.path, "headers": dict(self.headers),
                                       "body": json.loads(body)})
                answer = outer.answers.pop(0)
                if isinstance(answer, tuple) and answer[0] == "hold":
                    outer.release.wait(timeout=120)  # a guard against a hang, not a bound the test asserts
                    answer = "too late"
                if isinstance(answer, tuple) and answer[0] == "status":
                    code, payload = answer[1], answer[2].replace("{auth}", self.headers.get("Authorization", ""))
                elif isinstance(answer, tuple) and answer[0] == "raw":
                    code, payload = 200, answer[1]
                else:
                    code, payload = 200, json.dumps({
                        "id": "chatcmpl-1", "object": "chat.completion", "model": "fake",
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": answer}}]})
                data = payload.encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                finally:
                    outer.answered.set()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(autouse=True)
def _no_real_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # a real key must never reach the test servers


def _scenario(**kw):
    base = dict(scenario_id="s-llm", persona="Maya, a nurse coming off a night shift", goal="plan a calm evening",
                emotion_arc=["tired", "sad", "calm"], disclosures=["I have about two free hours.",
                                                                   "I would like something quiet."],
                max_turns=3, meta={"hidden_need": "she mostly wants someone to tell her it is fine to rest"})
    base.update(kw)
    return Scenario(**base)


def _agent(reply, reasoning="private chain of thought"):
    return AgentTurn(reasoning=reasoning, reply=reply, style="gentle", audio=None, sample_rate=SR, token_ids=[],
                     finish_reason="stop")


def _voiced(turn: UserTurn):
    assert isinstance(turn, UserTurn) and isinstance(turn.text, str) and turn.text
    assert turn.sample_rate == SR and turn.audio.dtype == np.float32 and turn.audio.ndim == 1
    assert turn.audio.size > SR // 10 and np.isfinite(turn.audio).all() and np.abs(turn.audio).max() <= 1.0


def test_openai_backend_dialogue(monkeypatch):
    monkeypatch.setenv("ANTIPHON_TEST_LLM_KEY", KEY)
    answers = ["User: Hi... I'm exhausted, I want to plan a calm evening.",
               "*sighs* Maybe something quiet at home. (satisfaction: 0.7)",
               "That sounds right, thank you so much. [END] (satisfaction: 0.9)"]
    with FakeChatServer(answers) as srv:
        sim = LLMSimulator(endpoint=srv.endpoint, model="user-llm", api_key_env="ANTIPHON_TEST_LLM_KEY",
                           max_tokens=40, temperature=0.5)

        async def talk():
            first = await sim.start(_scenario())
            second = await sim.react(_agent("Long shift? What would help you unwind tonight?"))
            third = await sim.react(_agent("A bath and an early night are perfectly fine."))
            return first, second, third

        first, second, third = asyncio.run(talk())
    for t in (first, second, third):
        _voiced(t)
    assert first.text == "Hi... I'm exhausted, I want to plan a calm evening."
    assert (first.emotion, first.feedback, first.done) == ("tired", None, False)
    assert second.text == "Maybe something quiet at home." and second.feedback == pytest.approx(0.7)
    assert second.emotion == "sad" and not second.done
    assert third.text == "That sounds right, thank you so much." and third.done
    assert third.feedback == pytest.approx(0.9) and third.emotion == "calm"

    assert [r["path"] for r in srv.requests] == ["/v1/chat/completions"] * 3
    for r in srv.requests:
        assert r["headers"]["Authorization"] == f"Bearer {KEY}"
        assert (r["body"]["model"], r["body"]["max_tokens"], r["body"]["temperature"]) == ("user-llm", 40, 0.5)
        assert "seed" not in r["body"]
    msgs = srv.requests[2]["body"]["messages"]
    system = msgs[0]["content"]
    assert msgs[0]["role"] == "system"
    for part in ("Maya, a nurse", "plan a calm evening", "tell her it is fine to rest", "[END]", "satisfaction"):
        assert part in system
    # The agent speaks as "user", the simulated user's own lines are "assistant"; reasoning is never shown.
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert msgs[2]["content"] == first.text and msgs[4]["content"] == second.text
    assert msgs[3]["content"] == "Long shift? What would help you unwind tonight?"
    assert not any("chain of thought" in m["content"] for r in srv.requests for m in r["body"]["messages"])
    # The emotion in the system prompt follows the arc turn by turn.
    assert [("right now: " + e) in r["body"]["messages"][0]["content"]
            for r, e in zip(srv.requests, ["tired", "sad", "calm"])] == [True] * 3


def test_marker_alone_says_goodbye_and_hidden_need_from_disclosures():
    with FakeChatServer(["Hello, I need help with my week.", "[END]"]) as srv:
        sim = LLMSimulator(endpoint=srv.endpoint, api_key_env="ANTIPHON_TEST_UNSET_KEY")

        async def talk():
            await sim.start(_scenario(meta={}))
            return await sim.react(_agent(""))

        last = asyncio.run(talk())
    _voiced(last)
    assert last.done and last.text and "[END]" not in last.text and last.feedback is None
    assert "Authorization" not in srv.requests[0]["headers"] and "model" not in srv.requests[0]["body"]
    system = srv.requests[0]["body"]["messages"][0]["content"]
    assert "(1) I have about two free hours. (2) I would like something quiet." in system
    assert srv.requests[1]["body"]["messages"][-1]["role"] == "user"  # the empty reply is shown as silence


def test_questions_are_asked_and_the_scenario_turns_end_the_dialogue():
    q = Question(turn=1, text="what is 2 plus 3?", answer="5")
    with FakeChatServer(["Hi there.", "Okay, go on.", "Alright."]) as srv:
        sim = LLMSimulator(endpoint=srv.endpoint)

        async def talk():
            a = await sim.start(_scenario(questions=[q], max_turns=2))
            b = await sim.react(_agent("Hello!"))
            c = await sim.react(_agent("Five."))
            return a, b, c

        a, b, c = asyncio.run(talk())
    assert a.question is None and b.question == q and b.text == "Okay, go on. Quick question, what is 2 plus 3?"
    assert not b.done and c.done and c.question is None  # the scenario's turns are used up
    assert "last turn" in srv.requests[2]["body"]["messages"][0]["content"]


def test_http_error_names_the_endpoint_and_hides_the_key(monkeypatch):
    monkeypatch.setenv("ANTIPHON_TEST_LLM_KEY", KEY)
    with FakeChatServer([("status", 500, '{"error": "boom, you sent {auth}"}'), ("raw", "<html>oops")]) as srv:
        sim = LLMSimulator(endpoint=srv.endpoint, api_key_env="ANTIPHON_TEST_LLM_KEY")
        with pytest.raises(LLMSimulatorError) as err:
            asyncio.run(sim.start(_scenario()))
        assert srv.requests[0]["headers"]["Authorization"] == f"Bearer {KEY}"  # the server did echo it
        text = "".join(traceback.format_exception(err.value))
        assert f"{srv.endpoint}/chat/completions" in str(err.value) and "HTTP 500" in str(err.value)
        assert "boom" in str(err.value) and KEY not in text and KEY not in repr(err.value)
        with pytest.raises(LLMSimulatorError, match="not JSON") as err:
            asyncio.run(LLMSimulator(endpoint=srv.endpoint, api_key_env="ANTIPHON_TEST_LLM_KEY")
                        .start(_scenario()))
        assert srv.endpoint in str(err.value)


def test_unreachable_and_slow_endpoints_fail_in_bounded_time():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    with pytest.raises(LLMSimulatorError, match="cannot reach") as err:
        asyncio.run(LLMSimulator(endpoint=dead).start(_scenario()))
    assert dead in str(err.value)
    with FakeChatServer([("hold",)]) as srv:
        with pytest.raises(LLMSimulatorError, match="0.5 s") as err:
            asyncio.run(LLMSimulator(endpoint=srv.endpoint, timeout_s=0.5).start(_scenario()))
        # The simulator gave up on its own timeout: the server had not answered (it answers only when released).
        assert srv.endpoint in str(err.value) and len(srv.requests) == 1 and not srv.answered.is_set()


def test_parse_line():
    p = parse_line('"Thanks, that is it! [end] (Satisfaction: 0.25)"')
    assert (p.text, p.done, p.feedback) == ("Thanks, that is it!", True, 0.25)
    assert parse_line("Fine. (satisfaction: 7)").feedback is None  # out of range: no score
    assert parse_line("Fine. <bye>", stop_marker="<bye>").done
    assert parse_line("<think>The user persona is tired...</think> Hi, long day.").text == "Hi, long day."
    assert parse_line("<think>cut off by max_tokens").text == ""
    long = parse_line("word " * 100, max_chars=50).text
    assert len(long) <= 50 and long.endswith("word")


@pytest.mark.parametrize("kw, param", [
    (dict(backend="vllm"), "model_path"),
    (dict(backend="vllm", model_path="/nonexistent/ckpt"), "model_path"),
    (dict(backend="anthropic"), "backend"),
    (dict(endpoint="127.0.0.1:8000"), "endpoint"),
    (dict(voice="robot"), "voice"),
    (dict(max_tokens=0), "max_tokens"),
    (dict(temperature=-1), "temperature"),
    (dict(timeout_s=0), "timeout_s"),
    (dict(stop_marker=" "), "stop_marker"),
    (dict(max_tokens="many"), "max_tokens"),
    (dict(max_tokens=4096), "max_model_len"),
])
def test_constructor_names_the_bad_parameter(kw, param):
    with pytest.raises(ValueError, match=rf"\b{param}="):
        LLMSimulator(**kw)


def test_config_group_makes_the_simulator():
    from antiphon.config import compose, to_dataclass
    from antiphon.dialogue import simulator_factory

    cfg = compose(["simulator=llm", "+simulator.backend=openai", "+simulator.endpoint=http://127.0.0.1:1/v1",
                   "+simulator.max_tokens=32", "simulator.seed=5"])
    sim = simulator_factory(to_dataclass(cfg.simulator), 16000)()
    assert isinstance(sim, LLMSimulator)
    assert (sim.backend, sim.endpoint, sim.max_tokens, sim.seed, sim.voice_name, sim.sample_rate) == (
        "openai", "http://127.0.0.1:1/v1", 32, 5, "espeak", 16000)


# -- the vllm backend: a real engine on the tiny checkpoint -----------------------------------------------------
class Recording(LLMSimulator):
    """Keeps every UserTurn it returns."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.turns = []

    async def start(self, scenario):
        self.turns.append(await super().start(scenario))
        return self.turns[-1]

    async def react(self, agent):
        self.turns.append(await super().react(agent))
        return self.turns[-1]


@pytest.fixture(scope="module")
def llm_engines():
    from simulator import llm

    yield llm
    llm.shutdown_engines()
    assert not llm._ENGINES


@pytest.mark.slow
def test_vllm_backend_in_a_dialogue(tiny_path, llm_engines):
    from transformers import AutoTokenizer

    from antiphon.dialogue_loop import Dialogue, DialogueSettings
    from antiphon.model.chat import ChatFormat

    chat = ChatFormat(AutoTokenizer.from_pretrained(tiny_path))
    engine = ScriptedEngine([chat.text("[gentle] I hear you.") + [chat.im_end],
                             chat.text("[calm] Rest is fine.") + [chat.im_end]])
    sim = Recording(backend="vllm", model_path=str(tiny_path), max_tokens=24, temperature=1.0, seed=3)
    # The first start() includes the engine start-up: the simulator timeout must cover it.
    settings = DialogueSettings(max_turns=2, think_budget=0, open_think=False, simulator_timeout_s=240.0)
    scenario = _scenario(max_turns=2)

    async def run():
        d = Dialogue(engine, sim, scenario, chat, None, settings)
        traj = await d.run()
        # A second dialogue on the same loop reuses the shared engine.
        sim2 = LLMSimulator(backend="vllm", model_path=str(tiny_path), max_tokens=8)
        again = await sim2.start(scenario)
        return d, traj, again

    d, traj, again = asyncio.run(run())
    assert d.end_reason == "user_ended", d.end_reason
    assert traj is not None and traj.num_agent_turns == 2
    assert len(sim.turns) == 3 and len(sim.raw_lines) == 3  # start + two reacts, each a line from the engine
    for t in sim.turns + [again]:
        _voiced(t)
    assert [t.done for t in sim.turns] == [False, False, True]  # the scenario's two turns are the cap
    assert [t.emotion for t in sim.turns] == ["tired", "sad", "calm"]
    assert all(isinstance(r, str) for r in sim.raw_lines) and any(r.strip() for r in sim.raw_lines)
    # The engine's text (cleaned) is what was spoken, unless the random model wrote nothing speakable.
    from simulator.llm import GOODBYE, REPEAT, parse_line

    for raw, turn in zip(sim.raw_lines, sim.turns):
        assert turn.text == (parse_line(raw).text or (GOODBYE if turn.done else REPEAT))
    # The policy saw the user's words and audio; the history the LLM saw kept the roles.
    assert [m["role"] for m in sim.history] == ["user", "assistant", "user", "assistant", "user", "assistant"]
    assert (sim.history[2]["content"], sim.history[4]["content"]) == ("I hear you.", "Rest is fine.")
    assert len(llm_engines._ENGINES) == 1
