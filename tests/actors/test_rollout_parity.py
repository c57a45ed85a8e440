"""Rollout workers (Ray actors owning vLLM engines) against the learner's model: the central invariant.

For the same weights, the behaviour log-probs a worker reports equal the learner's log-probs of the
same tokens and audio -- before and after a versioned weight update.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from antiphon.config import compose, to_dataclass
from antiphon.generation import GenerationRequest
from antiphon.model.chat import ChatFormat
from antiphon.model.tokens import structural_token_ids
from learner.policy import PolicyModel, Sample

pytestmark = pytest.mark.slow
TOL = 1e-4


@pytest.fixture(scope="module")
def setup(tiny_path, rollout_pair):
    # The session's two workers (rollout.max_new_tokens=48), at weight version 0.
    workers = rollout_pair.acquire()
    policy = PolicyModel(tiny_path)
    return workers, policy


def _requests(policy, n=16, seed=0):
    chat = ChatFormat(policy.tokenizer)
    rng = np.random.default_rng(seed)
    reqs = []
    for i in range(n):
        if i % 2 == 0:  # half with audio: one clip, or two for every fourth request
            clips = [(0.1 * rng.standard_normal(int(rng.uniform(0.5, 2.5) * 16000))).astype(np.float32)
                     for _ in range(1 if i % 4 else 2)]
            ids = chat.user_turn("how do I sound?", num_audio=len(clips)) + chat.assistant_prefix(open_think=True)
        else:
            clips, ids = [], chat.user_turn(f"what is {i} plus 2?") + chat.assistant_prefix()
        reqs.append(GenerationRequest(f"q{i}", ids, clips))
    return reqs


def _max_diff(policy, reqs, results):
    lps = policy.completion_logprobs([Sample(q.prompt_ids, r.token_ids, q.audio) for q, r in zip(reqs, results)])
    diffs = [float(np.abs(np.asarray(r.logprobs) - lp).max()) for r, lp in zip(results, lps)]
    return max(diffs), diffs


def test_behaviour_logprobs_match_learner_with_and_without_audio(setup):
    import ray

    workers, policy = setup
    reqs = _requests(policy)
    results = ray.get(workers[0].generate.remote(reqs))
    assert [r.request_id for r in results] == [q.request_id for q in reqs]
    assert all(r.weight_version == 0 and len(r.token_ids) == len(r.logprobs) > 0 for r in results)
    worst, diffs = _max_diff(policy, reqs, results)
    assert worst < TOL, diffs
    # Both kinds of prompt were exercised, and audio changed what was generated from.
    assert any(q.audio for q in reqs) and any(not q.audio for q in reqs)
    with_audio = [r.num_prompt_tokens - len(q.prompt_ids) for q, r in zip(reqs, results) if q.audio]
    assert min(with_audio) > 0  # the engine expanded the placeholders


def test_sampler_never_emits_structural_tokens(setup):
    import ray

    workers, policy = setup
    results = ray.get(workers[1].generate.remote(_requests(policy, n=32, seed=1)))
    sampled = np.concatenate([r.token_ids for r in results])
    # A near-uniform random policy would sample each of these ~1/600 of the time: ~10 hits in this many.
    assert len(sampled) > 1000
    assert not set(sampled.tolist()) & set(structural_token_ids(policy.tokenizer))


def test_workers_are_seeded_differently(setup):
    import ray

    workers, policy = setup
    reqs = _requests(policy, n=4, seed=2)
    a, b = ray.get([w.generate.remote(reqs) for w in workers])
    assert [r.token_ids for r in a] != [r.token_ids for r in b]


def test_rejected_update_leaves_engine_serving(setup):
    import ray

    workers, policy = setup
    sd = policy.state_dict_for_rollout()
    bad = dict(sd)
    name = next(iter(bad))
    bad[name] = torch.zeros(3, 3)
    with pytest.raises(Exception, match="weight update rejected"):
        ray.get(workers[0].load_weights.remote(bad, 1))
    missing = {k: v for k, v in sd.items() if k != name}
    with pytest.raises(Exception, match="missing parameters"):
        ray.get(workers[0].load_weights.remote(missing, 1))
    assert ray.get(workers[0].weight_version.remote()) == 0
    reqs = _requests(policy, n=2, seed=3)
    worst, _ = _max_diff(policy, reqs, ray.get(workers[0].generate.remote(reqs)))
    assert worst < TOL


def test_parity_after_learner_perturbs_and_broadcasts(setup, tiny_path):
    import ray

    from actors import broadcast_weights

    workers, policy = setup
    reqs = _requests(policy, n=12, seed=4)
    before = ray.get(workers[0].generate.remote(reqs))
    original = PolicyModel(tiny_path)

    torch.manual_seed(123)
    with torch.no_grad():
        for p in policy.model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    load_times = broadcast_weights(workers, policy.state_dict_for_rollout(), version=1)
    assert len(load_times) == 2
    assert ray.get([w.weight_version.remote() for w in workers]) == [1, 1]

    for w in workers:
        after = ray.get(w.generate.remote(reqs))
        assert all(r.weight_version == 1 for r in after)
        worst, diffs = _max_diff(policy, reqs, after)
        assert worst < TOL, diffs
        # The engine really serves the new weights: the old model disagrees with what it reports.
        stale, _ = _max_diff(original, reqs, after)
        assert stale > 1e-2
    after0 = ray.get(workers[0].generate.remote(reqs))
    assert [r.token_ids for r in after0] != [r.token_ids for r in before]
    with pytest.raises(Exception, match="not newer"):
        ray.get(workers[0].load_weights.remote(policy.state_dict_for_rollout(), 1))


def test_engine_side_audio_encoding_gives_the_same_policy(tiny_path, ray_local, setup):
    """``rollout.audio_input=waveform`` (vLLM encodes the padded 30 s window itself) matches the learner too."""
    from actors import launch_workers

    _, policy = setup
    policy = PolicyModel(tiny_path)  # the fixture's copy was perturbed by the broadcast test
    # The module's two workers hold both CPUs: this third one runs beside them without a reservation.
    cfg = compose(["rollout.max_new_tokens=24", "rollout.audio_input=waveform", "rollout.num_cpus_per_worker=0",
                   "+rollout.env.OMP_NUM_THREADS=1"])
    (worker,) = launch_workers(str(tiny_path), to_dataclass(cfg.rollout), to_dataclass(cfg.model), num_workers=1)
    try:
        reqs = [q for q in _requests(policy, n=8, seed=5) if q.audio]
        worst, diffs = _max_diff(policy, reqs, ray_local.get(worker.generate.remote(reqs)))
        assert worst < TOL, diffs
    finally:
        ray_local.get(worker.shutdown.remote())
        ray_local.kill(worker)
