"""Supervised cold start: teach a fresh policy the output FORMAT before RL (as Step-Audio-R1 starts RL from SFT).

A uniform random-init policy never finds ``</think>`` + a style tag + end of turn by RL alone
(docs/cpu-stack.md). So before RL the policy imitates a teacher on synthetic dialogues played against the
configured user simulator, with the exact token layout of the rollout (``actors/dialogue.py``)::

    [system turn] user turn (<|AUDIO|>, transcript) <|im_start|>assistant\\n<think>
    reasoning </think> [style] reply <|im_end|> \\n   user turn ... <|im_start|>assistant\\n<think> ...

Only the teacher's tokens (reasoning, ``</think>``, reply, ``<|im_end|>``) are trained. The teacher
teaches the format and NOTHING of the task RL must learn: its style tag is drawn uniformly from
``STYLE_TAGS`` whatever the user's emotion, its reasoning never mentions the emotion, and its answer to
an arithmetic question is a random number. After the cold start the policy writes the format with
roughly uniform styles; matching the user's (heard) emotion and answering right is left to RL.

    python -m learner.cold_start --out /tmp/cold --dialogues 256 --epochs 3
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import fcntl
import hashlib
import json
import os
import random
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from antiphon.dialogue import AgentTurn, Scenario, simulator_factory
from antiphon.model.chat import ChatFormat
from antiphon.model.tokens import END_THINK, ENDOFTEXT, structural_token_ids
from antiphon.protocol import AudioClip
from antiphon.style import STYLE_TAGS, parse_style

COLD_START_VERSION = 1  # bump when the teacher or the recipe changes: invalidates cached cold starts

# Recommended defaults for the tiny policy: ~40 s of training on 2 CPU cores (~50 s in all with the
# synthesis and the sampled check), sampled (temperature 1) format rate 0.96-0.99 over 3 seeds.
DEFAULTS: Dict[str, Any] = {"dialogues": 256, "epochs": 4, "lr": 3e-3, "batch_size": 4, "seed": 0}

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
    """The two pieces the rollout engine would return: (reasoning + ``</think>``, reply + ``<|im_end|>``).
    Without ``open_think`` the agent turn has no reasoning phase: the first piece is empty."""
    end_think = chat.tokenizer.convert_tokens_to_ids(END_THINK)
    think = chat.text(reasoning) + [end_think] if open_think else []
    return think, chat.text(reply) + [chat.im_end]


# -- synthetic dialogues -----------------------------------------------------------------------------------
class _SetupError(ValueError):
    """A configuration that cannot work (not a simulator fault): raised, never swallowed."""


@dataclasses.dataclass
class _Built:
    ids: List[int]
    mask: List[int]
    clips: List[np.ndarray]
    error: Optional[str] = None


async def _one_dialogue(make_sim, scenario: Scenario, chat: ChatFormat, rng: random.Random, sample_rate: int,
                        open_think: bool, user_text_in_prompt: bool, system_prompt: str, max_turns: int,
                        think_budget: int, max_new_tokens: int) -> _Built:
    out = _Built([], [], [])

    def add(ids, policy=False):
        out.ids.extend(ids)
        out.mask.extend([1 if policy else 0] * len(ids))

    turn_ends: List[int] = []
    sim = make_sim()
    try:
        user = await sim.start(scenario)
        cap = min(int(max_turns), int(scenario.max_turns))
        for k in range(cap):
            if user.sample_rate != sample_rate:
                raise _SetupError(f"simulator speaks at {user.sample_rate} Hz, the policy hears {sample_rate} Hz")
            if k == 0 and system_prompt:
                add(chat.system_turn(system_prompt))
            add(chat.user_turn(user.text if user_text_in_prompt else "", num_audio=1)
                + chat.assistant_prefix(open_think))
            # The policy hears exactly what a trajectory carries (int16 PCM), as in the rollout.
            out.clips.append(AudioClip.from_float(user.audio, user.sample_rate).to_float())
            asked = user.question.text if getattr(user, "question", None) is not None else (
                user.text if "?" in (user.text or "") else None)
            reasoning, reply = teacher_turn(rng, asked)
            think, answer = teacher_turn_ids(chat, reasoning, reply, open_think)
            if (think_budget > 0 and len(think) > think_budget) or len(think) + len(answer) > max_new_tokens:
                raise _SetupError(f"teacher turn too long for the rollout budgets ({len(think)} reasoning, "
                                 f"{len(think) + len(answer)} in all): {reasoning!r} {reply!r}")
            add(think + answer, policy=True)
            add(chat.newline)
            turn_ends.append(len(out.ids))
            if k == cap - 1:
                break  # the user's last word never reaches the policy: not needed
            style, spoken = parse_style(reply)
            user = await sim.react(AgentTurn(reasoning=reasoning, reply=spoken, style=style, audio=None,
                                             sample_rate=sample_rate, token_ids=think + answer + chat.newline,
                                             finish_reason="stop"))
            if user.done:
                break
    except _SetupError:
        raise
    except Exception as e:  # like the rollout: a simulator fault ends the dialogue, finished turns stay
        out.error = f"{type(e).__name__}: {e}"[:200]
        n_agent = len(turn_ends)
        cut = turn_ends[-1] if turn_ends else 0
        del out.ids[cut:], out.mask[cut:], out.clips[n_agent:]
    finally:
        try:
            await sim.close()
        except Exception:
            pass
    return out


def synthetic_dialogues(scenarios: Sequence[Scenario], sim_cfg: Mapping[str, Any], tokenizer, sample_rate: int,
                        seed: int, open_think: bool = True, user_text_in_prompt: bool = True,
                        system_prompt: str = "", max_turns: int = 3, think_budget: int = 32,
                        max_new_tokens: int = 64, concurrency: int = 16):
    """One teacher dialogue per scenario (in order) against the configured simulator.

    Returns ``[(Sample, loss_mask)]``: the dialogue as one scored sequence (``prompt_ids = ids[:1]``, the
    rest as completion, as ``learner.policy.trajectory_sample``) and a 0/1 list over its completion ids, 1
    on the teacher's policy tokens. Dialogues whose simulator failed before any agent turn are left out.
    """
    from learner.policy import Sample

    chat = ChatFormat(tokenizer)
    make_sim = simulator_factory(_plain(sim_cfg), sample_rate)

    async def run_all():
        sem = asyncio.Semaphore(max(1, int(concurrency)))

        async def one(i, sc):
            async with sem:
                rng = random.Random(f"{seed}:{i}")  # independent of the order dialogues finish in
                return await _one_dialogue(make_sim, sc, chat, rng, sample_rate, open_think, user_text_in_prompt,
                                           system_prompt, max_turns, think_budget, max_new_tokens)

        return await asyncio.gather(*(one(i, sc) for i, sc in enumerate(scenarios)))

    built = asyncio.run(run_all())
    out, errors = [], [b.error for b in built if b.error]
    for b in built:
        if 1 not in b.mask:
            continue
        out.append((Sample(prompt_ids=b.ids[:1], completion_ids=b.ids[1:], audio=b.clips), b.mask[1:]))
    if errors:
        _log(f"{len(errors)} of {len(built)} dialogues ended by a simulator fault, e.g. {errors[0]}")
    if not out:
        raise RuntimeError(f"no synthetic dialogue has an agent turn ({len(errors)} simulator faults)")
    return out


def first_user_prompts(scenarios: Sequence[Scenario], sim_cfg: Mapping[str, Any], tokenizer, sample_rate: int,
                       open_think: bool = True, user_text_in_prompt: bool = True, system_prompt: str = ""):
    """The rollout's first-turn prompt of each scenario (``Sample`` with empty completion): to sample from."""
    from learner.policy import Sample

    chat = ChatFormat(tokenizer)
    make_sim = simulator_factory(_plain(sim_cfg), sample_rate)

    async def one(sc):
        sim = make_sim()
        try:
            user = await sim.start(sc)
        finally:
            await sim.close()
        ids = (chat.system_turn(system_prompt) if system_prompt else []) + chat.user_turn(
            user.text if user_text_in_prompt else "", num_audio=1) + chat.assistant_prefix(open_think)
        return Sample(ids, [], [AudioClip.from_float(user.audio, user.sample_rate).to_float()])

    async def run_all():
        return await asyncio.gather(*(one(sc) for sc in scenarios))

    return asyncio.run(run_all())


