"""The user simulator's own score of each agent turn (``UserTurn.feedback``, in [0, 1] by the dialogue
contract), carried by the user turn that reacted to it."""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import List, Optional, Union

from antiphon.protocol import Trajectory
from reward_service.component import RewardComponent, Score, agent_turns, next_user_turn
from reward_service.verifiers.common import not_applicable

class SatisfactionMode(str, Enum):
    mean = "mean"  # the mean of the feedback on the dialogue's agent turns
    last = "last"  # the last feedback given


@dataclass
class SatisfactionParams:
    """``DialogueSatisfaction``'s parameters, checked when the config is composed
    (``reward.components[k].params.mode=...``)."""

    mode: SatisfactionMode = SatisfactionMode.mean


def _feedback(traj: Trajectory) -> List[Optional[float]]:
    """Per agent turn, the feedback on it, or None (no user turn followed, or it gave none)."""
    out = []
    for _, agent in agent_turns(traj):
        user = next_user_turn(traj, agent)
        out.append(None if user is None else user.feedback)
    return out


class SimulatorFeedback(RewardComponent):
    """Per agent turn: the feedback the next user turn gave on it, as is. A turn without one (the dialogue
    ended before the user reacted, or the simulator gives no feedback) scores 0.0, not applicable."""

    scope = "turn"

    def score(self, traj: Trajectory) -> List[Score]:
        return [not_applicable() if f is None else Score(float(f), {"applicable": True}) for f in _feedback(traj)]


class DialogueSatisfaction(RewardComponent):
    """Per dialogue: the ``mean`` of the feedback on its agent turns, or the ``last`` feedback given (the
    user's verdict on the turn that ended the dialogue, or the latest before it). Turns without feedback are
    skipped; a dialogue with none scores 0.0, not applicable."""

    scope = "dialogue"
    Params = SatisfactionParams

    def __init__(self, mode: Union[str, SatisfactionMode] = SatisfactionParams.mode, name: Optional[str] = None):
        super().__init__(name)
        try:
            self.mode = SatisfactionMode(mode).value
        except ValueError:
            raise ValueError(f"{type(self).__name__}: mode={mode!r} must be one of "
                             f"{[m.value for m in SatisfactionMode]}") from None

    def score(self, traj: Trajectory) -> Score:
        given = [float(f) for f in _feedback(traj) if f is not None]
        if not given:
            return not_applicable(mode=self.mode)
        value = sum(given) / len(given) if self.mode == "mean" else given[-1]
        return Score(value, {"applicable": True, "mode": self.mode, "turns_with_feedback": len(given)})
