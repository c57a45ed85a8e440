"""The dialogue loop's settings come from the schema: one place for every default."""
from __future__ import annotations

import dataclasses

import pytest

from antiphon.dialogue_loop import DialogueSettings
from antiphon.config.schema import DialogueConfig, ModelConfig, RolloutConfig


def test_defaults_are_the_schemas():
    s = DialogueSettings()
    assert {f.name: getattr(s, f.name) for f in dataclasses.fields(DialogueConfig)} == dataclasses.asdict(
        DialogueConfig())
    assert (s.max_new_tokens, s.max_context_tokens, s.sample_rate) == (
        RolloutConfig().max_new_tokens, ModelConfig().max_model_len, ModelConfig().sample_rate)


def test_from_config_takes_the_dataclasses_or_their_mappings():
    rollout = RolloutConfig(max_new_tokens=48, dialogue=DialogueConfig(max_turns=2, think_budget=8))
    model = ModelConfig(max_model_len=1024, sample_rate=8000)
    typed = DialogueSettings.from_config(rollout, model)
    assert (typed.max_turns, typed.think_budget, typed.max_new_tokens, typed.max_context_tokens,
            typed.sample_rate) == (2, 8, 48, 1024, 8000)
    plain = DialogueSettings.from_config({"max_new_tokens": 48, "dialogue": dataclasses.asdict(rollout.dialogue)},
                                         {"max_model_len": 1024, "sample_rate": 8000})
    assert plain == typed


def test_an_unknown_dialogue_key_is_named():
    with pytest.raises(ValueError, match=r"rollout.dialogue: unknown keys \['thinkbudget'\]"):
        DialogueSettings.from_config({"max_new_tokens": 8, "dialogue": {"thinkbudget": 3}},
                                     {"max_model_len": 64, "sample_rate": 16000})
