"""What crosses between a caller and a rollout worker: a generation request and its result.

Plain data (ids, float32 audio, floats): Ray's own transport carries them between processes; nothing
here is part of antiphon's stream wire format.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np


@dataclass
class GenerationRequest:
    request_id: str
    prompt_ids: List[int]  # one <|AUDIO|> per clip; the engine expands it
    audio: List[np.ndarray] = field(default_factory=list)  # float32 mono, at the policy's sample rate
    max_new_tokens: Optional[int] = None  # None: rollout.max_new_tokens
    stop_token_ids: List[int] = field(default_factory=list)  # extra tokens that end this request (kept in output)


@dataclass
class GenerationResult:
    request_id: str
    token_ids: List[int]
    logprobs: List[float]  # behaviour log-prob of each sampled token (temperature + structural mask applied)
    weight_version: int  # the single weight version that produced every token of this result
    finish_reason: str  # "stop" | "length" | "abort"
    num_prompt_tokens: int  # after audio expansion
