"""The supervised cold start: the rollout's token layout, the loss mask, training, the cache, the sampled format."""
from __future__ import annotations

import asyncio
import dataclasses
import json
import random
from collections import Counter

import numpy as np
import pytest

from antiphon.dialogue_loop import Dialogue, DialogueSettings
from antiphon.config.schema import ColdStartConfig
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


def _replay(traj, scenario, chat, settings):
    """The same dialogue held by the rollout's loop with a scripted engine that returns, request by request,
    exactly the tokens the cold start's teacher produced (what a rollout worker would record had its
    engine sampled them)."""
    from support import ScriptedEngine

    end_think = chat.tokenizer.convert_tokens_to_ids(END_THINK)
    replies = []
    for a, b in _runs(traj.policy_mask):
        turn = [int(t) for t in traj.token_ids[a:b]]
        k = turn.index(end_think) + 1 if settings.open_think and settings.think_budget > 0 else 0
        replies += [turn[:k], turn[k:]] if k else [turn]  # the reasoning request (stopped at </think>), the reply
    engine = ScriptedEngine(replies)
    make_sim = simulator_factory(SIM, 16000)
    ref = asyncio.run(Dialogue(engine, make_sim(), scenario, chat, None, settings).run())
    return ref, engine


@pytest.mark.parametrize("opts", [{}, {"system_prompt": "You are kind.", "user_text_in_prompt": False},
                                  {"think_budget": 0}])
def test_cold_start_and_rollout_give_the_same_tokens_masks_and_audio(tokenizer, chat, opts):
    """For the same sampled tokens, the cold start's dialogue and a rollout worker's Dialogue driven by a
    scripted engine give identical token ids, loss (policy) masks, turn spans and audio."""
    scenarios = generate_scenarios(4, seed=3, max_turns=3)
    settings = DialogueSettings(**{"max_turns": 3, "think_budget": 32, "max_new_tokens": 64, "open_think": True,
                                   "simulator_timeout_s": 30.0, **opts})
    trajs = cs.teacher_trajectories(scenarios, SIM, tokenizer, settings, seed=1)
    data = cs.synthetic_dialogues(scenarios, SIM, tokenizer, settings, seed=1)
    assert len(trajs) == len(data) == len(scenarios)
    end_think = tokenizer.convert_tokens_to_ids(END_THINK)
    asked = 0
    for scenario, traj, (sample, mask) in zip(scenarios, trajs, data):
        asked += "The answer is" in tokenizer.decode(sample.completion_ids)
        ref, engine = _replay(traj, scenario, chat, settings)
        assert ref is not None and not engine.replies  # every teacher piece was asked for
        np.testing.assert_array_equal(ref.token_ids, traj.token_ids)
        np.testing.assert_array_equal(ref.policy_mask, traj.policy_mask)
        assert [(t.role, t.start, t.end) for t in ref.turns] == [(t.role, t.start, t.end) for t in traj.turns]
        # Every turn the policy saw: the same words and audio. (The user's answer to the last agent turn, a
        # turn without tokens the cold start does not ask the simulator for, is the one that differs.)
        for x, y in zip(ref.turns, traj.turns):
            if x.end == x.start:
                continue
            assert (x.text, x.reasoning, x.emotion) == (y.text, y.reasoning, y.emotion)
            assert (x.audio is None) == (y.audio is None)
            if x.audio is not None:
                np.testing.assert_array_equal(x.audio.to_float(), y.audio.to_float())
        # The training sample is the trajectory's: ids after the first, its policy mask, the user clips heard.
        assert sample.prompt_ids + sample.completion_ids == [int(t) for t in traj.token_ids]
        assert mask == traj.policy_mask[1:].tolist()
        heard = [t.audio.to_float() for t in traj.turns if t.role == "user" and t.end > t.start]
        assert len(sample.audio) == len(heard) == chat.count_audio(sample.prompt_ids + sample.completion_ids)
        for x, y in zip(sample.audio, heard):
            np.testing.assert_array_equal(x, y)
        if settings.think_budget > 0:
            think_requests = engine.requests[0::2]
            assert all(r.max_new_tokens == 32 and end_think in r.stop_token_ids for r in think_requests)
        # The teacher's </think> and <|im_end|> are its own (policy) tokens, never forced ones.
        for a, b in _runs(traj.policy_mask):
            assert traj.token_ids[b - 1] == chat.im_end and end_think in traj.token_ids[a:b].tolist()
    assert asked  # the question path was exercised


