"""Builds the tiny Qwen2-Audio-architecture policy and its tokenizer locally, deterministically.

Nothing is downloaded: the tokenizer is a byte-level BPE trained on generated text, the weights are a
seeded random init. The result is a Hugging Face-format directory that transformers and vLLM both
load, cached under ``model.cache_dir`` keyed by a hash of the tiny config.

    python -m antiphon.model.tiny --out /tmp/tiny   # or: antiphon-build-tiny
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any, Iterator, Mapping

from antiphon.cache import build_once
from antiphon.model.tokens import AUDIO, AUDIO_BOS, AUDIO_EOS, END_THINK, IM_END, IM_START, REASONING_TOKENS, \
    SPECIAL_TOKENS, THINK, ENDOFTEXT

BUILDER_VERSION = 1  # bump when the artefact layout changes: invalidates caches

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'audio' %}{{ '<|audio_bos|><|AUDIO|><|audio_eos|>' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_EMOTIONS = ["calm", "happy", "sad", "angry", "anxious", "excited", "tired", "neutral", "warm", "gentle"]
_WORDS = (
    "i you we it the a an is are was feel sound hear voice think answer question please thanks sorry "
    "okay yes no maybe what why how when where who plus minus times equals number one two three four five "
    "six seven eight nine ten eleven twelve hello hi goodbye today tomorrow help need want tell me about "
    "that this so very really little bit more less again slowly quickly sure right wrong good bad great fine "
    "understand listen speak say let us try step first then next finally because so the user seems"
).split()


def _corpus(seed: int, n_lines: int = 3000) -> Iterator[str]:
    rng = random.Random(seed)
    for _ in range(n_lines):
        kind = rng.random()
        if kind < 0.3:
            a, b = rng.randint(0, 20), rng.randint(0, 20)
            yield f"{THINK}the user asks {a} plus {b} so the answer is {a + b}{END_THINK} it is {a + b}."
        elif kind < 0.6:
            emo = rng.choice(_EMOTIONS)
            yield f"{THINK}the user sounds {emo}{END_THINK} [{emo}] I hear you, " + " ".join(
                rng.choice(_WORDS) for _ in range(rng.randint(3, 12))) + "."
        else:
            yield " ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 16))).capitalize() + rng.choice(
                [".", "?", "!"])


def build_tokenizer(vocab_size: int, seed: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=SPECIAL_TOKENS + REASONING_TOKENS,
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(seed), trainer=trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        bos_token=None,
        unk_token=None,
        additional_special_tokens=[IM_START, AUDIO_BOS, AUDIO, AUDIO_EOS],
        clean_up_tokenization_spaces=False,
    )
    hf.chat_template = CHAT_TEMPLATE
    # Qwen2AudioProcessor reads these to find and expand the audio placeholders.
    hf.audio_token, hf.audio_bos_token, hf.audio_eos_token = AUDIO, AUDIO_BOS, AUDIO_EOS
    return hf


def _round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


def build_policy(tiny: Mapping[str, Any], out_dir: str | os.PathLike) -> Path:
    """Writes the tiny policy (config, weights, tokenizer, processor) to ``out_dir``."""
    import torch
    from safetensors.torch import save_file
    from transformers import (Qwen2AudioConfig, Qwen2AudioEncoderConfig, Qwen2AudioForConditionalGeneration,
                              Qwen2AudioProcessor, Qwen2Config, WhisperFeatureExtractor)

    from antiphon.model.weights import to_checkpoint_state_dict

    t = dict(tiny)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(t["vocab_size"], t["seed"])
    vocab = _round_up(len(tokenizer), 64)  # spare rows: room for style tags added later
    text_cfg = Qwen2Config(
        vocab_size=vocab,
        hidden_size=t["hidden_size"],
        intermediate_size=t["intermediate_size"],
        num_hidden_layers=t["num_hidden_layers"],
        num_attention_heads=t["num_attention_heads"],
        num_key_value_heads=t["num_key_value_heads"],
        max_position_embeddings=t["max_position_embeddings"],
        tie_word_embeddings=False,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        bos_token_id=tokenizer.convert_tokens_to_ids(ENDOFTEXT),
        eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
        pad_token_id=tokenizer.convert_tokens_to_ids(ENDOFTEXT),
    )
    audio_cfg = Qwen2AudioEncoderConfig(
        num_mel_bins=t["num_mel_bins"],
        encoder_layers=t["audio_layers"],
        encoder_attention_heads=t["audio_heads"],
        encoder_ffn_dim=t["audio_ffn_dim"],
        d_model=t["audio_d_model"],
        max_source_positions=1500,
    )
    config = Qwen2AudioConfig(
        audio_config=audio_cfg,
        text_config=text_cfg,
        audio_token_index=tokenizer.convert_tokens_to_ids(AUDIO),
        tie_word_embeddings=False,
    )
    config.architectures = ["Qwen2AudioForConditionalGeneration"]  # vLLM picks its model class from this
    config.eos_token_id = text_cfg.eos_token_id
    config.pad_token_id = text_cfg.pad_token_id
    torch.manual_seed(t["seed"])
    model = Qwen2AudioForConditionalGeneration(config).to(torch.float32).eval()
    model.generation_config.eos_token_id = text_cfg.eos_token_id
    model.generation_config.pad_token_id = text_cfg.pad_token_id
    config.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(to_checkpoint_state_dict(state), str(out / "model.safetensors"), metadata={"format": "pt"})

    feature_extractor = WhisperFeatureExtractor(feature_size=t["num_mel_bins"], sampling_rate=16000)
    processor = Qwen2AudioProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer,
                                    chat_template=CHAT_TEMPLATE)
    processor.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "antiphon_tiny.json").write_text(json.dumps({"builder_version": BUILDER_VERSION, "tiny": t}, indent=2))
    return out


def tiny_key(tiny: Mapping[str, Any]) -> str:
    blob = json.dumps({"v": BUILDER_VERSION, **dict(tiny)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def ensure_tiny_policy(tiny: Mapping[str, Any], cache_dir: str | os.PathLike) -> Path:
    """The cached tiny policy directory, building it once (atomically, safe across processes)."""
    cache = Path(os.path.expanduser(str(cache_dir)))
    target = cache / f"tiny-qwen2-audio-{tiny_key(tiny)}"  # antiphon.config's ${policy_dir:} names it too
    return build_once(target, lambda tmp: build_policy(tiny, tmp), lambda p: (p / "antiphon_tiny.json").exists())


def resolve_model_path(model_cfg) -> Path:
    """``model.path`` if set, else the (built-on-demand) tiny policy (``model``: the schema's ``ModelConfig``,
    a config node, or a mapping -- all through the schema)."""
    import dataclasses

    from antiphon.config import to_dataclass
    from antiphon.config.schema import ModelConfig

    m = to_dataclass(model_cfg, ModelConfig)
    path = m.path
    if path:
        p = Path(os.path.expanduser(str(path)))
        if not (p / "config.json").exists():
            raise FileNotFoundError(f"model.path={str(path)!r}: no config.json there (expected a Hugging Face "
                                    "checkpoint directory)")
        return p
    return ensure_tiny_policy(dataclasses.asdict(m.tiny), m.cache_dir)


def main(argv: list[str] | None = None) -> None:
    """``antiphon-build-tiny``: the default tiny policy (the config's ``model.tiny``), into ``--out`` or the cache."""
    from omegaconf import OmegaConf

    from antiphon.config.schema import ModelConfig, TinyModelConfig

    ap = argparse.ArgumentParser(prog="antiphon-build-tiny", description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="build into this directory (default: the cache directory runs use, once)")
    ap.add_argument("--cache-dir", default=OmegaConf.structured(ModelConfig).cache_dir,  # resolves $ANTIPHON_CACHE
                    help="the runs' model cache (default: model.cache_dir: $ANTIPHON_CACHE or ~/.cache/antiphon)")
    ap.add_argument("--seed", type=int, default=TinyModelConfig.seed, help="the weights' seed (model.tiny.seed)")
    args = ap.parse_args(argv)
    tiny = dataclasses.asdict(TinyModelConfig(seed=args.seed))
    path = build_policy(tiny, args.out) if args.out else ensure_tiny_policy(tiny, args.cache_dir)
    print(path)


if __name__ == "__main__":
    main()