# -- audio embeddings computed once (the audio tower is frozen during the cold start) ----------------------
class _FrozenAudio:
    """Stands in for ``PolicyModel.frontend``: each clip's embeddings computed once, without gradient.
    Keyed by the clip object (kept alive here), so pass the same arrays every time."""

    def __init__(self, frontend):
        self.frontend = frontend
        self.cache: Dict[int, Tuple[np.ndarray, Any]] = {}

    def __call__(self, clips):
        import torch

        todo = [c for c in clips if id(c) not in self.cache]
        if todo:
            with torch.no_grad():
                for c, e in zip(todo, self.frontend(todo)):
                    self.cache[id(c)] = (c, e.detach())
        return [self.cache[id(c)][1] for c in clips]

    def __getattr__(self, name):
        return getattr(self.frontend, name)


class _frozen_audio:
    """Context: the policy's audio tower and projector frozen, their outputs cached per clip."""

    def __init__(self, policy):
        self.policy = policy

    def __enter__(self):
        m = self.policy.model.model
        self.params = [p for mod in (m.audio_tower, m.multi_modal_projector) for p in mod.parameters()]
        self.flags = [p.requires_grad for p in self.params]
        for p in self.params:
            p.requires_grad_(False)
        self.frontend = self.policy.frontend
        self.policy.frontend = _FrozenAudio(self.frontend)
        return self

    def __exit__(self, *exc):
        self.policy.frontend = self.frontend
        for p, f in zip(self.params, self.flags):
            p.requires_grad_(f)