def test_the_teacher_dialogues_are_reproducible(tokenizer):
    settings = DialogueSettings(max_turns=3)
    scenarios = generate_scenarios(3, seed=4, max_turns=3)
    a = cs.synthetic_dialogues(scenarios, SIM, tokenizer, settings, seed=2)
    b = cs.synthetic_dialogues(scenarios[::-1], SIM, tokenizer, dataclasses.replace(settings, max_concurrent=1),
                               seed=2)[::-1]
    c = cs.synthetic_dialogues(scenarios, SIM, tokenizer, settings, seed=3)
    ids = lambda data: [s.completion_ids for s, _ in data]  # noqa: E731
    # The rng belongs to the dialogue's index: the same scenario at another index is another draw.
    assert ids(a)[1] == ids(b)[1] and ids(a) != ids(c)


def test_a_teacher_turn_over_the_rollout_budget_is_a_setup_error(tokenizer):
    with pytest.raises(cs.SetupError, match="too long for the rollout budgets"):
        cs.synthetic_dialogues(generate_scenarios(1, seed=0), SIM, tokenizer,
                               DialogueSettings(think_budget=2), seed=0)


def test_loss_mask_covers_exactly_the_teacher_tokens(tokenizer, chat):
    scenarios = generate_scenarios(6, seed=5, max_turns=3)
    data = cs.synthetic_dialogues(scenarios, SIM, tokenizer, DialogueSettings(system_prompt="Be brief."), seed=0)
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
    cfg = ColdStartConfig(dialogues=8, epochs=3, lr=3e-3, batch_size=4, seed=0, eval_prompts=2)
    settings = DialogueSettings()
    path = cs.ensure_cold_start(str(tiny_path), "gen:8:0", SIM, cfg, settings, tmp_path / "cache",
                                scenarios=scenarios)
    info = json.loads((path / "cold_start.json").read_text())
    assert info["key"] == cs.cold_start_key(str(tiny_path), "gen:8:0", SIM, cfg, settings)
    assert len(info["losses"]) == 3 and info["nll_after"] < info["nll_before"] - 0.5
    assert info["dialogues"] == 8 and info["format"]["n"] == 2 and info["wall_s"]["total"] > 0

    base, tuned = PolicyModel(tiny_path), PolicyModel(path)
    b, t = base.model.state_dict(), tuned.model.state_dict()
    assert not torch.equal(b["lm_head.weight"], t["lm_head.weight"])
    frozen = [k for k in b if "audio_tower" in k or "multi_modal_projector" in k]
    assert frozen and all(torch.equal(b[k], t[k]) for k in frozen)  # the cold start does not touch hearing

    # Same inputs: the cached result, no retraining. Other inputs: another key.
    monkeypatch.setattr(cs, "train_cold_start", lambda *a, **k: pytest.fail("retrained"))
    again = cs.ensure_cold_start(str(tiny_path), "gen:8:0", SIM, dataclasses.replace(cfg), DialogueSettings(),
                                 tmp_path / "cache", scenarios=scenarios)
    assert again == path
    # The same config as a plain mapping (a caller not on the dataclasses yet) is the same key.
    assert cs.cold_start_key(str(tiny_path), "gen:8:0", SIM, dataclasses.asdict(cfg), settings) == info["key"]
    assert cs.cold_start_key(str(tiny_path), "gen:8:1", SIM, cfg, settings) != info["key"]
    assert cs.cold_start_key(str(tiny_path), "gen:8:0", SIM, dataclasses.replace(cfg, lr=1e-3), settings) != info["key"]
    assert cs.cold_start_key(str(tiny_path), "gen:8:0", {**SIM, "voice": "piper"}, cfg, settings) != info["key"]
    assert cs.cold_start_key(str(tiny_path), "gen:8:0", SIM, cfg,
                             dataclasses.replace(settings, think_budget=16)) != info["key"]
    # How long to wait for a simulator does not change the data: the same key.
    assert cs.cold_start_key(str(tiny_path), "gen:8:0", SIM, cfg,
                             dataclasses.replace(settings, simulator_timeout_s=99.0)) == info["key"]


