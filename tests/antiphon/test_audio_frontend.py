"""The trimmed audio front end equals Qwen2-Audio's full 30 s window encoder on every kept position."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from antiphon.model.audio import AudioFrontend, length_buckets


@pytest.fixture(scope="module")
def parts(tiny_path):
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    model = Qwen2AudioForConditionalGeneration.from_pretrained(tiny_path, dtype=torch.float32).eval()
    proc = AutoProcessor.from_pretrained(tiny_path)
    front = AudioFrontend(model.model.audio_tower, model.model.multi_modal_projector, proc.feature_extractor)
    return model, proc, front


def _full_window(model, proc, clips):
    f = proc.feature_extractor(clips, sampling_rate=16000, return_attention_mask=True, padding="max_length",
                               return_tensors="pt")
    tower = model.model.audio_tower
    conv_len, kept = tower._get_feat_extract_output_lengths(f["attention_mask"].sum(-1))
    seq = tower.config.max_source_positions
    pad = torch.arange(seq)[None] >= conv_len[:, None]
    mask = torch.zeros(len(clips), 1, seq, seq).masked_fill(pad[:, None, None, :], float("-inf"))
    out = model.model.multi_modal_projector(tower(f["input_features"], attention_mask=mask).last_hidden_state)
    return [out[i, :k] for i, k in enumerate(kept.tolist())]


@pytest.mark.parametrize("lengths", [
    [1600, 15999, 16000, 16100, 33333],  # short turns, frame-boundary cases, odd/even frame counts
    [160 * 7 + 3, 2000, 41000],
    [479_000, 480_000, 600_000],  # up to, at and past the 30 s window
])
def test_trimmed_equals_full_window(parts, lengths):
    model, proc, front = parts
    rng = np.random.default_rng(len(lengths))
    clips = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in lengths]
    with torch.no_grad():
        mine, ref = front(clips), _full_window(model, proc, clips)
    for n, a, b in zip(lengths, mine, ref):
        assert a.shape == b.shape and a.shape[0] == front.num_embeddings(n)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_gradients_reach_the_audio_tower(parts):
    _, _, front = parts
    out = front([np.random.default_rng(0).standard_normal(8000).astype(np.float32)])
    out[0].sum().backward()
    assert front.audio_tower.conv1.weight.grad.abs().sum() > 0
    assert front.multi_modal_projector.linear.weight.grad.abs().sum() > 0
    front.zero_grad(set_to_none=True)


def test_empty_clip_is_refused(parts):
    with pytest.raises(ValueError, match="empty"):
        parts[2].num_embeddings(0)


@pytest.mark.parametrize("seed", range(5))
def test_length_buckets_cover_every_clip_once_within_the_padding_bound(seed):
    rng = np.random.default_rng(seed)
    lengths = [int(x) for x in rng.integers(50, 1100, size=int(rng.integers(1, 60)))]
    buckets = length_buckets(lengths, max_pad=0.25, max_size=8)
    assert sorted(i for b in buckets for i in b) == list(range(len(lengths)))
    for b in buckets:
        assert 1 <= len(b) <= 8
        assert len(b) == 1 or max(lengths[i] for i in b) * len(b) <= 1.25 * sum(lengths[i] for i in b)
    flat = [lengths[i] for b in buckets for i in b]
    assert flat == sorted(flat)  # shortest first


def test_a_batch_of_mixed_lengths_equals_each_clip_alone(parts):
    """Bucketing changes which clips share a padded batch, never a clip's embeddings (nor its gradient)."""
    _, _, front = parts
    rng = np.random.default_rng(7)
    clips = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (8000, 160_000, 8100, 30_000, 9000)]
    assert len(length_buckets([front.features(c)[0].shape[1] for c in clips])) > 1
    with torch.no_grad():
        together = front(clips, [front.features(c) for c in clips])
        for c, t in zip(clips, together):
            torch.testing.assert_close(t, front([c])[0], atol=1e-5, rtol=0)


def test_a_repeated_clip_is_encoded_once_with_the_gradient_of_every_copy(parts):
    """A group's rollouts hear the same user turns: the batch holds them repeatedly, each is encoded once
    (one tensor at every place, equal copies of the array included), and the tower's gradient equals that
    of encoding every copy on its own."""
    _, _, front = parts
    rng = np.random.default_rng(3)
    a, b = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (8000, 12000)]
    clips = [a, b, a.copy(), a, b.copy()]
    weights = [1.0, 2.0, 3.0, 4.0, 5.0]  # each place contributes differently to the loss

    def grads(outs):
        front.zero_grad()
        sum(w * o.square().sum() for w, o in zip(weights, outs)).backward()
        return {k: p.grad.clone() for k, p in front.named_parameters() if p.grad is not None}

    together = front(clips)
    assert together[0] is together[2] is together[3] and together[1] is together[4]
    assert together[0] is not together[1]
    shared = grads(together)
    separate = grads([front([c])[0] for c in clips])
    assert shared.keys() == separate.keys() and shared
    for k in shared:
        torch.testing.assert_close(shared[k], separate[k], atol=1e-4, rtol=1e-4)
    front.zero_grad()
