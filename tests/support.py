"""Test doubles shared by unit tests of single parts (importable as ``support``: pytest's pythonpath)."""
from __future__ import annotations


class ScriptedEngine:
    """A stand-in policy engine for unit tests of the dialogue loop and simulators: replies with fixed
    token ids, records every request it saw."""

    def __init__(self, replies, version: int = 7):
        self.replies, self.requests, self.version = list(replies), [], version

    async def generate(self, req):
        from antiphon.generation import GenerationResult

        self.requests.append(req)
        ids = self.replies.pop(0)
        return GenerationResult(req.request_id, ids, [-0.5] * len(ids), self.version, "stop", len(req.prompt_ids))


# -- reward components for service tests (importable in spawned replica processes) --------------------
import time as _time  # noqa: E402

from reward_service.component import RewardComponent, Score  # noqa: E402


class ReplyLength(RewardComponent):
    """Per turn: the reply's length in characters / 100."""

    scope = "turn"

    def score(self, traj):
        return [Score(len(t.text) / 100) for t in traj.turns if t.role == "assistant"]


class SlowConstant(RewardComponent):
    """Per dialogue: ``value``, after sleeping ``sleep_s`` for every batch (holds messages mid-batch)."""

    scope = "dialogue"

    def __init__(self, value: float = 1.0, sleep_s: float = 0.0, name=None):
        super().__init__(name)
        self.value, self.sleep_s = value, sleep_s

    async def score_batch(self, trajs):
        import asyncio

        await asyncio.sleep(self.sleep_s)
        return [Score(self.value) for _ in trajs]


class Exploding(RewardComponent):
    scope = "turn"

    def score(self, traj):
        raise RuntimeError("boom")


def make_trajectory(tid: str, replies=("I hear you.", "Bye."), user_emotions=("sad", "calm")):
    """A small valid two-turn Trajectory: user, agent, user, agent (token ids are placeholders)."""
    import numpy as np

    from antiphon.protocol import AudioClip, Trajectory, TurnRecord

    turns, pos = [], 0
    ids, mask, lp, ver = [], [], [], []
    clip = AudioClip.from_float(0.2 * np.sin(np.linspace(0, 300, 8000)), 16000)
    for k, reply in enumerate(replies):
        turns.append(TurnRecord("user", pos, pos + 4, text=f"user {k}", emotion=user_emotions[k % len(user_emotions)],
                                audio=clip, feedback=None if k == 0 else 0.5))
        ids += [1, 2, 3, 4]; mask += [0] * 4; lp += [0.0] * 4; ver += [-1] * 4  # noqa: E702
        pos += 4
        n = 3
        turns.append(TurnRecord("assistant", pos, pos + n, text=reply, reasoning="hm", weight_version=0,
                                finish_reason="stop"))
        ids += [5] * n; mask += [1] * n; lp += [-0.5] * n; ver += [0] * n  # noqa: E702
        pos += n
    return Trajectory(tid, "test", {"scenario_id": tid}, np.asarray(ids, np.int32), np.asarray(mask, np.uint8),
                      np.asarray(lp, np.float32), np.asarray(ver, np.int32), turns, end_reason="user_ended")
