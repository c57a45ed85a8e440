"""The LLM user: a language model plays the user (persona, goal, hidden need, emotion arc); TTS voices it.

    simulator=llm +simulator.backend=openai +simulator.endpoint=http://127.0.0.1:8000/v1 +simulator.model=NAME
    simulator=llm +simulator.backend=vllm +simulator.model_path=/path/to/hf-checkpoint

Backends:

- ``openai``: any OpenAI-compatible chat endpoint (``POST {endpoint}/chat/completions``: vLLM's server,
  llama.cpp, Ollama, a hosted API). The API key is read from the environment variable named by
  ``api_key_env`` (optional for local servers) and is never logged or put in an error message.
- ``vllm``: a local in-process vLLM ``AsyncLLM`` on ``model_path`` (an HF checkpoint with a chat template;
  a Qwen2-Audio checkpoint is run text-only). One engine per process and model path, shared by every
  dialogue (their requests batch together), created on first use -- so the first ``start`` includes the
  engine start-up (~10-25 s on CPU): keep ``rollout.dialogue.simulator_timeout_s`` above that. The engine
  settings (seed, max_model_len, ...) are those of the first simulator that asked for it. On CPU it runs
  with the settings of docs/cpu-stack.md (fp32, eager, no thread pinning, 1 GiB KV cache) and the
  engine-level seed only: a per-request seed kills the vLLM CPU engine. ``shutdown_engines()`` ends them.

The LLM sees the agent's spoken replies (never its reasoning) as the other speaker ("user" role from the
LLM's point of view) and its own earlier lines as "assistant". It ends the dialogue by writing the stop
marker (``[END]``), and may rate the agent's last reply as ``(satisfaction: 0.7)`` -- parsed into
``UserTurn.feedback``, removed from the spoken text. The scenario's verifiable question for a turn, if any,
is appended to that turn's line (as the scripted user does), so answer-checking rewards keep working.
"""
from __future__ import annotations

import asyncio
import atexit
import ipaddress
import json
import os
import re
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from antiphon.dialogue import AgentTurn, Question, Scenario, UserSimulator, UserTurn
from antiphon.vllm_engine import EngineSpec, start_engine

BACKENDS = ("openai", "vllm")
KICKOFF = "(The call connects. You speak first: greet the assistant and say what you want.)"
SILENCE = "(The assistant said nothing.)"
GOODBYE = "Okay, thank you. Bye."
REPEAT = "Sorry, could you say that again?"
_RATING = re.compile(r"[\(\[]\s*satisfaction\s*[:=]\s*([0-9]*\.?[0-9]+)\s*[\)\]]", re.I)
_ACTIONS = re.compile(r"\*[^*]{0,80}\*")  # *sighs*: stage directions are not spoken
_LABEL = re.compile(r"^\s*(?:user|me|caller)\s*:\s*", re.I)
_THINK = re.compile(r"<think>.*?(?:</think>|$)", re.S | re.I)  # a reasoning model's thoughts are not spoken


class LLMSimulatorError(RuntimeError):
    """The user LLM could not produce a line (the message names the endpoint or model path)."""


@dataclass
class ParsedLine:
    text: str  # what is spoken: marker, rating, stage directions removed
    done: bool  # the stop marker was written
    feedback: Optional[float]  # the rating in [0, 1], if one was given


def parse_line(raw: str, stop_marker: str = "[END]", max_chars: int = 200) -> ParsedLine:
    """Splits an LLM line into spoken text, the end-of-dialogue marker and the optional rating."""
    text = _THINK.sub(" ", raw or "")
    feedback = None
    for m in _RATING.finditer(text):
        value = float(m.group(1))
        feedback = value if 0.0 <= value <= 1.0 else None  # out of range: no score rather than a guess
    text = _RATING.sub(" ", text)
    marker = re.compile(re.escape(stop_marker), re.I)
    done = bool(marker.search(text))
    text = marker.sub(" ", text)
    text = _ACTIONS.sub(" ", text)
    text = _LABEL.sub("", text)
    text = " ".join(text.split()).strip(" \"'")
    if len(text) > max_chars:  # 1-2 short sentences were asked for; a rambling model is cut at a word
        cut = text[:max_chars]
        text = (cut.rsplit(" ", 1)[0] if " " in cut else cut).rstrip(" ,;:-")
    return ParsedLine(text=text, done=done, feedback=feedback)