# -- sampling check --------------------------------------------------------------------------------------
def sample_format_rate(policy, prompts, samples_per_prompt: int = 1, max_new_tokens: int = 48,
                       think_budget: int = 32, seed: int = 0, batch_size: int = 32,
                       max_examples: int = 6) -> Dict[str, Any]:
    """Samples one agent turn per prompt (x ``samples_per_prompt``) from the policy's sampling distribution
    (``forward_logits``: its temperature, structural tokens masked) and checks the format.

    A turn is well formed when it has ``</think>`` within ``think_budget`` tokens, then a reply carrying a
    known style tag (``parse_style``), then ``<|im_end|>`` within ``max_new_tokens``. Returns rates, the
    style distribution of the well-formed turns, and a few decoded examples.
    """
    import torch

    from learner.policy import Sample

    tok = policy.tokenizer
    chat = ChatFormat(tok)
    end_think = tok.convert_tokens_to_ids(END_THINK)
    pad = tok.convert_tokens_to_ids(ENDOFTEXT)
    gen = torch.Generator().manual_seed(int(seed))
    rows = [p for p in prompts for _ in range(samples_per_prompt)]
    outs: List[List[int]] = [[] for _ in rows]
    was_training = policy.model.training
    policy.model.eval()
    with _frozen_audio(policy), torch.no_grad():
        for start in range(0, len(rows), batch_size):
            live = list(range(start, min(start + batch_size, len(rows))))
            for _ in range(max_new_tokens):
                if not live:
                    break
                # A trailing pad: forward_logits drops the last position, so the real last token keeps its logits.
                samples = [Sample(list(rows[i].prompt_ids) + list(rows[i].completion_ids), outs[i] + [pad],
                                  rows[i].audio) for i in live]
                batch = policy.build_batch(samples)
                logits = policy.forward_logits(batch)
                last = torch.stack([logits[j, pos[-1] - 1] for j, pos in enumerate(batch["completion_pos"])])
                nxt = torch.multinomial(torch.softmax(last, -1), 1, generator=gen)[:, 0].tolist()
                still = []
                for i, t in zip(live, nxt):
                    outs[i].append(int(t))
                    if t != chat.im_end:
                        still.append(i)
                live = still
    policy.model.train(was_training)

    n_ok = n_think = n_think_budget = n_tag = n_end = n_lead = 0
    styles: Counter = Counter()
    examples = []
    for g in outs:
        ended = chat.im_end in g
        body = g[:g.index(chat.im_end)] if ended else g
        has_think = end_think in body
        k = body.index(end_think) if has_think else -1
        reply = tok.decode(body[k + 1:], skip_special_tokens=True).strip() if has_think else ""
        style, _ = parse_style(reply)
        n_end += ended
        n_think += has_think
        n_think_budget += has_think and k < think_budget
        n_tag += style is not None
        n_lead += style is not None and reply.startswith("[")
        if ended and has_think and k < think_budget and style is not None:
            n_ok += 1
            styles[style] += 1
        if len(examples) < max_examples:
            examples.append(tok.decode(g, skip_special_tokens=False))
    n = max(1, len(outs))
    counts = {s: styles.get(s, 0) for s in _STYLES}
    p = np.array(list(counts.values()), float)
    p = p / p.sum() if p.sum() else p
    entropy = float(-(p[p > 0] * np.log(p[p > 0])).sum()) / np.log(len(_STYLES)) if p.sum() else 0.0
    return {"n": len(outs), "format_rate": n_ok / n, "think_rate": n_think / n, "think_in_budget_rate":
            n_think_budget / n, "tag_rate": n_tag / n, "tag_leads_rate": n_lead / n, "end_rate": n_end / n,
            "mean_tokens": float(np.mean([len(g) for g in outs])) if outs else 0.0,
            "styles": counts, "style_entropy": entropy, "max_style_share": float(p.max()) if p.sum() else 0.0,
            "examples": examples}


