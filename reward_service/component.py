"""The reward component contract: a named scorer of each agent turn, or of the whole dialogue.

    class Brevity(RewardComponent):
        scope = "turn"
        def score(self, traj):
            return [Score(-len(t.text) / 100) for _, t in agent_turns(traj)]

Components are listed and weighted in the ``reward`` config (``_target_``, weight, scope, timeout,
normalisation, ``params``); the service calls ``score_batch`` with a batch of trajectories. Override
``score_batch`` (sync or ``async``) to batch a model's forward passes across trajectories; otherwise
``score`` is called per trajectory in a worker thread.

Parameters: the entry's ``params`` are the constructor's keyword arguments. A component may declare them
as a dataclass, ``Params = MyParams``: they are then checked and typed against it when the config is
composed -- ``reward.components[2].params.threshold='high': ...`` before anything starts, Enum fields
accept only their members, a ``__post_init__`` may check ranges, a field marked
``metadata={"path": True}`` must name an existing file -- and the component is constructed with every field
of it as a keyword argument (the dataclass's defaults are the defaults). Without ``Params`` the values
must bind to the constructor's signature.
"""
from __future__ import annotations

import abc
import asyncio
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from antiphon.protocol import Trajectory, TurnRecord

SCOPES = ("turn", "dialogue")


@dataclass
class Score:
    value: float
    details: Dict[str, Any] = field(default_factory=dict)


# turn scope: one Score per agent turn, in order; dialogue scope: one Score.
ComponentResult = Union[List[Score], Score]


def agent_turns(traj: Trajectory) -> List[Tuple[Optional[TurnRecord], TurnRecord]]:
    """Each agent turn with the user turn it answered (None if the dialogue opened with the agent)."""
    out, last_user = [], None
    for t in traj.turns:
        if t.role == "user":
            last_user = t
        else:
            out.append((last_user, t))
    return out


def next_user_turn(traj: Trajectory, agent: TurnRecord) -> Optional[TurnRecord]:
    """The user turn that reacted to ``agent`` (it carries the simulator's feedback on it), if any."""
    seen = False
    for t in traj.turns:
        if t is agent:
            seen = True
        elif seen and t.role == "user":
            return t
    return None


class RewardComponent(abc.ABC):
    """Subclass and implement ``score`` (or ``score_batch``). ``name`` defaults to the class name."""

    scope: str = "turn"
    Params: Optional[type] = None  # a parameters dataclass (see the module docstring), or None

    def __init__(self, name: Optional[str] = None):
        self.name = name or type(self).__name__

    def score(self, traj: Trajectory) -> ComponentResult:
        raise NotImplementedError(f"{type(self).__name__} implements neither score nor score_batch")

    async def score_batch(self, trajs: Sequence[Trajectory]) -> List[ComponentResult]:
        return list(await asyncio.gather(*(asyncio.to_thread(self.score, t) for t in trajs)))