def hidden_need(scenario: Scenario) -> str:
    need = scenario.meta.get("hidden_need") if isinstance(scenario.meta, dict) else None
    if need:
        return str(need)
    if scenario.disclosures:
        return "things you tell only one at a time, in this order: " + " ".join(
            f"({i}) {d}" for i, d in enumerate(scenario.disclosures, 1))
    return ""


def system_prompt(scenario: Scenario, emotion: str, stop_marker: str, last_turn: bool = False) -> str:
    lines = ["You are role-playing the USER in a spoken conversation with a voice assistant. The other "
             "speaker is the assistant. Speak only as the user; never act as the assistant and never say "
             "you are an AI."]
    if scenario.persona:
        lines.append(f"Who you are: {scenario.persona}.")
    if scenario.goal:
        lines.append(f"What you want: {scenario.goal}.")
    need = hidden_need(scenario)
    if need:
        lines.append(f"Your hidden need -- do not say it all at once, reveal it gradually when the assistant "
                     f"asks or earns it: {need}")
    lines.append(f"How you feel right now: {emotion}. Let it show in your words.")
    lines.append("Speak in 1-2 short spoken sentences: plain words, no lists, no emoji, no stage directions. "
                 "Write only what you say out loud.")
    lines.append(f"When your need is met, or you want to leave, say a short goodbye and write {stop_marker} "
                 "at the end.")
    lines.append("You may rate how well the assistant's last reply met your need and your feelings by adding "
                 "(satisfaction: X) at the end, with X between 0 and 1.")
    if last_turn:
        lines.append(f"This is your last turn: say a short goodbye now and end with {stop_marker}.")
    return "\n".join(lines)


# -- the openai backend ----------------------------------------------------------------------------------
def _is_local(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _redact(text: str, secret: Optional[str]) -> str:
    return text.replace(secret, "***") if secret else text


def openai_chat(endpoint: str, payload: Dict[str, Any], api_key: Optional[str], timeout_s: float) -> str:
    """One blocking chat completion; LLMSimulatorError naming the URL on any failure (key redacted)."""
    url = endpoint.rstrip("/") + "/chat/completions"
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), headers=headers, method="POST")
    # A local server is reached directly, whatever proxy the environment sets.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({})) if _is_local(url) else \
        urllib.request.build_opener()

    def fail(msg: str) -> LLMSimulatorError:
        return LLMSimulatorError(_redact(f"LLM simulator: POST {url}: {msg}", api_key))

    try:
        with opener.open(req, timeout=timeout_s) as resp:
            body = resp.read()
    except urllib.error.HTTPError as e:
        try:
            detail = e.read(500).decode("utf-8", "replace")
        except Exception:
            detail = ""
        raise fail(f"HTTP {e.code} {e.reason}: {' '.join(detail.split())[:300]}") from None
    except urllib.error.URLError as e:
        raise fail(f"cannot reach the endpoint ({e.reason})") from None
    except TimeoutError:
        raise fail(f"no answer within {timeout_s:g} s") from None
    except OSError as e:
        raise fail(f"{type(e).__name__}: {e}") from None
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise fail(f"not JSON: {body[:200]!r}") from None
    try:
        content = data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise fail(f"no choices[0].message.content in the answer: {json.dumps(data)[:300]}") from None
    if isinstance(content, list):  # content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


# -- the vllm backend: one shared engine per process and model path ----------------------------------------
class EngineHandle:
    """A shared engine and its tokenizer. ``engine`` is None once shut down.

    Callers go through the handle and never keep the engine in a local variable: vLLM's first imports keep
    their callers' frames alive, and a frame holding the engine would keep it past ``shutdown_engines()``.
    """

    def __init__(self, model_path: str):
        self.model_path = model_path
        self.engine = None
        self.tokenizer = None

    def shutdown(self) -> None:
        if self.engine is not None:
            self.engine.shutdown()
            self.engine = None


@dataclass
class _Entry:
    loop: asyncio.AbstractEventLoop  # AsyncLLM's output handler and sockets live on one event loop
    handle: EngineHandle
    task: "asyncio.Future"  # fills the handle; shared by every caller, survives a caller's cancellation


_ENGINES: Dict[str, _Entry] = {}
_ENGINES_LOCK = threading.Lock()
_ATEXIT = False


def _on_cpu(device: str) -> bool:
    if device != "auto":
        return device == "cpu"
    import torch

    return not torch.cuda.is_available()


