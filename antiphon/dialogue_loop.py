"""One spoken dialogue between the policy and a user simulator, token-in/token-out.

The context of agent turn k is the exact token ids of everything before it -- earlier turns are never
decoded and re-encoded -- plus the new user turn, with one ``<|AUDIO|>`` per user clip (every clip
so far is attached to the request). Each agent turn is generated in up to two requests when a
thinking budget is set: the reasoning, stopped at ``</think>`` or at the budget (then ``</think>`` is
forced in, as a non-policy token), and the reply. Template glue and forced tokens are never policy
tokens; only what the sampler drew carries a log-prob and a weight version.
"""
from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from dataclasses import dataclass
from typing import Any, List, Mapping, Optional

import numpy as np

from antiphon.config.schema import DialogueConfig, ModelConfig, RolloutConfig
from antiphon.dialogue import AgentTurn, Scenario, UserSimulator, UserTurn, Voice, parse_style
from antiphon.generation import GenerationRequest
from antiphon.model.chat import ChatFormat
from antiphon.protocol import AudioClip, Trajectory, TurnRecord


@dataclass
class DialogueSettings(DialogueConfig):
    """The schema's ``rollout.dialogue`` plus what the loop needs from the rollout and the model config.
    Defaults are the schema's: the fields below read them from there, so each lives in one place."""

    max_new_tokens: int = RolloutConfig.max_new_tokens  # per agent turn, reasoning included
    max_context_tokens: int = ModelConfig.max_model_len
    sample_rate: int = ModelConfig.sample_rate

    @classmethod
    def from_config(cls, rollout: Any, model: Any) -> "DialogueSettings":
        """From the ``rollout`` and ``model`` groups: the schema's dataclasses or their plain mappings."""
        d = _get(rollout, "dialogue")
        d = dataclasses.asdict(d) if dataclasses.is_dataclass(d) else dict(d or {})
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(DialogueConfig)})
        if unknown:
            raise ValueError(f"rollout.dialogue: unknown keys {unknown}")
        return cls(**d, max_new_tokens=int(_get(rollout, "max_new_tokens")),
                   max_context_tokens=int(_get(model, "max_model_len")), sample_rate=int(_get(model, "sample_rate")))


def _get(cfg: Any, key: str) -> Any:
    return cfg[key] if isinstance(cfg, Mapping) else getattr(cfg, key)