# -- training --------------------------------------------------------------------------------------------
def _loss_mask(batch, masks, like):
    import torch

    m = torch.zeros_like(like)
    for i, (pos, mk) in enumerate(zip(batch["completion_pos"], masks)):
        m[i, torch.tensor(pos, dtype=torch.long) - 1] = torch.tensor(mk, dtype=like.dtype)
    return m


def _nll(policy, data, batch_size: int) -> float:
    import torch

    tot, cnt = 0.0, 0.0
    with torch.no_grad():
        for s in range(0, len(data), batch_size):
            chunk = data[s:s + batch_size]
            batch = policy.build_batch([d[0] for d in chunk])
            logp = policy.forward_logprobs(batch)
            m = _loss_mask(batch, [d[1] for d in chunk], logp)
            tot += float(-(logp * m).sum())
            cnt += float(m.sum())
    return tot / max(cnt, 1.0)


def _dialogue_options(cfg: Mapping[str, Any]) -> Dict[str, Any]:
    return {"open_think": bool(cfg.get("open_think", True)),
            "user_text_in_prompt": bool(cfg.get("user_text_in_prompt", True)),
            "system_prompt": str(cfg.get("system_prompt", "") or ""),
            "max_turns": int(cfg.get("max_turns", 3)),
            "think_budget": int(cfg.get("think_budget", 32)),
            "max_new_tokens": int(cfg.get("max_new_tokens", 64))}