def _build_engine(handle: EngineHandle, seed: int, max_model_len: int, device: str,
                  gpu_memory_utilization: float) -> None:
    """Blocking (run in a worker thread): starts the AsyncLLM with vLLM's env set only while it starts."""
    model_path = handle.model_path
    on_cpu = _on_cpu(device)
    config = json.loads((Path(model_path) / "config.json").read_text())
    multimodal = any(k in config for k in ("audio_config", "vision_config"))
    spec = EngineSpec(
        model_path=model_path, device="cpu" if on_cpu else "cuda", dtype="float32" if on_cpu else "auto",
        max_model_len=max_model_len, seed=seed, max_num_seqs=32, enforce_eager=on_cpu,
        gpu_memory_utilization=gpu_memory_utilization, kv_cache_gib=1,
        log_level=os.environ.get("VLLM_LOGGING_LEVEL", "ERROR"),
        extra_args={"language_model_only": multimodal})  # the user LLM reads and writes text only
    # This process may host other work (a rollout worker's own engine): its environment is restored after.
    handle.engine = start_engine(spec, keep_env=False)
    try:
        from transformers import AutoTokenizer

        handle.tokenizer = AutoTokenizer.from_pretrained(model_path)
        if not getattr(handle.tokenizer, "chat_template", None):
            raise ValueError(f"model_path={model_path!r}: the tokenizer has no chat template")
    except BaseException:
        handle.shutdown()
        raise


async def shared_engine(model_path: str, seed: int = 0, max_model_len: int = 2048, device: str = "auto",
                        gpu_memory_utilization: float = 0.2) -> EngineHandle:
    """The engine for ``model_path``: created once per process, on first use, off the event loop.

    The first caller's settings are used. An engine belongs to the event loop that created it; when that
    loop has closed (a later ``asyncio.run``), the engine is replaced by one on the running loop.
    """
    global _ATEXIT
    loop = asyncio.get_running_loop()
    stale = None
    with _ENGINES_LOCK:
        entry = _ENGINES.get(model_path)
        if entry is not None and entry.loop is not loop:
            if not entry.loop.is_closed():
                raise LLMSimulatorError(f"LLM simulator: the vLLM engine for model_path={model_path!r} belongs "
                                        "to another running event loop")
            stale, entry = _ENGINES.pop(model_path), None
        if entry is None:
            handle = EngineHandle(model_path)
            task = loop.create_task(asyncio.to_thread(_build_engine, handle, int(seed), int(max_model_len),
                                                      device, float(gpu_memory_utilization)))
            entry = _ENGINES[model_path] = _Entry(loop, handle, task)
            if not _ATEXIT:
                atexit.register(shutdown_engines)
                _ATEXIT = True
    if stale is not None:
        stale.handle.shutdown()
    try:
        await asyncio.shield(entry.task)
    except asyncio.CancelledError:
        raise
    except Exception as e:
        with _ENGINES_LOCK:  # a failed start is not cached: a later dialogue tries again
            if _ENGINES.get(model_path) is entry:
                del _ENGINES[model_path]
        raise LLMSimulatorError(f"LLM simulator: cannot start vLLM on model_path={model_path!r}: "
                                f"{type(e).__name__}: {e}"[:500]) from e
    if entry.handle.engine is None:
        raise LLMSimulatorError(f"LLM simulator: the vLLM engine for model_path={model_path!r} was shut down")
    return entry.handle


def shutdown_engines() -> None:
    """Shuts down every shared vLLM engine of this process (call before exit; idempotent).

    An engine still starting is shut down as soon as its start finishes.
    """
    with _ENGINES_LOCK:
        entries = list(_ENGINES.values())
        _ENGINES.clear()
    for entry in entries:
        if entry.task.done():
            try:
                entry.handle.shutdown()
            except Exception:
                pass
        elif not entry.loop.is_closed():
            entry.loop.call_soon_threadsafe(entry.task.add_done_callback, lambda _t, h=entry.handle: h.shutdown())


def _sampling_params(max_tokens: int, temperature: float):
    from vllm import SamplingParams

    # No per-request seed: it kills vLLM's CPU engine (docs/cpu-stack.md); the engine seed applies.
    return SamplingParams(max_tokens=max_tokens, temperature=temperature, skip_special_tokens=True)