class DialogueEnded(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def check_user_audio(turn: UserTurn, settings: DialogueSettings) -> None:
    """Refuses audio the policy must not hear; the reason ends the dialogue (and is counted)."""
    a = turn.audio
    if not isinstance(a, np.ndarray) or a.ndim != 1:
        raise DialogueEnded(f"bad_audio:not_1d_array({type(a).__name__})")
    if a.size == 0:
        raise DialogueEnded("bad_audio:empty")
    if not np.isfinite(a).all():
        raise DialogueEnded("bad_audio:nan_or_inf")
    if turn.sample_rate != settings.sample_rate:
        raise DialogueEnded(f"bad_audio:sample_rate_{turn.sample_rate}_expected_{settings.sample_rate}")
    if a.size / turn.sample_rate > settings.max_user_audio_s:
        raise DialogueEnded(f"bad_audio:too_long_{a.size / turn.sample_rate:.1f}s")
    if np.abs(a).max() > 1.0 + 1e-6:
        raise DialogueEnded("bad_audio:out_of_range")


class Dialogue:
    """Builds one trajectory. ``run`` never raises for simulator or audio faults: they end the dialogue."""

    def __init__(self, engine, simulator: UserSimulator, scenario: Scenario, chat: ChatFormat, voice: Optional[Voice],
                 settings: DialogueSettings, run: str = "", worker: int = 0, tokens_per_clip=None):
        self.engine, self.sim, self.scenario, self.chat, self.voice = engine, simulator, scenario, chat, voice
        self.s, self.run_name, self.worker = settings, run, worker
        self.tokens_per_clip = tokens_per_clip  # clip samples -> placeholders after expansion (context budget)
        self.ids: List[int] = []
        self.mask: List[int] = []
        self.logprobs: List[float] = []
        self.versions: List[int] = []
        self.clips: List[np.ndarray] = []
        self.turns: List[TurnRecord] = []
        self.id = uuid.uuid4().hex
        self.simulator_s = 0.0  # time spent waiting on the simulator (its words and its voice)
        self.end_think = chat.tokenizer.convert_tokens_to_ids("</think>")

    def _append(self, ids, policy=False, logprobs=None, version=-1):
        self.ids += list(ids)
        self.mask += [1 if policy else 0] * len(ids)
        self.logprobs += list(logprobs) if logprobs is not None else [0.0] * len(ids)
        self.versions += [version if policy else -1] * len(ids)

    async def _sim(self, coro, what: str) -> UserTurn:
        t0 = time.perf_counter()
        try:
            turn = await asyncio.wait_for(coro, timeout=self.s.simulator_timeout_s)
            self.simulator_s += time.perf_counter() - t0
        except asyncio.TimeoutError:
            raise DialogueEnded(f"simulator_timeout:{what}") from None
        except DialogueEnded:
            raise
        except Exception as e:  # a user's simulator may raise anything; the worker keeps running
            raise DialogueEnded(f"simulator_error:{what}:{type(e).__name__}: {e}"[:300]) from None
        if not isinstance(turn, UserTurn):
            raise DialogueEnded(f"simulator_error:{what}:returned {type(turn).__name__}, not UserTurn")
        return turn

    def _context_len(self, extra_ids: int, extra_clips: List[np.ndarray]) -> int:
        expand = 0
        if self.tokens_per_clip is not None:
            expand = sum(self.tokens_per_clip(len(c)) - 1 for c in self.clips + extra_clips)
        return len(self.ids) + extra_ids + expand

    async def _generate(self, max_tokens: int, stop: List[int]):
        req = GenerationRequest(f"{self.id}-{len(self.turns)}-{len(self.ids)}", list(self.ids), list(self.clips),
                                max_new_tokens=max_tokens, stop_token_ids=stop)
        return await self.engine.generate(req)

    async def _agent_turn(self) -> AgentTurn:
        start = len(self.ids)
        t0 = time.perf_counter()
        budget = self.s.max_new_tokens
        room = self.s.max_context_tokens - self._context_len(0, []) - 1
        budget = min(budget, room)
        if budget < 4:
            raise DialogueEnded("context_cap")
        version, finish = None, "stop"
        if self.s.open_think and self.s.think_budget > 0:
            res = await self._generate(min(self.s.think_budget, budget), [self.end_think, self.chat.im_end])
            version = res.weight_version
            self._append(res.token_ids, policy=True, logprobs=res.logprobs, version=version)
            budget -= len(res.token_ids)
            last = res.token_ids[-1] if res.token_ids else None
            if last == self.chat.im_end:
                finish = res.finish_reason
            elif last != self.end_think:
                self._append([self.end_think])  # budget spent: close the reasoning for the model
        if self.ids[-1] != self.chat.im_end and budget > 0:
            # Weights may change between the two requests: versions are recorded per token.
            res = await self._generate(budget, [])
            version = res.weight_version
            self._append(res.token_ids, policy=True, logprobs=res.logprobs, version=version)
            finish = res.finish_reason
        if self.ids[-1] != self.chat.im_end:
            self._append([self.chat.im_end])  # cut by the budget: close the turn (not a policy token)
            finish = "length"
        self._append(self.chat.newline)
        gen_s = time.perf_counter() - t0

        turn_ids = self.ids[start:]
        reasoning, reply = self._split(turn_ids)
        style, spoken = parse_style(reply)
        audio, tts_s, voice_error = None, 0.0, None
        if spoken.strip() and self.voice is not None:
            t1 = time.perf_counter()
            try:
                audio = await asyncio.to_thread(self.voice.synthesize, spoken, style)
            except Exception as e:  # the turn is kept; the dialogue ends below with the reason
                voice_error = f"agent_voice_error:{type(e).__name__}: {e}"[:300]
            tts_s = time.perf_counter() - t1
        agent = AgentTurn(reasoning=reasoning, reply=spoken, style=style, audio=audio,
                          sample_rate=self.voice.sample_rate if self.voice else self.s.sample_rate,
                          token_ids=turn_ids, finish_reason=finish)
        self.turns.append(TurnRecord(
            role="assistant", start=start, end=len(self.ids), text=spoken, reasoning=reasoning, emotion=style,
            audio=AudioClip.from_float(audio, agent.sample_rate) if audio is not None else None,
            weight_version=int(version if version is not None else -1), finish_reason=finish,
            timing={"generate_s": gen_s, "tts_s": tts_s}))
        if voice_error:
            raise DialogueEnded(voice_error)  # the user cannot hear a reply that was never voiced
        return agent

    def _split(self, turn_ids: List[int]):
        """(reasoning, reply) text of an agent turn, without template tokens."""
        tok = self.chat.tokenizer
        body = [t for t in turn_ids if t not in (self.chat.im_end,)]
        if self.end_think in body:
            k = body.index(self.end_think)
            reasoning, reply = body[:k], body[k + 1:]
        elif self.s.open_think:
            reasoning, reply = body, []
        else:
            reasoning, reply = [], body
        return (tok.decode(reasoning, skip_special_tokens=True).strip(),
                tok.decode(reply, skip_special_tokens=True).strip())

    def _user_turn(self, user: UserTurn, first: bool) -> None:
        start = len(self.ids)
        if first and self.s.system_prompt:
            self._append(self.chat.system_turn(self.s.system_prompt))
        text = user.text if self.s.user_text_in_prompt else ""
        self._append(self.chat.user_turn(text, num_audio=1) + self.chat.assistant_prefix(self.s.open_think))
        clip = AudioClip.from_float(user.audio, user.sample_rate)
        # The policy hears exactly what the trajectory carries (int16 PCM), so the learner can replay it.
        self.clips.append(clip.to_float())
        self.turns.append(TurnRecord(role="user", start=start, end=len(self.ids), text=user.text, emotion=user.emotion,
                                     audio=clip, feedback=user.feedback))

    async def run(self) -> Optional[Trajectory]:
        """The finished trajectory, or None when the dialogue ended before any agent turn."""
        t0 = time.perf_counter()
        reason = "turn_cap"
        final_feedback = None
        try:
            user = await self._sim(self.sim.start(self.scenario), "start")
            check_user_audio(user, self.s)
            cap = min(self.s.max_turns, self.scenario.max_turns)
            for k in range(cap):
                extra = len(self.chat.user_turn(user.text if self.s.user_text_in_prompt else "", 1)) + 8
                if self._context_len(extra, [user.audio]) + 4 > self.s.max_context_tokens:
                    reason = "context_cap"
                    break
                self._user_turn(user, first=(k == 0))
                agent = await self._agent_turn()
                user = await self._sim(self.sim.react(agent), f"react[{k}]")
                check_user_audio(user, self.s)
                final_feedback = user.feedback
                if user.done or k == cap - 1:
                    # The user's last word: kept (feedback, emotion, audio) for the reward service, but as a
                    # turn without tokens -- no agent turn follows, so the policy never hears it.
                    n = len(self.ids)
                    self.turns.append(TurnRecord(role="user", start=n, end=n, text=user.text, emotion=user.emotion,
                                                 audio=AudioClip.from_float(user.audio, user.sample_rate),
                                                 feedback=user.feedback))
                if user.done:
                    reason = "user_ended"
                    break
        except DialogueEnded as e:
            reason = e.reason
        finally:
            try:
                await asyncio.wait_for(self.sim.close(), timeout=self.s.simulator_timeout_s)
            except Exception:  # a failing close must not lose the dialogue
                pass
        # A user turn whose agent reply never came (context cap, engine fault) carries no signal: drop it.
        if self.turns and self.turns[-1].role == "user" and self.turns[-1].end > self.turns[-1].start:
            cut = self.turns.pop().start
            del self.ids[cut:], self.mask[cut:], self.logprobs[cut:], self.versions[cut:]
            self.clips.pop()
        if not any(t.role == "assistant" for t in self.turns):
            self.end_reason = reason
            return None
        self.end_reason = reason
        return Trajectory(
            trajectory_id=self.id, run=self.run_name, scenario=self.scenario.to_dict(),
            token_ids=np.asarray(self.ids, np.int32), policy_mask=np.asarray(self.mask, np.uint8),
            logprobs=np.asarray(self.logprobs, np.float32), versions=np.asarray(self.versions, np.int32),
            turns=self.turns, end_reason=reason, worker=self.worker, created_at=time.time(),
            meta={"final_feedback": final_feedback, "wall_s": time.perf_counter() - t0,
                  "simulator_s": self.simulator_s})