def train_cold_start(model_path, out_dir, scenarios: Sequence[Scenario], sim_cfg: Mapping[str, Any],
                     cfg: Mapping[str, Any]) -> Dict[str, Any]:
    """Supervised cold start of the policy at ``model_path``; the result is saved to ``out_dir``.

    ``cfg``: ``dialogues`` (synthetic dialogues, scenarios cycled), ``epochs``, ``lr``, ``batch_size``,
    ``seed``; optional ``open_think``, ``user_text_in_prompt``, ``system_prompt``, ``max_turns``,
    ``think_budget``, ``max_new_tokens`` (the rollout's settings, so the layout matches),
    ``weight_decay`` (0), ``schedule`` ("cosine": warm-up over ``warmup`` (0.1) of the steps, then cosine
    down to lr/10; or "constant"), ``train_audio`` (False: the audio tower stays as it is -- nothing here is about
    hearing), ``eval_prompts`` (32 held-out first turns sampled once each after training; 0: skip).
    AdamW in fp32, mean NLL over teacher tokens. Writes ``out_dir/cold_start.json`` and returns it.
    """
    import torch

    from learner.policy import PolicyModel

    t0 = time.perf_counter()
    c = {**DEFAULTS, **_plain(cfg)}
    opts = _dialogue_options(c)
    n_dialogues, epochs, lr = int(c["dialogues"]), int(c["epochs"]), float(c["lr"])
    batch_size, seed = int(c["batch_size"]), int(c["seed"])
    n_eval = int(c.get("eval_prompts", 32))
    if not scenarios:
        raise ValueError("cold start needs at least one scenario")
    torch.manual_seed(seed)
    policy = PolicyModel(model_path, device="cpu", dtype="float32", temperature=1.0)
    tok = policy.tokenizer
    banned = set(structural_token_ids(tok))
    for name in (END_THINK, "<|im_end|>"):
        if tok.convert_tokens_to_ids(name) in banned:
            raise ValueError(f"{name} is a banned (structural) token: the policy could never emit the format")

    chosen = [scenarios[i % len(scenarios)] for i in range(n_dialogues)]
    _log(f"generating {n_dialogues} teacher dialogues against {sim_cfg.get('_target_')}")
    data = synthetic_dialogues(chosen, sim_cfg, tok, policy.sample_rate, seed, **opts)
    synth_s = time.perf_counter() - t0
    n_tokens = sum(len(s.completion_ids) for s, _ in data)
    n_policy = sum(sum(m) for _, m in data)
    _log(f"{len(data)} dialogues, {n_tokens} tokens ({n_policy} teacher tokens) in {synth_s:.1f}s")

    train_audio = bool(c.get("train_audio", False))
    frozen = None if train_audio else _frozen_audio(policy).__enter__()
    params = [p for p in policy.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=float(c.get("weight_decay", 0.0)))
    # Similar lengths batched together (less padding); batches shuffled every epoch.
    # ~ expanded length: tokens plus one audio embedding per 640 samples (40 ms)
    by_len = sorted(range(len(data)),
                    key=lambda i: len(data[i][0].completion_ids) + sum(len(a) for a in data[i][0].audio) // 640)
    batches = [by_len[s:s + batch_size] for s in range(0, len(by_len), batch_size)]
    total_steps = max(1, epochs * len(batches))
    warmup = int(float(c.get("warmup", 0.1)) * total_steps)
    schedule = str(c.get("schedule", "cosine"))
    if schedule not in ("cosine", "constant"):
        raise ValueError(f"cold_start.schedule={schedule!r}: expected 'cosine' or 'constant'")

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        if schedule == "constant":
            return lr
        frac = (step - warmup) / max(1, total_steps - warmup)
        return lr * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * frac)))  # cosine down to lr / 10

    probe = data[:min(16, len(data))]
    policy.model.eval()
    nll_before = _nll(policy, probe, batch_size)
    _log(f"teacher-token NLL before: {nll_before:.3f}")
    order_rng = random.Random(seed)
    losses, t1 = [], time.perf_counter()
    policy.model.train()
    step = 0
    for epoch in range(epochs):
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
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            opt.step()
            step += 1
            tot += float(loss.detach()) * float(m.sum())
            cnt += float(m.sum())
        losses.append(tot / max(cnt, 1.0))
        _log(f"epoch {epoch + 1}/{epochs}: NLL {losses[-1]:.3f} ({time.perf_counter() - t1:.1f}s)")
    train_s = time.perf_counter() - t1
    policy.model.eval()
    nll_after = _nll(policy, probe, batch_size)
    if frozen is not None:
        frozen.__exit__(None, None, None)

    fmt: Dict[str, Any] = {}
    eval_s = 0.0
    if n_eval > 0:
        t2 = time.perf_counter()
        # First turns of scenarios the training did not use, when there are any.
        held = [scenarios[(n_dialogues + i) % len(scenarios)] for i in range(n_eval)]
        prompts = first_user_prompts(held, sim_cfg, tok, policy.sample_rate, opts["open_think"],
                                     opts["user_text_in_prompt"], opts["system_prompt"])
        fmt = sample_format_rate(policy, prompts, max_new_tokens=48, think_budget=opts["think_budget"],
                                 seed=seed + 1)
        eval_s = time.perf_counter() - t2
        _log(f"sampled format rate {fmt['format_rate']:.2f} over {fmt['n']} turns, styles {fmt['styles']}")

    out = Path(out_dir)
    policy.save_pretrained(out)
    result = {"version": COLD_START_VERSION, "config": c, "sim_cfg": _plain(sim_cfg), "model_path": str(model_path),
              "dialogues": len(data), "tokens": n_tokens, "teacher_tokens": n_policy, "losses": losses,
              "nll_before": nll_before, "nll_after": nll_after, "format": fmt,
              "wall_s": {"synthesis": synth_s, "train": train_s, "eval": eval_s,
                         "total": time.perf_counter() - t0}}
    (out / "cold_start.json").write_text(json.dumps(result, indent=2, default=str))
    _log(f"saved to {out} in {result['wall_s']['total']:.1f}s")
    return result


# -- cache -----------------------------------------------------------------------------------------------
def _plain(d: Mapping[str, Any]) -> Dict[str, Any]:
    if not isinstance(d, dict):
        try:
            from omegaconf import OmegaConf

            if OmegaConf.is_config(d):
                return OmegaConf.to_container(d, resolve=True)
        except ImportError:
            pass
    return json.loads(json.dumps(dict(d), default=str))


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


