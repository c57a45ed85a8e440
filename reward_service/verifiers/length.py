"""Verbosity: spoken replies should be short; every word past a target costs a little, up to a cap."""
from __future__ import annotations

from typing import List, Optional

from antiphon.checks import check_number
from antiphon.protocol import Trajectory
from reward_service.component import RewardComponent, Score, agent_turns
from reward_service.verifiers.common import load_tokenizer

UNITS = ("words", "tokens")


class Verbosity(RewardComponent):
    """Per agent turn: ``-min(cap, slope * (length - target))`` when the reply is longer than ``target``,
    0.0 at or below it. The value is a penalty (<= 0): give the component a positive weight.

    ``length`` is measured on the spoken reply (``turn.text``: reasoning and style tags removed), in
    whitespace-separated ``words`` or in ``tokens`` of the tokenizer at ``tokenizer_path`` (needed then).
    """

    scope = "turn"

    def __init__(self, target: int = 30, unit: str = "words", slope: float = 0.02, cap: float = 1.0,
                 tokenizer_path: Optional[str] = None, name: Optional[str] = None):
        super().__init__(name)
        owner = type(self).__name__
        if isinstance(target, bool) or not isinstance(target, int) or target < 0:
            raise ValueError(f"{owner}: target={target!r} must be an int >= 0 ({unit})")
        if unit not in UNITS:
            raise ValueError(f"{owner}: unit={unit!r} must be one of {UNITS}")
        if unit == "tokens" and tokenizer_path is None:
            raise ValueError(f"{owner}: unit='tokens' needs tokenizer_path")
        if unit == "words" and tokenizer_path is not None:
            raise ValueError(f"{owner}: tokenizer_path={tokenizer_path!r} is used only with unit='tokens'")
        self.target, self.unit = target, unit
        self.slope = check_number(f"{owner}: slope", slope, 0.0)
        self.cap = check_number(f"{owner}: cap", cap, 0.0)
        self.tokenizer = load_tokenizer(tokenizer_path, owner) if unit == "tokens" else None

    def _length(self, text: str) -> int:
        if self.tokenizer is None:
            return len(text.split())
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def score(self, traj: Trajectory) -> List[Score]:
        out = []
        for _, turn in agent_turns(traj):
            n = self._length(turn.text.strip())
            over = max(0, n - self.target)
            out.append(Score(-min(self.cap, self.slope * over) if over else 0.0,
                             {"length": n, "unit": self.unit, "target": self.target, "over": over}))
        return out
