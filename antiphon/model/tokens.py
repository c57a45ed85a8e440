"""Special tokens of the policy's chat format, shared by the rollout side and the learner side."""
from __future__ import annotations

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
ENDOFTEXT = "<|endoftext|>"
AUDIO_BOS = "<|audio_bos|>"
AUDIO = "<|AUDIO|>"  # one per clip in a prompt; the engine expands it to the clip's frame count
AUDIO_EOS = "<|audio_eos|>"
THINK = "<think>"
END_THINK = "</think>"

SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END, AUDIO_BOS, AUDIO, AUDIO_EOS]
# Reasoning markers are ordinary (non-special) single tokens: the policy must emit them.
REASONING_TOKENS = [THINK, END_THINK]
# Tokens the policy must never sample: they would break audio placement or forge a new turn.
STRUCTURAL_TOKENS = [AUDIO_BOS, AUDIO, AUDIO_EOS, IM_START, ENDOFTEXT]


def structural_token_ids(tokenizer) -> list[int]:
    ids = tokenizer.convert_tokens_to_ids(STRUCTURAL_TOKENS)
    unk = getattr(tokenizer, "unk_token_id", None)
    missing = [t for t, i in zip(STRUCTURAL_TOKENS, ids) if i is None or (unk is not None and i == unk)]
    if missing:
        raise ValueError(f"tokenizer lacks structural tokens {missing}; is this a Qwen2-Audio-format checkpoint?")
    return sorted(set(ids))


def allowed_token_ids(tokenizer, vocab_size: int) -> list[int]:
    """Every id the sampler may emit: the model's vocabulary minus the structural tokens."""
    banned = set(structural_token_ids(tokenizer))
    return [i for i in range(vocab_size) if i not in banned]