async def vllm_chat(model_path: str, messages: List[Dict[str, str]], max_tokens: int, temperature: float,
                    seed: int, max_model_len: int, device: str, gpu_memory_utilization: float) -> str:
    h = await shared_engine(model_path, seed, max_model_len, device, gpu_memory_utilization)
    room = max_model_len - max_tokens
    msgs = list(messages)
    while True:
        # enable_thinking=False: templates with a thinking switch (Qwen3) answer directly; others ignore it.
        text = h.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True,
                                               enable_thinking=False)
        ids = h.tokenizer.encode(text, add_special_tokens=False)  # the template writes any BOS itself
        if len(ids) <= room:
            break
        # Too long: forget the oldest exchange after the system prompt and the opening cue.
        if len(msgs) <= 4:
            raise LLMSimulatorError(f"LLM simulator: the prompt ({len(ids)} tokens) does not fit "
                                    f"max_model_len={max_model_len} with max_tokens={max_tokens} "
                                    f"(model_path={model_path!r})")
        del msgs[2:4]
    params = _sampling_params(max_tokens, temperature)
    final = None
    try:
        if h.engine is None:
            raise RuntimeError("the engine was shut down")
        async for out in h.engine.generate({"prompt_token_ids": ids}, params,
                                           request_id=f"llm-user-{uuid.uuid4().hex}"):
            final = out
    except asyncio.CancelledError:
        raise
    except Exception as e:
        raise LLMSimulatorError(f"LLM simulator: vLLM generation failed (model_path={model_path!r}): "
                                f"{type(e).__name__}: {e}"[:500]) from e
    return final.outputs[0].text if final is not None and final.outputs else ""


