"""Parameter names: transformers' in-memory Qwen2-Audio module tree vs the checkpoint layout vLLM loads."""
from __future__ import annotations

from typing import Dict, Mapping

# transformers 5.x nests the decoder as model.language_model; vLLM's Qwen2AudioForConditionalGeneration
# expects the older checkpoint layout (language_model.model.*, language_model.lm_head.*).
_TO_CHECKPOINT = [
    ("model.audio_tower.", "audio_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("model.language_model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
]


def to_checkpoint_name(name: str) -> str:
    for src, dst in _TO_CHECKPOINT:
        if name.startswith(src):
            return dst + name[len(src):]
    raise KeyError(f"parameter {name!r} has no checkpoint name (not a Qwen2-Audio parameter?)")


def to_checkpoint_state_dict(state_dict: Mapping[str, "object"]) -> Dict[str, "object"]:
    """In-memory state dict -> names that both vLLM and transformers' loader accept."""
    return {to_checkpoint_name(k): v for k, v in state_dict.items()}
