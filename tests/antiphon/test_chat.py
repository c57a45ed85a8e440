"""Token-level chat format and audio placeholder expansion."""
from __future__ import annotations

import numpy as np
import pytest

from antiphon.model.chat import ChatFormat, audio_placeholder_count, expand_audio_placeholders


def test_placeholder_count_matches_the_feature_extractor(tiny_path):
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(tiny_path)
    for n in (1600, 15999, 16000, 16100, 32000, 123457, 480000, 600000):
        out = proc(text="<|audio_bos|><|AUDIO|><|audio_eos|>", audio=[np.zeros(n, np.float32)],
                   sampling_rate=16000, return_tensors="np")
        expanded = int((out["input_ids"][0] == proc.tokenizer.convert_tokens_to_ids("<|AUDIO|>")).sum())
        assert audio_placeholder_count(n) == expanded, n
    assert audio_placeholder_count(32000) == 50  # 2 s -> 50 placeholders


def test_expand_replaces_each_placeholder_in_order():
    assert expand_audio_placeholders([1, 9, 2, 9, 3], 9, [2, 3]) == [1, 9, 9, 2, 9, 9, 9, 3]
    with pytest.raises(ValueError, match="1 audio placeholders but 2 clips"):
        expand_audio_placeholders([9], 9, [1, 2])
    with pytest.raises(ValueError, match="more audio placeholders"):
        expand_audio_placeholders([9, 9], 9, [])


def test_user_turn_matches_the_chat_template(tiny_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_path)
    chat = ChatFormat(tok)
    ids = chat.user_turn("how are you?", num_audio=2) + chat.assistant_prefix()
    templated = tok.apply_chat_template(
        [{"role": "user", "content": [{"type": "audio"}, {"type": "audio"}, {"type": "text", "text": "how are you?"}]}],
        tokenize=False, add_generation_prompt=True)
    assert tok.decode(ids) == templated
    assert chat.count_audio(ids) == 2
