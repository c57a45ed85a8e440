"""Token-level chat format: prompts are assembled from token ids, never by re-tokenising history.

A user turn with k audio clips carries ONE ``<|AUDIO|>`` per clip; the rollout engine expands each to
the clip's frame count, and the learner expands them the same way (``expand_audio_placeholders``).
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

from antiphon.model.tokens import AUDIO, AUDIO_BOS, AUDIO_EOS, IM_END, IM_START, THINK

HOP_LENGTH = 160  # Whisper feature extractor: one mel frame per 10 ms at 16 kHz


def audio_placeholder_count(num_samples: int, max_frames: int = 3000, hop_length: int = HOP_LENGTH) -> int:
    """Placeholders one clip occupies after expansion (Qwen2-Audio: two stride-2 reductions of mel frames).

    ``max_frames``: the encoder window in mel frames (3000 = Qwen2-Audio's 30 s); longer clips are cut.
    """
    frames = min(max_frames, -(-num_samples // hop_length))  # the extractor rounds up
    if frames < 1:
        raise ValueError(f"audio clip of {num_samples} samples is shorter than one feature frame")
    return (((frames - 1) // 2 + 1) - 2) // 2 + 1


class ChatFormat:
    """ChatML with audio, as token ids. Built from the policy's tokenizer."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        ids = tokenizer.convert_tokens_to_ids
        self.im_start, self.im_end = ids(IM_START), ids(IM_END)
        self.audio_bos, self.audio, self.audio_eos = ids(AUDIO_BOS), ids(AUDIO), ids(AUDIO_EOS)
        self.think = ids(THINK)
        self.newline = self.text("\n")

    def text(self, s: str) -> List[int]:
        return self.tokenizer.encode(s, add_special_tokens=False)

    def turn_header(self, role: str) -> List[int]:
        return [self.im_start] + self.text(role) + self.newline

    def user_turn(self, text: str = "", num_audio: int = 0) -> List[int]:
        """A complete user turn: header, one placeholder group per clip, text, end of turn."""
        ids = self.turn_header("user")
        for _ in range(num_audio):
            ids += [self.audio_bos, self.audio, self.audio_eos]
        if text:
            ids += self.text(text)
        return ids + [self.im_end] + self.newline

    def system_turn(self, text: str) -> List[int]:
        return self.turn_header("system") + self.text(text) + [self.im_end] + self.newline

    def assistant_prefix(self, open_think: bool = False) -> List[int]:
        """What precedes the policy's own tokens in its turn (the generation prompt)."""
        return self.turn_header("assistant") + ([self.think] if open_think else [])

    def count_audio(self, ids: Sequence[int]) -> int:
        return sum(1 for i in ids if i == self.audio)


def expand_audio_placeholders(ids: Sequence[int], audio_token_id: int, counts: Sequence[int]) -> List[int]:
    """Replace the i-th ``<|AUDIO|>`` in ``ids`` by ``counts[i]`` copies (what the engine does)."""
    return expand_with_positions(ids, audio_token_id, counts)[0]


def expand_with_positions(ids: Sequence[int], audio_token_id: int,
                          counts: Sequence[int]) -> Tuple[List[int], List[int]]:
    """The expanded ids, and where each original token landed (a placeholder: its first copy)."""
    out: List[int] = []
    pos: List[int] = []
    k = 0
    for t in ids:
        pos.append(len(out))
        if t == audio_token_id:
            if k >= len(counts):
                raise ValueError(f"prompt has more audio placeholders than clips ({len(counts)})")
            out.extend([audio_token_id] * counts[k])
            k += 1
        else:
            out.append(t)
    if k != len(counts):
        raise ValueError(f"prompt has {k} audio placeholders but {len(counts)} clips were given")
    return out, pos
