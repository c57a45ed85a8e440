"""The learner's generation engine: the rollout's sampling distribution over the transformers policy."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from antiphon.generation import GenerationRequest
from antiphon.model.chat import ChatFormat
from antiphon.model.tokens import END_THINK


@pytest.fixture(scope="module")
def policy(tiny_path):
    from learner.policy import PolicyModel

    return PolicyModel(tiny_path, temperature=1.3)


@pytest.fixture(scope="module")
def chat(policy):
    return ChatFormat(policy.tokenizer)


def _requests(chat, n=6, max_new_tokens=24, stop=()):
    out = []
    for i in range(n):
        clip = (0.2 * np.sin(np.linspace(0, 300 * (i + 1), 6000 + 2500 * i))).astype(np.float32)
        prompt = chat.user_turn("hello " * (i + 1), num_audio=1) + chat.assistant_prefix(True)
        if i % 2:  # a later turn: two clips, the first one again (as the dialogue loop resends history)
            prompt = prompt + chat.text("ok") + [chat.im_end] + chat.newline + chat.user_turn("and", 1) \
                + chat.assistant_prefix(True)
            out.append(GenerationRequest(f"r{i}", prompt, [clip, clip[:4000].copy()], max_new_tokens, list(stop)))
        else:
            out.append(GenerationRequest(f"r{i}", prompt, [clip], max_new_tokens, list(stop)))
    return out


def _generate(engine, reqs, seeds):
    async def run():
        return await asyncio.gather(*(engine.session(s).generate(r) for s, r in zip(seeds, reqs)))

    return asyncio.run(run())


def test_logprobs_are_the_learners_and_structural_tokens_are_never_sampled(policy, chat):
    """Every sampled token's log-prob is what the learner scores for it (temperature and mask included)."""
    from learner.hf_engine import HFEngine
    from learner.policy import Sample

    reqs = _requests(chat)
    res = _generate(HFEngine(policy, 64), reqs, range(len(reqs)))
    ref = policy.completion_logprobs([Sample(r.prompt_ids, x.token_ids, r.audio) for r, x in zip(reqs, res)])
    for r, x, lp in zip(reqs, res, ref):
        assert len(x.token_ids) == len(x.logprobs) > 0 and x.weight_version == 0
        np.testing.assert_allclose(np.asarray(x.logprobs), lp, atol=1e-4)
        assert not policy.banned[torch.tensor(x.token_ids)].any()


def test_requests_stop_at_their_stop_tokens_or_their_limit(policy, chat):
    from learner.hf_engine import HFEngine

    end_think = policy.tokenizer.convert_tokens_to_ids(END_THINK)
    engine = HFEngine(policy, 64)
    for x in _generate(engine, _requests(chat, n=8, max_new_tokens=12, stop=[end_think]), range(8)):
        stopped = x.token_ids[-1] in (end_think, chat.im_end)
        assert x.finish_reason == ("stop" if stopped else "length")
        assert len(x.token_ids) <= 12 and not {end_think, chat.im_end} & set(x.token_ids[:-1])
    # No limit in the request: the engine's own.
    req = GenerationRequest("x", chat.user_turn("hi", 0) + chat.assistant_prefix(True), [], None, [])
    (x,) = _generate(HFEngine(policy, 5), [req], [0])
    assert len(x.token_ids) <= 5


def test_a_dialogue_samples_the_same_alone_or_batched_with_others(policy, chat):
    """Each session draws from its own generator: batching (or order) does not change what it samples."""
    from learner.hf_engine import HFEngine

    reqs = _requests(chat)
    engine = HFEngine(policy, 64)
    together = _generate(engine, reqs, [10 + i for i in range(len(reqs))])
    alone = [_generate(HFEngine(policy, 64), [r], [10 + i])[0] for i, r in enumerate(reqs)]
    assert [x.token_ids for x in together] == [x.token_ids for x in alone]
    again = _generate(engine, reqs[::-1], [10 + i for i in range(len(reqs))][::-1])[::-1]
    assert [x.token_ids for x in together] == [x.token_ids for x in again]


def test_a_request_with_the_wrong_number_of_clips_fails_clearly(policy, chat):
    from learner.hf_engine import HFEngine

    req = GenerationRequest("bad", chat.user_turn("hi", num_audio=1) + chat.assistant_prefix(True), [], 4, [])
    with pytest.raises(ValueError, match="1 <|AUDIO|> placeholders but audio has 0 clips"):
        _generate(HFEngine(policy, 8), [req], [0])
