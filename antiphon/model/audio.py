"""The policy's audio front end, computed over only the frames each clip needs.

Qwen2-Audio pads every clip to a 30 s window (3000 log-mel frames) and masks the padding inside the
encoder. The outputs kept for a clip of N frames depend only on frames [0, N+2) (two stride-2 convs
with kernel 3 see at most two frames past the end; attention never looks at masked keys; the pooled
pairs stay inside the valid span). So encoding N+2 frames reproduces the full-window result for
those positions -- to fp32 rounding -- at a fraction of the cost for short spoken turns. The rollout
workers send these embeddings to the engine and the learner trains through the same code, so the two
sides compute one function.
"""
from __future__ import annotations

import hashlib
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

HOP = 160  # samples per mel frame at 16 kHz
WIN = 400  # STFT window


class AudioFrontend(nn.Module):
    def __init__(self, audio_tower: nn.Module, projector: nn.Module, feature_extractor):
        super().__init__()
        self.audio_tower = audio_tower
        self.multi_modal_projector = projector  # named as in the checkpoint, so its keys load as they are
        self.fe = feature_extractor
        self.max_frames = int(feature_extractor.nb_max_frames)  # the full window (3000 for 30 s)
        self.sample_rate = int(feature_extractor.sampling_rate)

    @staticmethod
    def output_lengths(frames: int) -> Tuple[int, int]:
        """(positions after the convs, embeddings kept) for ``frames`` valid mel frames."""
        after_conv = (frames - 1) // 2 + 1
        return after_conv, (after_conv - 2) // 2 + 1

    def num_embeddings(self, num_samples: int) -> int:
        """Audio placeholders a clip of ``num_samples`` occupies in the prompt."""
        from antiphon.model.chat import audio_placeholder_count

        if num_samples < 1:
            raise ValueError("empty audio clip")
        return audio_placeholder_count(num_samples, self.max_frames, HOP)

    def features(self, clip: np.ndarray) -> Tuple[torch.Tensor, int]:
        """Log-mel frames [mel, N+2] equal to frames [0, N+2) of the padded full window, and N."""
        clip = np.asarray(clip, dtype=np.float32)[: self.max_frames * HOP]
        n_valid = min(self.max_frames, -(-len(clip) // HOP))  # the extractor rounds up
        n_frames = min(self.max_frames, n_valid + 2)
        # Zeros past the clip, as in the padded window, far enough that no frame we keep sees an edge.
        padded = np.zeros((n_frames + 1) * HOP + WIN, dtype=np.float32)
        padded[: len(clip)] = clip
        if n_frames == self.max_frames:  # the window's own end: no look-ahead frames exist there
            padded = np.zeros(self.max_frames * HOP, dtype=np.float32)
            padded[: len(clip)] = clip
        feats = self.fe(padded, sampling_rate=self.sample_rate, padding="longest", return_tensors="pt",
                        return_attention_mask=False)["input_features"][0]
        return feats[:, :n_frames], n_valid

    def forward(self, clips: Sequence[np.ndarray],
                features: Optional[Sequence[Tuple[torch.Tensor, int]]] = None) -> List[torch.Tensor]:
        """One [tokens_i, text_hidden] tensor per clip (differentiable w.r.t. the tower and projector).

        ``features``: ``self.features(c)`` for each clip, when the caller already has them (they depend on
        the clip only, so a learner step computes them once for all its forward passes).

        A clip that occurs more than once is encoded once and its tensor returned at each place: the
        rollouts of one group hear the same user turns, so a learner batch holds each of them several
        times. Gradients reaching a shared tensor add up, exactly as if each copy were encoded."""
        if not clips:
            return []
        if features is not None and len(features) != len(clips):
            raise ValueError(f"{len(features)} feature sets for {len(clips)} clips")
        first: Dict[bytes, int] = {}  # content -> the index of its first occurrence
        owner = [first.setdefault(clip_key(c), i) for i, c in enumerate(clips)]
        unique = sorted(first.values())
        feats = {i: features[i] if features is not None else self.features(clips[i]) for i in unique}
        encoded: Dict[int, torch.Tensor] = {}
        for bucket in length_buckets([feats[i][0].shape[1] for i in unique]):
            for j, e in zip(bucket, self._encode([feats[unique[j]] for j in bucket])):
                encoded[unique[j]] = e
        return [encoded[i] for i in owner]

    def _encode(self, feats: Sequence[Tuple[torch.Tensor, int]]) -> List[torch.Tensor]:
        """Clips of similar length in one padded batch; attention masks the padding."""
        tower = self.audio_tower
        feats, valid = zip(*feats)
        width = max(f.shape[1] for f in feats)
        width += width % 2  # even frame count: conv2 then yields width/2 positions
        param = tower.conv1.weight
        x = torch.zeros(len(feats), feats[0].shape[0], width, dtype=param.dtype, device=param.device)
        for i, f in enumerate(feats):
            x[i, :, : f.shape[1]] = f.to(param.dtype)
        h = nn.functional.gelu(tower.conv1(x))
        h = nn.functional.gelu(tower.conv2(h)).permute(0, 2, 1)
        lens = [self.output_lengths(v) for v in valid]
        seq = max(a for a, _ in lens)
        h = h[:, :seq] + tower.embed_positions.weight[:seq]
        key_pad = torch.arange(seq, device=h.device)[None, :] >= torch.tensor([a for a, _ in lens],
                                                                              device=h.device)[:, None]
        mask = None  # clips of one length: nothing to mask, and attention takes its fused path
        if bool(key_pad.any()):
            mask = torch.zeros(len(feats), 1, seq, seq, dtype=h.dtype, device=h.device)
            mask.masked_fill_(key_pad[:, None, None, :], float("-inf"))
        h = nn.functional.dropout(h, p=tower.dropout, training=tower.training)
        for layer in tower.layers:
            h = layer(h, mask)
            if isinstance(h, tuple):
                h = h[0]
        h = tower.avg_pooler(h.permute(0, 2, 1)).permute(0, 2, 1)
        h = self.multi_modal_projector(tower.layer_norm(h))
        return [h[i, :kept] for i, (_, kept) in enumerate(lens)]


def clip_key(clip: np.ndarray) -> bytes:
    """A clip's identity by content (its float32 samples), for encoding each distinct clip once."""
    return hashlib.blake2b(np.ascontiguousarray(clip, dtype=np.float32), digest_size=16).digest()


def length_buckets(lengths: Sequence[int], max_pad: float = 0.25, max_size: int = 32) -> List[List[int]]:
    """Indices grouped into batches of similar length, shortest first.

    One padded batch of all clips costs the longest clip's frames for every clip -- and attention grows
    with the square of that -- while a dialogue's turns run from under a second to ten. A bucket grows
    while its padding stays under ``max_pad`` of its frames (measured on a learner batch of 48 spoken
    turns: forward + backward 3x cheaper than one batch). Which clips share a batch never changes a
    clip's result beyond float rounding: the padding is masked."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    buckets: List[List[int]] = []
    total = 0
    for i in order:
        n = lengths[i]
        cur = buckets[-1] if buckets else None
        if cur and len(cur) < max_size and n * (len(cur) + 1) <= (1 + max_pad) * (total + n):
            cur.append(i)
            total += n
        else:
            buckets.append([i])
            total = n
    return buckets