def test_a_process_losing_the_rename_race_uses_the_winners_result(tiny_path, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cfg, settings = ColdStartConfig(), DialogueSettings()
    key = cs.cold_start_key(str(tiny_path), "k", SIM, cfg, settings)
    target = cache / f"cold-start-{key}"

    def fake_train(model_path, out_dir, scenarios, sim_cfg, cfg, settings):
        # Meanwhile another process (on another machine: no shared lock) finished first.
        target.mkdir(parents=True)
        (target / "cold_start.json").write_text(json.dumps({"key": key, "winner": True}))
        result = {"losses": []}
        (out_dir / "cold_start.json").write_text(json.dumps(result))
        return result

    monkeypatch.setattr(cs, "train_cold_start", fake_train)
    path = cs.ensure_cold_start(str(tiny_path), "k", SIM, cfg, settings, cache, scenarios=generate_scenarios(1))
    assert path == target and json.loads((path / "cold_start.json").read_text())["winner"]
    assert [p.name for p in cache.iterdir() if p.is_dir()] == [target.name]  # the loser's folder is gone


def test_a_failed_build_leaves_nothing_behind(tiny_path, tmp_path, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(cs, "train_cold_start", boom)
    with pytest.raises(RuntimeError, match="boom"):
        cs.ensure_cold_start(str(tiny_path), "k", SIM, ColdStartConfig(), DialogueSettings(), tmp_path / "cache",
                             scenarios=generate_scenarios(1))
    assert not [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]


def test_frozen_audio_is_a_with_block_that_restores_the_policy(tiny_path):
    from learner.policy import PolicyModel

    policy = PolicyModel(tiny_path)
    frontend = policy.frontend
    with pytest.raises(RuntimeError):
        with cs.frozen_audio(policy):
            assert policy.frontend is not frontend
            assert not any(p.requires_grad for p in policy.model.model.audio_tower.parameters())
            clip = np.zeros(8000, np.float32)
            assert policy.frontend([clip])[0] is policy.frontend([clip])[0]  # computed once per clip
            raise RuntimeError("mid-training failure")
    assert policy.frontend is frontend
    assert all(p.requires_grad for p in policy.model.model.audio_tower.parameters())


def test_the_format_check_counts_only_what_the_policy_sampled(tokenizer, chat):
    """Forced </think> (think budget spent) and forced <|im_end|> (turn budget spent) are not the format."""
    from support import ScriptedEngine

    end_think = tokenizer.convert_tokens_to_ids(END_THINK)
    good = [chat.text("i think") + [end_think], chat.text("[calm] Hello.") + [chat.im_end]]
    no_think = [chat.text("a b c d e f g h i j k l m n o p")[:8], chat.text("[calm] Hello.") + [chat.im_end]]
    no_end = [chat.text("i think") + [end_think], chat.text("[calm] Hello there my friend")[:4]]
    settings = DialogueSettings(max_turns=1, think_budget=8, max_new_tokens=16)
    out = []
    for replies in (good, no_think, no_end):
        traj = asyncio.run(Dialogue(ScriptedEngine(replies), simulator_factory(SIM, 16000)(),
                                    generate_scenarios(1, seed=0)[0], chat, None, settings).run())
        turn = next(t for t in traj.turns if t.role == "assistant")
        out.append(cs.turn_format(chat, traj.token_ids[turn.start:turn.end], traj.policy_mask[turn.start:turn.end],
                                  settings.think_budget))
    assert out[0]["ok"] and out[0]["style"] == "calm"
    assert not out[1]["ok"] and not out[1]["think"] and out[1]["ended"]  # the forced </think> is not counted
    assert not out[2]["ok"] and not out[2]["ended"] and out[2]["think_in_budget"]  # nor the forced <|im_end|>
    summary = cs.format_summary(out)
    assert summary["n"] == 3 and summary["format_rate"] == pytest.approx(1 / 3) and summary["styles"]["calm"] == 1


@pytest.mark.slow
def test_default_cold_start_emits_the_format_when_sampled(tiny_path):
    """The launcher's own cold start (default config, ~1 min on 2 cores, built once per cache: the e2e runs
    and this test share it): sampled at temperature 1 the saved policy writes reasoning, </think>, a style
    tag and <|im_end|>, with styles spread over the tags (the teacher's were uniform)."""
    from antiphon.config import compose, to_dataclass
    from antiphon.launch import cold_start_policy
    from antiphon.run_setup import load_scenarios
    from learner.policy import PolicyModel

    cfg = compose([])
    path = cold_start_policy(cfg, tiny_path, load_scenarios(cfg.simulator, cfg.experiment.seed))
    result = json.loads((path / "cold_start.json").read_text())
    assert result["config"] == dataclasses.asdict(to_dataclass(cfg.learner.cold_start))
    assert result["nll_after"] < 0.5
    policy = PolicyModel(path)  # the saved checkpoint itself
    settings = DialogueSettings.from_config(to_dataclass(cfg.rollout), to_dataclass(cfg.model))
    fmt = cs.sample_format_rate(policy, generate_scenarios(48, seed=99, max_turns=3), SIM, settings,
                                samples_per_prompt=2, seed=3)
    assert fmt["n"] == 96 and fmt["format_rate"] >= 0.8, fmt
    assert fmt["think_in_budget_rate"] >= 0.8 and fmt["end_rate"] >= 0.9
    assert sum(v > 0 for v in fmt["styles"].values()) >= 6 and fmt["max_style_share"] <= 0.35, fmt["styles"]