# -- the simulator -------------------------------------------------------------------------------------
class LLMSimulator(UserSimulator):
    def __init__(self, backend: str = "openai", endpoint: str = "http://127.0.0.1:8000/v1", model: str = "",
                 api_key_env: str = "OPENAI_API_KEY", model_path: Optional[str] = None, voice: str = "espeak",
                 sample_rate: int = 16000, seed: int = 0, max_tokens: int = 64, temperature: float = 0.8,
                 stop_marker: str = "[END]", timeout_s: float = 30.0, max_chars: int = 200,
                 max_model_len: int = 2048, device: str = "auto", gpu_memory_utilization: float = 0.2):
        from simulator.voices import VOICES

        def bad(param: str, value: Any, why: str) -> ValueError:
            return ValueError(f"simulator.{param}={value!r}: {why} (LLMSimulator)")

        def number(param: str, value: Any, kind, ok) -> Any:
            try:
                v = kind(value)
            except (TypeError, ValueError):
                raise bad(param, value, "expected a number") from None
            if isinstance(value, bool) or not ok(v):
                raise bad(param, value, "out of range")
            return v

        if backend not in BACKENDS:
            raise bad("backend", backend, f"expected one of {list(BACKENDS)}")
        if backend == "openai":
            scheme = urllib.parse.urlsplit(str(endpoint)).scheme
            if scheme not in ("http", "https"):
                raise bad("endpoint", endpoint, "expected an http(s) URL of an OpenAI-compatible API, "
                          "e.g. http://127.0.0.1:8000/v1")
        else:
            if not model_path:
                raise bad("model_path", model_path, "backend='vllm' needs a local checkpoint directory "
                          "(+simulator.model_path=/path/to/checkpoint)")
            model_path = os.path.abspath(os.path.expanduser(str(model_path)))
            if not (Path(model_path) / "config.json").is_file():
                raise bad("model_path", model_path, "no config.json there (expected a Hugging Face checkpoint "
                          "directory with a chat template)")
        if voice not in VOICES:
            raise bad("voice", voice, f"expected one of {sorted(VOICES)}")
        if not isinstance(stop_marker, str) or not stop_marker.strip():
            raise bad("stop_marker", stop_marker, "expected a non-empty string")
        if device not in ("auto", "cpu", "cuda"):
            raise bad("device", device, "expected auto, cpu or cuda")
        sample_rate = number("sample_rate", sample_rate, int, lambda v: v > 0)
        seed = number("seed", seed, int, lambda v: v >= 0)
        max_tokens = number("max_tokens", max_tokens, int, lambda v: v > 0)
        temperature = number("temperature", temperature, float, lambda v: v >= 0)
        timeout_s = number("timeout_s", timeout_s, float, lambda v: v > 0)
        max_chars = number("max_chars", max_chars, int, lambda v: v > 0)
        max_model_len = number("max_model_len", max_model_len, int, lambda v: v > max_tokens)
        gpu_memory_utilization = number("gpu_memory_utilization", gpu_memory_utilization, float,
                                        lambda v: 0 < v <= 1)
        self.backend, self.endpoint, self.model = backend, str(endpoint), str(model)
        self.api_key_env, self.model_path = str(api_key_env or ""), model_path
        self.voice_name, self.sample_rate, self.seed = voice, sample_rate, seed
        self.max_tokens, self.temperature = max_tokens, temperature
        self.stop_marker, self.timeout_s, self.max_chars = stop_marker, timeout_s, max_chars
        self.max_model_len, self.device = max_model_len, device
        self.gpu_memory_utilization = gpu_memory_utilization
        self.scenario: Optional[Scenario] = None
        self.turn = 0  # user turns spoken so far
        self.history: List[Dict[str, str]] = []  # from the LLM's point of view, without the system prompt
        self.raw_lines: List[str] = []  # what the LLM wrote, before parsing (for inspection)

    # -- the LLM ---------------------------------------------------------------------------------------
    def _emotion(self, k: int) -> str:
        arc = self.scenario.emotion_arc or ["neutral"]
        return arc[min(k, len(arc) - 1)]

    def messages(self, last_turn: bool = False) -> List[Dict[str, str]]:
        sys = system_prompt(self.scenario, self._emotion(self.turn), self.stop_marker, last_turn)
        return [{"role": "system", "content": sys}] + list(self.history)

    async def _complete(self, messages: List[Dict[str, str]]) -> str:
        if self.backend == "openai":
            payload: Dict[str, Any] = {"messages": messages, "max_tokens": self.max_tokens,
                                       "temperature": self.temperature}
            if self.model:
                payload["model"] = self.model
            key = os.environ.get(self.api_key_env) if self.api_key_env else None
            try:
                return await asyncio.wait_for(
                    asyncio.to_thread(openai_chat, self.endpoint, payload, key, self.timeout_s),
                    timeout=self.timeout_s + 5.0)
            except asyncio.TimeoutError:
                raise LLMSimulatorError(f"LLM simulator: POST {self.endpoint.rstrip('/')}/chat/completions: "
                                        f"no answer within {self.timeout_s:g} s") from None
        return await vllm_chat(self.model_path, messages, self.max_tokens, self.temperature, self.seed,
                               self.max_model_len, self.device, self.gpu_memory_utilization)

    async def _line(self, last_turn: bool) -> ParsedLine:
        raw = await self._complete(self.messages(last_turn))
        self.raw_lines.append(raw)
        return parse_line(raw, self.stop_marker, self.max_chars)

    async def _say(self, line: ParsedLine, feedback: Optional[float], done: bool) -> UserTurn:
        from simulator.scripted import shared_voice

        k = self.turn
        text = line.text or (GOODBYE if done else REPEAT)
        question: Optional[Question] = None
        if not done:
            question = next((q for q in self.scenario.questions if q.turn == k), None)
            if question is not None:
                text = f"{text} Quick question, {question.text}"
        self.history.append({"role": "assistant", "content": text})
        self.turn += 1
        emotion = self._emotion(k)
        voice = shared_voice(self.voice_name, self.sample_rate)
        audio = await asyncio.to_thread(voice.synthesize, text, emotion)
        return UserTurn(text=text, audio=audio, sample_rate=voice.sample_rate, emotion=emotion, feedback=feedback,
                        done=done, question=question)

    # -- the contract ----------------------------------------------------------------------------------
    async def start(self, scenario: Scenario) -> UserTurn:
        self.scenario, self.turn = scenario, 0
        self.history = [{"role": "user", "content": KICKOFF}]
        self.raw_lines = []
        line = await self._line(last_turn=False)
        return await self._say(line, feedback=None, done=line.done)  # a rating before any reply is ignored

    async def react(self, agent: AgentTurn) -> UserTurn:
        if self.scenario is None:
            raise RuntimeError("LLMSimulator.react before start")
        self.history.append({"role": "user", "content": (agent.reply or "").strip() or SILENCE})
        last = self.turn >= self.scenario.max_turns  # the scenario's turns are used up: the user says goodbye
        line = await self._line(last_turn=last)
        return await self._say(line, feedback=line.feedback, done=line.done or last)
