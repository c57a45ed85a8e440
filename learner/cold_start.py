"""Supervised cold start: teach a fresh policy the output FORMAT before RL (as Step-Audio-R1 starts RL from SFT).

A uniform random-init policy never finds ``</think>`` + a style tag + end of turn by RL alone
(docs/cpu-stack.md). So before RL the policy imitates a teacher on synthetic dialogues played against
the configured user simulator. They are held by the rollout's own dialogue loop
(``antiphon.dialogue_loop.Dialogue``) with a teacher standing in for the rollout engine, so the token layout,
the loss mask (the trajectory's policy mask) and the audio are by construction what the rollout
produces::

    [system turn] user turn (<|AUDIO|>, transcript) <|im_start|>assistant\\n<think>
    reasoning </think> [style] reply <|im_end|> \\n   user turn ... <|im_start|>assistant\\n<think> ...

Only the teacher's tokens (reasoning, ``</think>``, reply, ``<|im_end|>``) are trained. The teacher
teaches the format and NOTHING of the task RL must learn: its style tag is drawn uniformly from
``STYLE_TAGS`` whatever the user's emotion, its reasoning never mentions the emotion, and its answer to
an arithmetic question is a random number. After the cold start the policy writes the format with
roughly uniform styles; matching the user's (heard) emotion and answering right is left to RL. The
format check samples the trained policy through the same loop (``learner.hf_engine.HFEngine``).

    python -m learner.cold_start --out /tmp/cold --dialogues 256 --epochs 3
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from antiphon.dialogue_loop import Dialogue, DialogueSettings
from antiphon.cache import build_once
from antiphon.config.schema import ColdStartConfig, SimulatorConfig
from antiphon.dialogue import Scenario, UserTurn, simulator_factory
from antiphon.generation import GenerationRequest, GenerationResult
from antiphon.model.chat import ChatFormat
from antiphon.model.tokens import END_THINK, structural_token_ids
from antiphon.protocol import Trajectory
from antiphon.style import STYLE_TAGS, parse_style

COLD_START_VERSION = 2  # bump when the teacher or the recipe changes: invalidates cached cold starts

# Reasoning and replies are generic: no emotion words, no arithmetic -- format only.
_REASONING = [
    "the user is talking to me",
    "let me answer the user",
    "i listen and then reply",
    "the user wants to talk",
    "i think about what to say",
    "okay so i reply now",
]
_REASONING_QUESTION = [
    "the user asks a question",
    "there is a question so i answer it",
    "let me answer the question",
]
_REPLIES = [
    "I hear you.",
    "Tell me more.",
    "I see.",
    "Okay, I am here.",
    "Thanks for telling me.",
    "That makes sense.",
    "I understand.",
    "Let us try it step by step.",
]
_STYLES = list(STYLE_TAGS)


def _log(msg: str) -> None:
    print(f"[cold start] {msg}", flush=True)


class SetupError(ValueError):
    """A configuration that cannot work (not a simulator fault): raised, never swallowed."""


# -- the teacher -----------------------------------------------------------------------------------------
def teacher_turn(rng: random.Random, question: Optional[str]) -> Tuple[str, str]:
    """``(reasoning, reply)`` of one teacher turn: generic reasoning, a uniformly random style tag, a short
    sentence, and -- when the user asked a question -- a RANDOM number as the answer."""
    reasoning = rng.choice(_REASONING_QUESTION if question else _REASONING)
    reply = f"[{rng.choice(_STYLES)}] {rng.choice(_REPLIES)}"
    if question:
        reply += f" The answer is {rng.randint(0, 18)}."
    return reasoning, reply


def teacher_turn_ids(chat: ChatFormat, reasoning: str, reply: str,
                     open_think: bool = True) -> Tuple[List[int], List[int]]:
    """The teacher's two pieces of an agent turn: (reasoning + ``</think>``, reply + ``<|im_end|>``).
    Without ``open_think`` the agent turn has no reasoning phase: the first piece is empty."""
    end_think = chat.tokenizer.convert_tokens_to_ids(END_THINK)
    think = chat.text(reasoning) + [end_think] if open_think else []
    return think, chat.text(reply) + [chat.im_end]


def asked(user: Optional[UserTurn]) -> Optional[str]:
    """The question a user turn asks, if any: its verifiable question, else its words when they hold a '?'."""
    if user is None:
        return None
    if user.question is not None:
        return user.question.text
    return user.text if "?" in (user.text or "") else None


class Heard:
    """Wraps a user simulator and keeps the user's last turn, so the teacher answers what was asked.

    The user's answer to the dialogue's last agent turn never reaches the policy (no agent turn follows;
    the rollout keeps it only for the reward service), so it is not asked for: the last ``react`` ends the
    dialogue with a silent turn instead of making the simulator write and voice a line nobody hears.
    """

    def __init__(self, sim, max_turns: int):
        self.sim, self.max_turns = sim, int(max_turns)
        self.last: Optional[UserTurn] = None
        self.left = 0

    async def start(self, scenario: Scenario) -> UserTurn:
        self.left = min(self.max_turns, int(scenario.max_turns))
        self.last = await self.sim.start(scenario)
        return self.last

    async def react(self, agent) -> UserTurn:
        self.left -= 1
        if self.left <= 0:
            rate = self.last.sample_rate
            self.last = UserTurn(text="", audio=np.zeros(rate // 100, np.float32), sample_rate=rate, done=True)
        else:
            self.last = await self.sim.react(agent)
        return self.last

    async def close(self) -> None:
        await self.sim.close()


class TeacherEngine:
    """Stands in for the rollout engine in one teacher dialogue (``engine.generate`` of ``antiphon/dialogue_loop.py``).

    At the start of each agent turn it draws the teacher's turn (``teacher_turn``, from the user's last
    turn) and then answers requests as a sampler that happened to draw exactly those tokens: each request
    gets the next tokens up to and including the first of its stop tokens or ``<|im_end|>`` (which the
    rollout engine always stops at). So the reasoning request gets reasoning + ``</think>``, the reply
    request ``[style] reply`` + ``<|im_end|>``, and both are policy tokens of the trajectory. A teacher
    turn that does not fit a request's budget is a configuration error (``SetupError``): truncating it
    would teach a cut turn.
    """

    def __init__(self, chat: ChatFormat, rng: random.Random, heard: Heard, open_think: bool = True):
        self.chat, self.rng, self.heard, self.open_think = chat, rng, heard, open_think
        self._turn: List[int] = []  # the current teacher turn's tokens not yet handed out
        self._text: Tuple[str, str] = ("", "")

    async def generate(self, req: GenerationRequest) -> GenerationResult:
        if not self._turn:
            self._text = teacher_turn(self.rng, asked(self.heard.last))
            think, answer = teacher_turn_ids(self.chat, *self._text, open_think=self.open_think)
            self._turn = think + answer
        stops = set(req.stop_token_ids) | {self.chat.im_end}
        n = next((i + 1 for i, t in enumerate(self._turn) if t in stops), len(self._turn))
        if req.max_new_tokens is not None and n > req.max_new_tokens:
            raise SetupError(f"teacher turn too long for the rollout budgets (a request of {req.max_new_tokens} "
                             f"tokens, the teacher needs {n}): {self._text[0]!r} {self._text[1]!r}; raise "
                             "rollout.dialogue.think_budget / rollout.max_new_tokens")
        out, self._turn = self._turn[:n], self._turn[n:]
        return GenerationResult(req.request_id, out, [0.0] * len(out), 0, "stop", len(req.prompt_ids))


# -- dialogues through the rollout's loop ------------------------------------------------------------------
def run_dialogues(scenarios: Sequence[Scenario], make_engine: Callable[[int, Any], Any], make_sim: Callable[[], Any],
                  chat: ChatFormat, settings: DialogueSettings, tokens_per_clip=None,
                  wrap_sim: Callable[[Any], Any] = lambda sim: sim) -> List[Tuple[Optional[Trajectory], str]]:
    """Runs one ``Dialogue`` per scenario (``settings.max_concurrent`` at a time): ``(trajectory, end
    reason)`` of each, in order (the trajectory is None when it ended before any agent turn).

    ``make_engine(i, sim)``: the engine of dialogue i (``sim``: its simulator, after ``wrap_sim``).
    """
    async def run_all():
        sem = asyncio.Semaphore(max(1, int(settings.max_concurrent)))

        async def one(i: int, scenario: Scenario) -> Tuple[Optional[Trajectory], str]:
            async with sem:
                sim = wrap_sim(make_sim())
                d = Dialogue(make_engine(i, sim), sim, scenario, chat, None, settings, run="cold_start",
                             tokens_per_clip=tokens_per_clip)
                return await d.run(), d.end_reason

        return await asyncio.gather(*(one(i, sc) for i, sc in enumerate(scenarios)))

    dialogues = asyncio.run(run_all())
    for _, reason in dialogues:
        if reason.startswith("bad_audio:sample_rate"):
            raise SetupError(f"the simulator's audio does not fit the policy: {reason} "
                             f"(model.sample_rate={settings.sample_rate})")
    return dialogues


def teacher_trajectories(scenarios: Sequence[Scenario], sim_cfg: Any, tokenizer, settings: DialogueSettings,
                         seed: int, tokens_per_clip=None) -> List[Trajectory]:
    """One teacher dialogue per scenario (in order) against the configured simulator, through the rollout's
    dialogue loop. Dialogue i draws from its own ``random.Random(f"{seed}:{i}")``: the same data whatever
    order the dialogues finish in. Dialogues a simulator fault ended before any agent turn are left out;
    one it ended later keeps its finished turns (as in the rollout)."""
    chat = ChatFormat(tokenizer)
    make_sim = simulator_factory(sim_cfg, settings.sample_rate)
    dialogues = run_dialogues(
        scenarios, lambda i, sim: TeacherEngine(chat, random.Random(f"{seed}:{i}"), sim, settings.open_think),
        make_sim, chat, settings, tokens_per_clip, wrap_sim=lambda sim: Heard(sim, settings.max_turns))
    errors = [r for _, r in dialogues if r.startswith(("simulator_", "bad_audio", "agent_voice"))]
    if errors:
        _log(f"{len(errors)} of {len(dialogues)} dialogues ended by a simulator fault, e.g. {errors[0]}")
    out = [t for t, _ in dialogues if t is not None]
    if not out:
        raise RuntimeError(f"no synthetic dialogue has an agent turn ({len(errors)} simulator faults)")
    return out


def synthetic_dialogues(scenarios: Sequence[Scenario], sim_cfg: Any, tokenizer, settings: DialogueSettings,
                        seed: int, tokens_per_clip=None):
    """The teacher's dialogues as training data: ``[(Sample, loss_mask)]``, each dialogue one scored sequence
    (``learner.policy.trajectory_sample``: ``prompt_ids = ids[:1]``, the rest as completion, the user
    clips in order) and its policy mask over the completion (1 on the teacher's tokens)."""
    from learner.policy import trajectory_sample

    return [(trajectory_sample(t), [int(m) for m in t.policy_mask[1:]])
            for t in teacher_trajectories(scenarios, sim_cfg, tokenizer, settings, seed, tokens_per_clip)]


# -- audio embeddings computed once (the audio tower is frozen during the cold start) ----------------------
class _FrozenAudio:
    """Stands in for ``PolicyModel.frontend``: each clip's embeddings computed once, without gradient.
    Keyed by the clip object (kept alive here), so pass the same arrays every time."""

    def __init__(self, frontend):
        self.frontend = frontend
        self.cache: Dict[int, Tuple[np.ndarray, Any]] = {}

    def __call__(self, clips, features=None):  # features: unused, each clip is encoded once anyway
        import torch

        todo = [c for c in clips if id(c) not in self.cache]
        if todo:
            with torch.no_grad():
                for c, e in zip(todo, self.frontend(todo)):
                    self.cache[id(c)] = (c, e.detach())
        return [self.cache[id(c)][1] for c in clips]

    def __getattr__(self, name):
        return getattr(self.frontend, name)


@contextlib.contextmanager
def frozen_audio(policy) -> Iterator[None]:
    """The policy's audio tower and projector frozen, their outputs cached per clip, inside the block."""
    m = policy.model.model
    params = [p for mod in (m.audio_tower, m.multi_modal_projector) for p in mod.parameters()]
    flags = [p.requires_grad for p in params]
    frontend = policy.frontend
    for p in params:
        p.requires_grad_(False)
    policy.frontend = _FrozenAudio(frontend)
    try:
        yield
    finally:
        policy.frontend = frontend
        for p, f in zip(params, flags):
            p.requires_grad_(f)


# -- sampling check --------------------------------------------------------------------------------------
def turn_format(chat: ChatFormat, ids: Sequence[int], mask: Sequence[int], think_budget: int,
                open_think: bool = True) -> Dict[str, Any]:
    """How well one agent turn (its token ids and policy mask) keeps the format, judged on what the policy
    sampled (forced ``</think>``/``<|im_end|>`` do not count): ``</think>`` within ``think_budget`` tokens
    (when the turn opens inside ``<think>``), then a reply carrying a known style tag, then ``<|im_end|>``."""
    tok = chat.tokenizer
    end_think = tok.convert_tokens_to_ids(END_THINK)
    g = [int(t) for t, m in zip(ids, mask) if m]
    ended = chat.im_end in g
    body = g[:g.index(chat.im_end)] if ended else g
    has_think = end_think in body
    k = body.index(end_think) if has_think else -1
    reply = tok.decode(body[k + 1:], skip_special_tokens=True).strip() if (has_think or not open_think) else ""
    style, _ = parse_style(reply)
    in_budget = has_think and k < think_budget
    return {"ended": ended, "think": has_think, "think_in_budget": in_budget, "style": style,
            "tag_leads": style is not None and reply.startswith("["), "tokens": len(g),
            "ok": ended and style is not None and (in_budget or not open_think)}


def format_summary(turns: Sequence[Dict[str, Any]], examples: Sequence[str] = ()) -> Dict[str, Any]:
    """Rates over ``turn_format`` results, the style distribution of the well-formed turns, examples."""
    n = max(1, len(turns))
    styles = Counter(t["style"] for t in turns if t["ok"])
    counts = {s: styles.get(s, 0) for s in _STYLES}
    p = np.array(list(counts.values()), float)
    p = p / p.sum() if p.sum() else p
    entropy = float(-(p[p > 0] * np.log(p[p > 0])).sum()) / np.log(len(_STYLES)) if p.sum() else 0.0
    rate = lambda key: sum(bool(t[key]) for t in turns) / n  # noqa: E731
    return {"n": len(turns), "format_rate": rate("ok"), "think_rate": rate("think"),
            "think_in_budget_rate": rate("think_in_budget"), "tag_rate": sum(t["style"] is not None for t in turns) / n,
            "tag_leads_rate": rate("tag_leads"), "end_rate": rate("ended"),
            "mean_tokens": float(np.mean([t["tokens"] for t in turns])) if turns else 0.0,
            "styles": counts, "style_entropy": entropy, "max_style_share": float(p.max()) if p.sum() else 0.0,
            "examples": list(examples)}


def sample_format_rate(policy, scenarios: Sequence[Scenario], sim_cfg: Any, settings: DialogueSettings,
                       samples_per_prompt: int = 1, seed: int = 0, max_examples: int = 6) -> Dict[str, Any]:
    """Samples the first agent turn of each scenario (x ``samples_per_prompt``) from the policy, through the
    rollout's dialogue loop over the learner's own model (``HFEngine``: its temperature, structural tokens
    never sampled, the rollout's think budget and turn budget), and checks the format (``turn_format``).
    Returns rates, the style distribution of the well-formed turns, and a few decoded examples."""
    from learner.hf_engine import HFEngine

    chat = ChatFormat(policy.tokenizer)
    engine = HFEngine(policy, settings.max_new_tokens, seed=seed)
    one_turn = dataclasses.replace(settings, max_turns=1)
    rows = [sc for sc in scenarios for _ in range(samples_per_prompt)]
    dialogues = run_dialogues(rows, lambda i, sim: engine.session(int(seed) * 1_000_003 + i),
                              simulator_factory(sim_cfg, settings.sample_rate), chat, one_turn,
                              tokens_per_clip=policy.frontend.num_embeddings)
    turns, examples = [], []
    for t, _ in dialogues:
        agent = next((x for x in (t.turns if t is not None else []) if x.role == "assistant"), None)
        if agent is None:
            continue
        ids, mask = t.token_ids[agent.start:agent.end], t.policy_mask[agent.start:agent.end]
        turns.append(turn_format(chat, ids, mask, settings.think_budget, settings.open_think))
        if len(examples) < max_examples:
            examples.append(policy.tokenizer.decode([int(x) for x in ids], skip_special_tokens=False))
    return format_summary(turns, examples)


# -- training --------------------------------------------------------------------------------------------
def _loss_mask(batch, masks, like):
    import torch

    m = torch.zeros_like(like)
    for i, (pos, mk) in enumerate(zip(batch["completion_pos"], masks)):
        m[i, torch.tensor(pos, dtype=torch.long) - 1] = torch.tensor(mk, dtype=like.dtype)
    return m


def _check(cfg: ColdStartConfig) -> None:
    for key in ("dialogues", "epochs", "batch_size"):
        if getattr(cfg, key) < 1:
            raise ValueError(f"learner.cold_start.{key}={getattr(cfg, key)!r}: must be >= 1")
    if not cfg.lr > 0:
        raise ValueError(f"learner.cold_start.lr={cfg.lr!r}: must be > 0")
    if not 0 <= cfg.warmup < 1:
        raise ValueError(f"learner.cold_start.warmup={cfg.warmup!r}: must be in [0, 1)")
    if cfg.eval_prompts < 0:
        raise ValueError(f"learner.cold_start.eval_prompts={cfg.eval_prompts!r}: must be >= 0")


class ColdStartRecipe:
    """Supervised imitation of the teacher's tokens, top to bottom like ``learner.recipe.PPORecipe``:

        setup -> train(data) -> evaluate(scenarios, sim_cfg) -> save_checkpoint(dir) -> cleanup

    AdamW in fp32 on the mean NLL over teacher tokens; lr warmed up over ``cfg.warmup`` of the steps, then
    a cosine down to lr/10. With ``train_audio`` off the audio tower and projector stay as they are (nothing
    here is about hearing) and their outputs are computed once per clip.
    """

    def __init__(self, model_path, cfg: ColdStartConfig, settings: DialogueSettings):
        from antiphon.config import to_dataclass

        self.model_path = Path(model_path)
        self.cfg = to_dataclass(cfg, ColdStartConfig)
        self.settings = settings
        _check(self.cfg)

    def setup(self) -> None:
        import torch

        from learner.policy import PolicyModel

        torch.manual_seed(self.cfg.seed)
        self.policy = PolicyModel(self.model_path, device="cpu", dtype="float32", temperature=1.0)
        tok = self.policy.tokenizer
        banned = set(structural_token_ids(tok))
        for name in (END_THINK, "<|im_end|>"):
            if tok.convert_tokens_to_ids(name) in banned:
                raise SetupError(f"{name} is a banned (structural) token: the policy could never emit the format")
        if self.policy.sample_rate != self.settings.sample_rate:
            raise SetupError(f"model.sample_rate={self.settings.sample_rate}: the policy hears "
                             f"{self.policy.sample_rate} Hz")

    def _nll(self, data) -> float:
        import torch

        tot, cnt = 0.0, 0.0
        with torch.no_grad():
            for s in range(0, len(data), self.cfg.batch_size):
                chunk = data[s:s + self.cfg.batch_size]
                batch = self.policy.build_batch([d[0] for d in chunk])
                logp = self.policy.forward_logprobs(batch)
                m = _loss_mask(batch, [d[1] for d in chunk], logp)
                tot += float(-(logp * m).sum())
                cnt += float(m.sum())
        return tot / max(cnt, 1.0)

    def train(self, data) -> Dict[str, Any]:
        """Trains on ``[(Sample, loss_mask)]``; returns the per-epoch NLL and the NLL of a probe before/after."""
        import torch
        from transformers import get_cosine_with_min_lr_schedule_with_warmup

        c, policy = self.cfg, self.policy
        # Similar lengths batched together (less padding); batches shuffled every epoch.
        # ~ expanded length: tokens plus one audio embedding per 640 samples (40 ms)
        by_len = sorted(range(len(data)),
                        key=lambda i: len(data[i][0].completion_ids) + sum(len(a) for a in data[i][0].audio) // 640)
        batches = [by_len[s:s + c.batch_size] for s in range(0, len(by_len), c.batch_size)]
        total_steps = max(1, c.epochs * len(batches))
        probe = data[:min(16, len(data))]
        order_rng = random.Random(c.seed)
        losses: List[float] = []
        t0 = time.perf_counter()
        with (contextlib.nullcontext() if c.train_audio else frozen_audio(policy)):
            params = [p for p in policy.model.parameters() if p.requires_grad]
            opt = torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay)
            schedule = get_cosine_with_min_lr_schedule_with_warmup(
                opt, num_warmup_steps=int(c.warmup * total_steps), num_training_steps=total_steps, min_lr_rate=0.1)
            policy.model.eval()
            nll_before = self._nll(probe)
            _log(f"teacher-token NLL before: {nll_before:.3f}")
            policy.model.train()
            for epoch in range(c.epochs):
                order_rng.shuffle(batches)
                tot, cnt = 0.0, 0.0
                for b in batches:
                    chunk = [data[i] for i in b]
                    batch = policy.build_batch([d[0] for d in chunk])
                    logp = policy.forward_logprobs(batch)
                    m = _loss_mask(batch, [d[1] for d in chunk], logp)
                    loss = -(logp * m).sum() / m.sum().clamp_min(1.0)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(params, 1.0)
                    opt.step()
                    schedule.step()
                    tot += float(loss.detach()) * float(m.sum())
                    cnt += float(m.sum())
                losses.append(tot / max(cnt, 1.0))
                _log(f"epoch {epoch + 1}/{c.epochs}: NLL {losses[-1]:.3f} ({time.perf_counter() - t0:.1f}s)")
            policy.model.eval()
            nll_after = self._nll(probe)
        return {"losses": losses, "nll_before": nll_before, "nll_after": nll_after}

    def evaluate(self, scenarios: Sequence[Scenario], sim_cfg: Any) -> Dict[str, Any]:
        """The sampled format check on the first turns of ``scenarios`` (``sample_format_rate``)."""
        return sample_format_rate(self.policy, scenarios, sim_cfg, self.settings, seed=self.cfg.seed + 1)

    def save_checkpoint(self, out_dir) -> Path:
        """The trained policy as a directory transformers and vLLM load."""
        return self.policy.save_pretrained(Path(out_dir))

    def cleanup(self) -> None:
        self.policy = None


def train_cold_start(model_path, out_dir, scenarios: Sequence[Scenario], sim_cfg: Any, cfg: ColdStartConfig,
                     settings: DialogueSettings) -> Dict[str, Any]:
    """Supervised cold start of the policy at ``model_path``; the result is saved to ``out_dir``.

    ``cfg``: the schema's ``learner.cold_start`` (``dialogues`` synthetic dialogues, the scenarios cycled;
    the format check samples ``eval_prompts`` first turns of scenarios after those); ``settings``: the
    rollout's dialogue settings, so the layout and the budgets are the rollout's. Writes
    ``out_dir/cold_start.json`` and returns it.
    """
    from antiphon.config import to_dataclass

    t0 = time.perf_counter()
    cfg = to_dataclass(cfg, ColdStartConfig)
    if not scenarios:
        raise ValueError("cold start needs at least one scenario")
    recipe = ColdStartRecipe(model_path, cfg, settings)
    recipe.setup()
    try:
        policy = recipe.policy
        chosen = [scenarios[i % len(scenarios)] for i in range(cfg.dialogues)]
        _log(f"generating {cfg.dialogues} teacher dialogues against {_sim_dict(sim_cfg).get('_target_')}")
        data = synthetic_dialogues(chosen, sim_cfg, policy.tokenizer, settings, cfg.seed,
                                   tokens_per_clip=policy.frontend.num_embeddings)
        synth_s = time.perf_counter() - t0
        n_tokens = sum(len(s.completion_ids) for s, _ in data)
        n_policy = sum(sum(m) for _, m in data)
        _log(f"{len(data)} dialogues, {n_tokens} tokens ({n_policy} teacher tokens) in {synth_s:.1f}s")
        t1 = time.perf_counter()
        trained = recipe.train(data)
        train_s = time.perf_counter() - t1

        fmt: Dict[str, Any] = {}
        eval_s = 0.0
        if cfg.eval_prompts > 0:
            t2 = time.perf_counter()
            # First turns of scenarios the training did not use, when there are any.
            held = [scenarios[(cfg.dialogues + i) % len(scenarios)] for i in range(cfg.eval_prompts)]
            fmt = recipe.evaluate(held, sim_cfg)
            eval_s = time.perf_counter() - t2
            _log(f"sampled format rate {fmt['format_rate']:.2f} over {fmt['n']} turns, styles {fmt['styles']}")
        out = recipe.save_checkpoint(out_dir)
    finally:
        recipe.cleanup()
    result = {"version": COLD_START_VERSION, "config": dataclasses.asdict(cfg), "dialogue": _settings_dict(settings),
              "sim_cfg": _sim_dict(sim_cfg), "model_path": str(model_path), "dialogues": len(data),
              "tokens": n_tokens, "teacher_tokens": n_policy, **trained, "format": fmt,
              "wall_s": {"synthesis": synth_s, "train": train_s, "eval": eval_s, "total": time.perf_counter() - t0}}
    (out / "cold_start.json").write_text(json.dumps(result, indent=2, default=str))
    _log(f"saved to {out} in {result['wall_s']['total']:.1f}s")
    return result


# -- cache -----------------------------------------------------------------------------------------------
def _sim_dict(sim_cfg: Any) -> Dict[str, Any]:
    """The simulator config as plain JSON data (a mapping or the schema's dataclass: the same result)."""
    from antiphon.config import to_dataclass

    return json.loads(json.dumps(dataclasses.asdict(to_dataclass(sim_cfg, SimulatorConfig)), default=str))


def _settings_dict(settings: DialogueSettings) -> Dict[str, Any]:
    """What of the dialogue settings shapes the data (not how long to wait, not how many at once)."""
    d = dataclasses.asdict(settings)
    for k in ("simulator_timeout_s", "max_concurrent"):
        d.pop(k, None)
    return json.loads(json.dumps(d, default=str))


def _model_fingerprint(model_path) -> str:
    """sha256 of the weight files when they are small (the tiny policy), else their names, sizes and mtimes."""
    p = Path(model_path)
    files = sorted(list(p.glob("*.safetensors")) + list(p.glob("*.bin")))
    h = hashlib.sha256()
    if files and sum(f.stat().st_size for f in files) <= 256 * 2 ** 20:
        for f in files:
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    else:
        h.update(str(p.resolve()).encode())
        for f in files:
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    for name in ("config.json", "tokenizer.json"):
        if (p / name).exists():
            h.update((p / name).read_bytes())
    return h.hexdigest()


def cold_start_key(model_path, scenarios_key: str, sim_cfg: Any, cfg: ColdStartConfig,
                   settings: DialogueSettings) -> str:
    from antiphon.config import to_dataclass

    c = dataclasses.asdict(to_dataclass(cfg, ColdStartConfig))
    c.pop("enabled", None)
    blob = json.dumps({"v": COLD_START_VERSION, "model": _model_fingerprint(model_path), "cfg": c,
                       "dialogue": _settings_dict(settings), "scenarios": str(scenarios_key), "sim": _sim_dict(sim_cfg)},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _valid(target: Path, key: str) -> bool:
    try:
        return json.loads((target / "cold_start.json").read_text()).get("key") == key
    except (OSError, ValueError):
        return False


def ensure_cold_start(model_path, scenarios_key: str, sim_cfg: Any, cfg: ColdStartConfig,
                      settings: DialogueSettings, cache_dir, scenarios: Optional[Sequence[Scenario]] = None) -> Path:
    """The cold-started policy directory for these inputs, trained once and reused (e.g. by a Hydra multirun).

    Keyed by the model's weights, ``cfg``, ``settings``, ``scenarios_key`` (names the scenario set) and
    ``sim_cfg``. ``scenarios``: the set itself; default: ``sim_cfg``'s ``scenarios`` file, else
    ``simulator.scenarios.generate_scenarios`` from its ``num_scenarios``/``seed``/``max_turns``. Built
    once into the cache (``antiphon.cache.build_once``).
    """
    cache = Path(os.path.expanduser(str(cache_dir)))
    key = cold_start_key(model_path, scenarios_key, sim_cfg, cfg, settings)
    target = cache / f"cold-start-{key}"

    def build(tmp: Path) -> None:
        nonlocal scenarios
        if scenarios is None:
            from simulator.scenarios import generate_scenarios, read_jsonl

            from antiphon.config import to_dataclass

            sc = to_dataclass(sim_cfg, SimulatorConfig)
            scenarios = read_jsonl(sc.scenarios) if sc.scenarios else generate_scenarios(
                sc.num_scenarios, sc.seed, sc.max_turns)
        result = train_cold_start(model_path, tmp, scenarios, sim_cfg, cfg, settings)
        result["key"] = key
        result["scenarios_key"] = str(scenarios_key)
        (tmp / "cold_start.json").write_text(json.dumps(result, indent=2, default=str))

    if _valid(target, key):
        _log(f"reusing {target}")
        return target
    return build_once(target, build, lambda p: _valid(p, key))


# -- CLI -------------------------------------------------------------------------------------------------
def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    ap = argparse.ArgumentParser(description="Supervised format cold start of the tiny policy.")
    ap.add_argument("--out", required=True, help="output directory (a policy transformers and vLLM load)")
    ap.add_argument("--model", help="policy directory (default: the tiny policy, built on demand)")
    ap.add_argument("--cache-dir", default=os.environ.get("ANTIPHON_CACHE", "~/.cache/antiphon"))
    # learner.cold_start's fields, with the schema's defaults.
    for f in dataclasses.fields(ColdStartConfig):
        if f.name == "enabled":
            continue
        flag = f"--{f.name.replace('_', '-')}"
        if isinstance(f.default, bool):
            ap.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        else:
            ap.add_argument(flag, type=type(f.default), default=f.default)
    sim, dia = SimulatorConfig(), DialogueSettings()
    ap.add_argument("--num-scenarios", type=int, default=sim.num_scenarios)
    ap.add_argument("--scenario-seed", type=int, default=sim.seed)
    ap.add_argument("--max-turns", type=int, default=dia.max_turns, help="agent turns per dialogue")
    ap.add_argument("--voice", default=sim.voice)
    args = ap.parse_args(argv)

    from simulator.scenarios import generate_scenarios

    if args.model:
        model_path = Path(args.model)
    else:
        from antiphon.config.schema import TinyModelConfig
        from antiphon.model.tiny import ensure_tiny_policy

        model_path = ensure_tiny_policy(dataclasses.asdict(TinyModelConfig()), args.cache_dir)
    sim_cfg = SimulatorConfig(voice=args.voice, seed=args.scenario_seed, num_scenarios=args.num_scenarios,
                              max_turns=args.max_turns)
    scenarios = generate_scenarios(args.num_scenarios, args.scenario_seed, args.max_turns)
    cfg = ColdStartConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ColdStartConfig)
                             if f.name != "enabled"})
    settings = dataclasses.replace(dia, max_turns=args.max_turns)
    result = train_cold_start(model_path, args.out, scenarios, sim_cfg, cfg, settings)
    print(json.dumps({k: result[k] for k in ("losses", "nll_before", "nll_after", "wall_s")}
                     | {"format": {k: v for k, v in result["format"].items() if k != "examples"}}, indent=2))
    return result


if __name__ == "__main__":
    main()
