"""The rubric-guided preference reward model (RM) for spoken dialogue.

A pretrained text backbone (all-MiniLM-L6-v2 by default, or any local HF encoder / decoder checkpoint) with a
scalar head, trained with the Bradley-Terry loss on preference pairs (``PAIRS_FORMAT.md``) and served as the
turn-scope reward component ``reward_service.rm.component.PreferenceRewardModel``. It complements the
verifiers: they check what can be checked (correctness, length, format); the RM, learned from preferences,
keeps replies natural and emotionally continuous (the style tag a reply carries is part of what it judges).

    model.py      PreferenceRM: rendering, pooling, score(), save()/load()
    data.py       the pairs JSONL format, its validating loader, and SYNTHETIC rubric-rule pairs
    train.py      python -m reward_service.rm.train --synthetic N | --pairs FILE --out DIR
    component.py  PreferenceRewardModel(path=DIR): one Score per agent turn
"""
from __future__ import annotations

import importlib
from typing import Any

# Lazy (PEP 562), so `reward_service.rm.data` stays light: torch/transformers load on first use.
_EXPORTS = {
    "PreferenceRewardModel": "reward_service.rm.component",
    "PreferenceRM": "reward_service.rm.model",
    "PreferencePair": "reward_service.rm.data",
    "PairsFormatError": "reward_service.rm.data",
    "load_pairs": "reward_service.rm.data",
    "synthesize_pairs": "reward_service.rm.data",
    "train": "reward_service.rm.train",
    "TrainConfig": "reward_service.rm.train",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
