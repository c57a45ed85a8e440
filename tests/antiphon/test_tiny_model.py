"""The locally built tiny policy: deterministic, loadable by transformers, the chat format intact."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from antiphon.config.schema import TinyModelConfig
from antiphon.model.tiny import build_policy, ensure_tiny_policy, tiny_key
from antiphon.model.tokens import END_THINK, REASONING_TOKENS, SPECIAL_TOKENS, THINK, structural_token_ids


def _tiny(**kw):
    return dataclasses.asdict(TinyModelConfig(**kw))


def test_build_is_deterministic_for_a_seed_and_differs_across_seeds(tmp_path):
    a = build_policy(_tiny(seed=3), tmp_path / "a")
    b = build_policy(_tiny(seed=3), tmp_path / "b")
    c = build_policy(_tiny(seed=4), tmp_path / "c")
    wa, wb, wc = (load_file(str(p / "model.safetensors")) for p in (a, b, c))
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()


def test_checkpoint_uses_the_names_vllm_loads(tiny_path):
    names = load_file(str(tiny_path / "model.safetensors")).keys()
    assert all(n.split(".")[0] in ("audio_tower", "multi_modal_projector", "language_model") for n in names)
    assert any(n.startswith("language_model.model.layers.") for n in names)
    assert "language_model.lm_head.weight" in names
    cfg = json.loads((tiny_path / "config.json").read_text())
    assert cfg["architectures"] == ["Qwen2AudioForConditionalGeneration"]


def test_transformers_loads_the_saved_weights_exactly(tiny_path):
    from transformers import Qwen2AudioForConditionalGeneration

    from antiphon.model.weights import to_checkpoint_state_dict

    model = Qwen2AudioForConditionalGeneration.from_pretrained(tiny_path, dtype=torch.float32)
    saved = load_file(str(tiny_path / "model.safetensors"))
    mapped = to_checkpoint_state_dict(model.state_dict())
    assert mapped.keys() == saved.keys()
    assert all(torch.equal(mapped[k], saved[k]) for k in saved)


def test_tokenizer_has_chat_format_audio_and_reasoning_tokens(tiny_path):
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(tiny_path)
    tok = proc.tokenizer
    for t in SPECIAL_TOKENS + REASONING_TOKENS:
        ids = tok.encode(t, add_special_tokens=False)
        assert len(ids) == 1, (t, ids)
    text = f"{THINK}the user sounds calm{END_THINK} hello"
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    rendered = tok.apply_chat_template(
        [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "hi"}]}],
        tokenize=False, add_generation_prompt=True)
    assert rendered == "<|im_start|>user\n<|audio_bos|><|AUDIO|><|audio_eos|>hi<|im_end|>\n<|im_start|>assistant\n"
    assert len(structural_token_ids(tok)) == 5
    assert proc.feature_extractor.feature_size == TinyModelConfig().num_mel_bins


def test_cache_is_keyed_by_config_and_reused(tmp_path):
    p1 = ensure_tiny_policy(_tiny(seed=1), tmp_path)
    mtime = (p1 / "model.safetensors").stat().st_mtime_ns
    assert ensure_tiny_policy(_tiny(seed=1), tmp_path) == p1
    assert (p1 / "model.safetensors").stat().st_mtime_ns == mtime
    assert tiny_key(_tiny(seed=1)) != tiny_key(_tiny(seed=2))


def test_model_path_that_is_not_a_checkpoint_is_named(tmp_path):
    from antiphon.model.tiny import resolve_model_path

    with pytest.raises(FileNotFoundError, match="model.path"):
        resolve_model_path({"path": str(tmp_path), "tiny": _tiny(), "cache_dir": str(tmp_path)})
