"""The learner's policy: log-probs of the sampling distribution, batch-invariant, structural tokens masked."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from antiphon.model.chat import ChatFormat
from antiphon.model.tokens import structural_token_ids
from learner.policy import PolicyModel, Sample


@pytest.fixture(scope="module")
def policy(tiny_path):
    return PolicyModel(tiny_path)


def _samples(policy):
    chat = ChatFormat(policy.tokenizer)
    rng = np.random.default_rng(0)
    clip = lambda s: (0.1 * rng.standard_normal(int(s * 16000))).astype(np.float32)  # noqa: E731
    return [
        Sample(chat.user_turn("hello", 1) + chat.assistant_prefix(True), chat.text("calm</think> hi"), [clip(1.3)]),
        Sample(chat.user_turn("no audio here") + chat.assistant_prefix(), chat.text("sure, fine.")),
        Sample(chat.user_turn("two clips", 2) + chat.assistant_prefix(True), chat.text("ok"), [clip(0.5), clip(2.0)]),
    ]


def test_batched_logprobs_equal_one_at_a_time(policy):
    samples = _samples(policy)
    batched = policy.completion_logprobs(samples)
    for s, b in zip(samples, batched):
        single = policy.completion_logprobs([s])[0]
        assert len(single) == len(s.completion_ids)
        np.testing.assert_allclose(b, single, atol=1e-5)


def test_audio_changes_the_logprobs(policy):
    s = _samples(policy)[0]
    silent = Sample(s.prompt_ids, s.completion_ids, [np.zeros_like(s.audio[0])])
    a, b = policy.completion_logprobs([s, silent])
    assert np.abs(a - b).max() > 1e-4


def test_structural_tokens_have_zero_probability(policy):
    batch = policy.build_batch(_samples(policy)[:1])
    with torch.no_grad():
        masked = policy.forward_logits(batch)
    probs = torch.softmax(masked, -1)
    banned = structural_token_ids(policy.tokenizer)
    assert float(probs[..., banned].max()) == 0.0
    torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:2]))
    # Without the mask the model does put mass on them: the mask is what keeps them out.
    raw = masked.clone()
    raw[..., banned] = 0.0
    assert float(torch.softmax(raw, -1)[..., banned].sum(-1).min()) > 0


def test_learner_matches_plain_transformers_forward(policy, tiny_path):
    """The trimmed audio path computes the same policy as transformers' own full-window Qwen2-Audio."""
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(tiny_path)
    for s in _samples(policy):
        text = policy.tokenizer.decode(s.prompt_ids + s.completion_ids)
        inputs = proc(text=text, audio=s.audio or None, sampling_rate=16000, return_tensors="pt")
        with torch.no_grad():
            logits = policy.model(**inputs).logits[0, :-1].float()
        logits = logits.masked_fill(policy.banned, float("-inf"))
        logp = torch.log_softmax(logits, -1).gather(-1, inputs["input_ids"][0, 1:, None])[:, 0]
        n = len(s.completion_ids)
        np.testing.assert_allclose(policy.completion_logprobs([s])[0], logp[-n:].numpy(), atol=1e-5)


def test_temperature_scales_the_distribution(tiny_path):
    s = _samples(PolicyModel(tiny_path))[1]
    cold = PolicyModel(tiny_path, temperature=0.5).completion_logprobs([s])[0]
    warm = PolicyModel(tiny_path, temperature=1.0).completion_logprobs([s])[0]
    assert not np.allclose(cold, warm)


def test_state_dict_for_rollout_round_trips(policy, tmp_path):
    from transformers import Qwen2AudioForConditionalGeneration

    out = policy.save_pretrained(tmp_path / "ckpt")
    again = PolicyModel(out)
    s = _samples(policy)
    np.testing.assert_allclose(np.concatenate(again.completion_logprobs(s)),
                               np.concatenate(policy.completion_logprobs(s)), atol=0)
    assert isinstance(again.model, Qwen2AudioForConditionalGeneration)
