"""The supervised cold start: the rollout's token layout, the loss mask, training, the cache, the sampled format."""
from __future__ import annotations

import asyncio
import json
import random
from collections import Counter

import numpy as np
import pytest

from antiphon.dialogue import simulator_factory
from antiphon.model.chat import ChatFormat
from antiphon.model.tokens import END_THINK, structural_token_ids
from antiphon.style import STYLE_TAGS, parse_style
from learner import cold_start as cs
from simulator.scenarios import generate_scenarios

SIM = {"_target_": "simulator.scripted.ScriptedSimulator", "voice": "espeak", "seed": 0, "num_scenarios": 16,
       "max_turns": 3}


@pytest.fixture(scope="module")
def tokenizer(tiny_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_path)


@pytest.fixture(scope="module")
def chat(tokenizer):
    return ChatFormat(tokenizer)


def _runs(mask):
    """[start, end) spans of consecutive 1s."""
    out, start = [], None
    for i, m in enumerate(list(mask) + [0]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            out.append((start, i))
            start = None
    return out


def test_teacher_draws_styles_and_answers_at_random(chat):
    rng = random.Random(0)
    styles, answers = Counter(), Counter()
    end_think = chat.tokenizer.convert_tokens_to_ids(END_THINK)
    for i in range(3500):
        q = "what is 2 plus 3?" if i % 2 else None
        reasoning, reply = cs.teacher_turn(rng, q)
        style, spoken = parse_style(reply)
        assert reply.startswith(f"[{style}] ") and style in STYLE_TAGS
        styles[style] += 1
        # Format only: the reasoning names no emotion and computes nothing.
        assert not any(e in reasoning for e in STYLE_TAGS) and not any(ch.isdigit() for ch in reasoning)
        if q:
            assert "The answer is" in spoken
            answers[int(spoken.rsplit(" ", 1)[1].rstrip("."))] += 1
        else:
            assert "answer is" not in spoken
        think, answer = cs.teacher_turn_ids(chat, reasoning, reply)
        assert think[-1] == end_think and end_think not in think[:-1] and answer[-1] == chat.im_end
        assert len(think) <= 32 and len(think) + len(answer) <= 40  # the rollout: think budget 32, 64 per turn
    assert set(styles) == set(STYLE_TAGS) and max(styles.values()) / min(styles.values()) < 1.3
    assert set(answers) == set(range(19))


def test_format_tokens_are_not_banned(tokenizer):
    banned = set(structural_token_ids(tokenizer))
    assert tokenizer.convert_tokens_to_ids(END_THINK) not in banned
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") not in banned


@pytest.mark.parametrize("opts", [{}, {"system_prompt": "You are kind.", "user_text_in_prompt": False}])
def test_synthetic_layout_equals_the_rollout(tokenizer, chat, opts):
    """The same simulator answered by a scripted engine replaying the teacher's tokens through the rollout's
    Dialogue gives exactly the synthetic ids, policy mask and clips."""
    from actors.dialogue import Dialogue, DialogueSettings
    from learner.policy import trajectory_sample
    from support import ScriptedEngine

    scenarios = generate_scenarios(4, seed=3, max_turns=3)
    data = cs.synthetic_dialogues(scenarios, SIM, tokenizer, 16000, seed=1, **opts)
    assert len(data) == len(scenarios)
    end_think = tokenizer.convert_tokens_to_ids(END_THINK)
    asked = 0
    for scenario, (sample, mask) in zip(scenarios, data):
        replies = []
        for a, b in _runs(mask):
            turn = sample.completion_ids[a:b]
            k = turn.index(end_think) + 1
            replies += [turn[:k], turn[k:]]  # the reasoning request (stopped at </think>), then the reply request
        asked += "The answer is" in tokenizer.decode(sample.completion_ids)
        engine = ScriptedEngine(replies)
        settings = DialogueSettings(max_turns=3, think_budget=32, max_new_tokens=64, open_think=True,
                                    simulator_timeout_s=30.0, **opts)
        make_sim = simulator_factory(SIM, 16000)
        traj = asyncio.run(Dialogue(engine, make_sim(), scenario, chat, None, settings).run())
        assert traj is not None and not engine.replies  # every teacher piece was asked for
        ref = trajectory_sample(traj)
        assert ref.prompt_ids == sample.prompt_ids and ref.completion_ids == sample.completion_ids
        assert traj.policy_mask[1:].tolist() == mask
        assert len(ref.audio) == len(sample.audio)
        for x, y in zip(ref.audio, sample.audio):
            np.testing.assert_array_equal(x, y)
        think_requests = engine.requests[0::2]
        assert all(r.max_new_tokens == 32 and end_think in r.stop_token_ids for r in think_requests)
    assert asked  # the question path was exercised


def test_loss_mask_covers_exactly_the_teacher_tokens(tokenizer, chat):
    scenarios = generate_scenarios(6, seed=5, max_turns=3)
    data = cs.synthetic_dialogues(scenarios, SIM, tokenizer, 16000, seed=0, system_prompt="Be brief.")
    end_think = tokenizer.convert_tokens_to_ids(END_THINK)
    template = {chat.im_start, chat.audio_bos, chat.audio, chat.audio_eos, chat.think}
    for sample, mask in data:
        ids = sample.completion_ids
        assert len(mask) == len(ids) and set(mask) <= {0, 1}
        runs = _runs(mask)
        assert len(runs) == len(sample.audio) == chat.count_audio(sample.prompt_ids + ids)  # one per user turn
        for a, b in runs:
            turn = ids[a:b]
            assert ids[a - 1] == chat.think  # right after the assistant prefix
            assert ids[b:b + len(chat.newline)] == chat.newline  # the glue after <|im_end|> is not trained
            assert turn[-1] == chat.im_end and turn.count(chat.im_end) == 1 and turn.count(end_think) == 1
            assert not template & set(turn)
            k = turn.index(end_think)
            style, _ = parse_style(tokenizer.decode(turn[k + 1:-1]))
            assert style in STYLE_TAGS
        unmasked = [t for t, m in zip(ids, mask) if not m]
        assert chat.count_audio(unmasked) == len(sample.audio)
        # Nothing of a user turn is trained; the dialogue ends with the last agent turn.
        assert ids[runs[-1][1]:] == chat.newline


def test_training_lowers_nll_saves_a_policy_and_the_cache_is_reused(tiny_path, tmp_path, monkeypatch):
    import torch

    from learner.policy import PolicyModel

    scenarios = generate_scenarios(8, seed=0, max_turns=3)
    cfg = {"dialogues": 8, "epochs": 3, "lr": 3e-3, "batch_size": 4, "seed": 0, "eval_prompts": 2}
    path = cs.ensure_cold_start(str(tiny_path), "gen:8:0", SIM, cfg, tmp_path / "cache", scenarios=scenarios)
    info = json.loads((path / "cold_start.json").read_text())
    assert info["key"] == cs.cold_start_key(str(tiny_path), "gen:8:0", SIM, cfg)
    assert len(info["losses"]) == 3 and info["nll_after"] < info["nll_before"] - 0.5
    assert info["dialogues"] == 8 and info["format"]["n"] == 2 and info["wall_s"]["total"] > 0

    base, tuned = PolicyModel(tiny_path), PolicyModel(path)
    b, t = base.model.state_dict(), tuned.model.state_dict()
    assert not torch.equal(b["lm_head.weight"], t["lm_head.weight"])
    frozen = [k for k in b if "audio_tower" in k or "multi_modal_projector" in k]
    assert frozen and all(torch.equal(b[k], t[k]) for k in frozen)  # the cold start does not touch hearing

    # Same inputs: the cached result, no retraining. Other inputs: another key.
    monkeypatch.setattr(cs, "train_cold_start", lambda *a, **k: pytest.fail("retrained"))
    again = cs.ensure_cold_start(str(tiny_path), "gen:8:0", SIM, dict(cfg), tmp_path / "cache", scenarios=scenarios)
    assert again == path
    assert cs.cold_start_key(str(tiny_path), "gen:8:1", SIM, cfg) != info["key"]
    assert cs.cold_start_key(str(tiny_path), "gen:8:0", SIM, {**cfg, "lr": 1e-3}) != info["key"]
    assert cs.cold_start_key(str(tiny_path), "gen:8:0", {**SIM, "voice": "piper"}, cfg) != info["key"]


def test_a_process_losing_the_rename_race_uses_the_winners_result(tiny_path, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    key = cs.cold_start_key(str(tiny_path), "k", SIM, {})
    target = cache / f"cold-start-{key}"

    def fake_train(model_path, out_dir, scenarios, sim_cfg, cfg):
        # Meanwhile another process (on another machine: no shared lock) finished first.
        target.mkdir(parents=True)
        (target / "cold_start.json").write_text(json.dumps({"key": key, "winner": True}))
        result = {"losses": []}
        (out_dir / "cold_start.json").write_text(json.dumps(result))
        return result

    monkeypatch.setattr(cs, "train_cold_start", fake_train)
    path = cs.ensure_cold_start(str(tiny_path), "k", SIM, {}, cache, scenarios=generate_scenarios(1))
    assert path == target and json.loads((path / "cold_start.json").read_text())["winner"]
    assert [p.name for p in cache.iterdir() if p.is_dir()] == [target.name]  # the loser's folder is gone


@pytest.mark.slow
def test_default_cold_start_emits_the_format_when_sampled(tiny_path, tmp_path):
    """Default recipe (~1 min on 2 cores): sampled at temperature 1 the policy writes reasoning, </think>,
    a style tag and <|im_end|>, with styles spread over the tags (the teacher's were uniform)."""
    from learner.policy import PolicyModel

    scenarios = generate_scenarios(1000, seed=0, max_turns=3)
    result = cs.train_cold_start(tiny_path, tmp_path / "cold", scenarios, SIM, {**cs.DEFAULTS, "eval_prompts": 0})
    assert result["nll_after"] < 0.5
    policy = PolicyModel(tmp_path / "cold")  # the saved checkpoint itself
    prompts = cs.first_user_prompts(generate_scenarios(48, seed=99, max_turns=3), SIM, policy.tokenizer, 16000)
    fmt = cs.sample_format_rate(policy, prompts, samples_per_prompt=2, seed=3)
    assert fmt["format_rate"] >= 0.8, fmt
    assert fmt["think_in_budget_rate"] >= 0.8 and fmt["end_rate"] >= 0.9
    assert sum(v > 0 for v in fmt["styles"].values()) >= 6 and fmt["max_style_share"] <= 0.35, fmt["styles"]
