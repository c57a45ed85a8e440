"""The preference reward model as a reward component: one learned score per agent turn.

    reward:
      components:
        - _target_: reward_service.rm.component.PreferenceRewardModel
          path: runs/rm-synthetic        # a checkpoint folder written by reward_service.rm.train
          weight: ...

Each agent turn is judged in its context: the preceding turns (user text + the emotion it was spoken with;
agent text + the style tag it used) and its own reply, rendered with its style tag (``"[gentle] I hear you"``,
from ``turn.emotion``) and never its reasoning. ``score_batch`` gathers every agent turn of every trajectory
in the batch into batched forward passes, run in a worker thread so the event loop stays free.
"""
from __future__ import annotations

import asyncio
import threading
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from antiphon.protocol import Trajectory, TurnRecord
from reward_service.component import RewardComponent, Score
from reward_service.rm.model import PreferenceRM, format_reply


def turn_context(traj: Trajectory, upto: int) -> List[Dict[str, Any]]:
    """The turns before ``traj.turns[upto]`` as the model reads them (role user|agent, text, emotion)."""
    return [{"role": "user" if t.role == "user" else "agent", "text": t.text, "emotion": t.emotion}
            for t in traj.turns[:upto]]


def turn_reply(turn: TurnRecord) -> str:
    """The agent's reply with its style tag as text, e.g. ``"[gentle] I hear you"``; never the reasoning."""
    return format_reply(turn.text, turn.emotion)


class PreferenceRewardModel(RewardComponent):
    """Scores each agent turn with a trained preference reward model (Bradley-Terry scale: differences matter).

    path: checkpoint folder (PreferenceRM.save / reward_service.rm.train --out).
    batch_size: sequences per forward pass.
    max_context_turns: override the checkpoint's context window (None: as trained).
    num_threads: if set, torch.set_num_threads(num_threads) at construction (process-wide).
    """

    scope = "turn"

    def __init__(self, path: str, name: Optional[str] = None, batch_size: int = 32,
                 max_context_turns: Optional[int] = None, num_threads: Optional[int] = None):
        super().__init__(name)
        if num_threads is not None:
            torch.set_num_threads(int(num_threads))
        self.path = str(path)
        self.batch_size = int(batch_size)
        self.model = PreferenceRM.load(self.path)
        self.model.requires_grad_(False)
        if max_context_turns is not None:
            self.model.max_context_turns = int(max_context_turns)
        self.checkpoint_meta = dict(self.model.meta)
        self._lock = threading.Lock()  # one forward at a time: concurrent batches would fight over the cores

    def _items(self, traj: Trajectory) -> List[Tuple[List[Dict[str, Any]], str, TurnRecord]]:
        return [(turn_context(traj, i), turn_reply(t), t) for i, t in enumerate(traj.turns) if t.role != "user"]

    def _score_many(self, trajs: Sequence[Trajectory]) -> List[List[Score]]:
        items = [self._items(t) for t in trajs]
        flat = [x for per in items for x in per]
        if flat:
            with self._lock:
                values = self.model.score([c for c, _, _ in flat], [r for _, r, _ in flat], self.batch_size).tolist()
        else:
            values = []
        out, k = [], 0
        for per in items:
            scores = []
            for ctx, _, turn in per:
                scores.append(Score(float(values[k]), {"style": turn.emotion, "context_turns": len(ctx)}))
                k += 1
            out.append(scores)
        return out

    def score(self, traj: Trajectory) -> List[Score]:
        return self._score_many([traj])[0]

    async def score_batch(self, trajs: Sequence[Trajectory]) -> List[List[Score]]:
        return await asyncio.to_thread(self._score_many, list(trajs))