def cold_start_key(model_path, scenarios_key: str, sim_cfg: Mapping[str, Any], cfg: Mapping[str, Any]) -> str:
    blob = json.dumps({"v": COLD_START_VERSION, "model": _model_fingerprint(model_path),
                       "cfg": {**DEFAULTS, **_plain(cfg)}, "scenarios": str(scenarios_key), "sim": _plain(sim_cfg)},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _valid(target: Path, key: str) -> bool:
    try:
        return json.loads((target / "cold_start.json").read_text()).get("key") == key
    except (OSError, ValueError):
        return False


def ensure_cold_start(model_path, scenarios_key: str, sim_cfg: Mapping[str, Any], cfg: Mapping[str, Any],
                      cache_dir, scenarios: Optional[Sequence[Scenario]] = None) -> Path:
    """The cold-started policy directory for these inputs, trained once and reused (e.g. by a Hydra multirun).

    Keyed by the model's weights, ``cfg``, ``scenarios_key`` (names the scenario set) and ``sim_cfg``.
    ``scenarios``: the set itself; default: ``sim_cfg``'s ``scenarios`` file, else
    ``simulator.scenarios.generate_scenarios`` from its ``num_scenarios``/``seed``/``max_turns``. Built in a
    temporary folder and renamed into place; a file lock serialises processes on one machine, and a process
    that loses a rename race (no shared lock, e.g. another machine) uses the winner's.
    """
    cache = Path(os.path.expanduser(str(cache_dir)))
    cache.mkdir(parents=True, exist_ok=True)
    key = cold_start_key(model_path, scenarios_key, sim_cfg, cfg)
    target = cache / f"cold-start-{key}"
    if _valid(target, key):
        _log(f"reusing {target}")
        return target
    with open(cache / f".cold-start-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _valid(target, key):
            _log(f"reusing {target}")
            return target
        if scenarios is None:
            from simulator.scenarios import generate_scenarios, read_jsonl

            sc = _plain(sim_cfg)
            scenarios = read_jsonl(sc["scenarios"]) if sc.get("scenarios") else generate_scenarios(
                int(sc.get("num_scenarios", 1000)), int(sc.get("seed", 0)), int(sc.get("max_turns", 3)))
        tmp = Path(tempfile.mkdtemp(prefix=f".cold-start-{key}-", dir=cache))
        try:
            result = train_cold_start(model_path, tmp, scenarios, sim_cfg, cfg)
            result["key"] = key
            result["scenarios_key"] = str(scenarios_key)
            (tmp / "cold_start.json").write_text(json.dumps(result, indent=2, default=str))
            if target.exists() and not _valid(target, key):
                shutil.rmtree(target, ignore_errors=True)  # a broken leftover
            try:
                os.rename(tmp, target)
            except OSError:
                if not _valid(target, key):  # another process won the race with a valid result: use it
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


# -- CLI -------------------------------------------------------------------------------------------------
def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    ap = argparse.ArgumentParser(description="Supervised format cold start of the tiny policy.")
    ap.add_argument("--out", required=True, help="output directory (a policy transformers and vLLM load)")
    ap.add_argument("--model", help="policy directory (default: the tiny policy, built on demand)")
    ap.add_argument("--cache-dir", default=os.environ.get("ANTIPHON_CACHE", "~/.cache/antiphon"))
    for k, v in DEFAULTS.items():
        ap.add_argument(f"--{k.replace('_', '-')}", type=type(v), default=v)
    ap.add_argument("--num-scenarios", type=int, default=1000)
    ap.add_argument("--scenario-seed", type=int, default=0)
    ap.add_argument("--max-turns", type=int, default=3)
    ap.add_argument("--voice", default="espeak")
    ap.add_argument("--eval-prompts", type=int, default=32)
    ap.add_argument("--train-audio", action="store_true")
    args = ap.parse_args(argv)

    from simulator.scenarios import generate_scenarios

    if args.model:
        model_path = Path(args.model)
    else:
        from antiphon.config.schema import TinyModelConfig
        from antiphon.model.tiny import ensure_tiny_policy

        model_path = ensure_tiny_policy(dataclasses.asdict(TinyModelConfig()), args.cache_dir)
    sim_cfg = {"_target_": "simulator.scripted.ScriptedSimulator", "voice": args.voice, "seed": args.scenario_seed,
               "num_scenarios": args.num_scenarios, "max_turns": args.max_turns}
    scenarios = generate_scenarios(args.num_scenarios, args.scenario_seed, args.max_turns)
    cfg = {k: getattr(args, k) for k in DEFAULTS}
    cfg.update(max_turns=args.max_turns, eval_prompts=args.eval_prompts, train_audio=args.train_audio)
    result = train_cold_start(model_path, args.out, scenarios, sim_cfg, cfg)
    print(json.dumps({k: result[k] for k in ("losses", "nll_before", "nll_after", "wall_s")}
                     | {"format": {k: v for k, v in result["format"].items() if k != "examples"}}, indent=2))
    return result


if __name__ == "__main__":
    main()
