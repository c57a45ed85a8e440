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


def make_scored_dialogue(policy, rng, tid: str, group=0, n_turns: int = 2, version: int = 0,
                         reply_len=(3, 8), turn_reward=(0.5, -0.25, 1.0), dialogue_reward: float = 0.75,
                         clip_seconds=None):
    """A real-layout scored dialogue for learner tests: chat-format token ids with one ``<|AUDIO|>`` per
    user turn (a tone each, ``clip_seconds[k]`` long, default 0.4 + 0.2 k s), agent turns of random tokens sampled as policy tokens (plus a forced,
    non-policy ``</think>`` and the turn's glue), and behaviour log-probs that ``policy`` itself gives --
    so a learner with the same weights sees ratio 1."""
    import numpy as np

    from antiphon.model.chat import ChatFormat
    from antiphon.protocol import AudioClip, Rewards, ScoredTrajectory, Trajectory, TurnRecord
    from learner.policy import trajectory_sample

    chat = ChatFormat(policy.tokenizer)
    allowed = np.flatnonzero(~policy.banned.cpu().numpy())
    ids, mask, turns = [], [], []
    for k in range(n_turns):
        start = len(ids)
        f0 = 150 + 40 * k
        seconds = 0.4 + 0.2 * k if clip_seconds is None else clip_seconds[k]
        wave = 0.3 * np.sin(2 * np.pi * f0 * np.arange(int(16000 * seconds)) / 16000)
        clip = AudioClip.from_float(wave, 16000)
        ids += chat.user_turn(f"user says {k}", num_audio=1) + chat.assistant_prefix(True)
        mask += [0] * (len(ids) - len(mask))
        turns.append(TurnRecord("user", start, len(ids), text=f"user says {k}", emotion="sad", audio=clip,
                                feedback=None if k == 0 else 0.5))
        a0 = len(ids)
        n = int(rng.integers(*reply_len))
        ids += [int(x) for x in rng.choice(allowed, size=n)]
        mask += [1] * n
        ids += [chat.tokenizer.convert_tokens_to_ids("</think>")]  # forced: not a policy token
        mask += [0]
        m = int(rng.integers(1, 4))
        ids += [int(x) for x in rng.choice(allowed, size=m)] + [chat.im_end]
        mask += [1] * (m + 1)
        ids += chat.newline
        mask += [0] * len(chat.newline)
        turns.append(TurnRecord("assistant", a0, len(ids), text="reply", reasoning="r", emotion="calm",
                                weight_version=version, finish_reason="stop"))
    mask_a = np.asarray(mask, np.uint8)
    traj = Trajectory(tid, "test", {"scenario_id": f"s{group}"}, np.asarray(ids, np.int32), mask_a,
                      np.zeros(len(ids), np.float32), np.where(mask_a == 1, version, -1).astype(np.int32), turns,
                      end_reason="user_ended", meta={"group": group, "wall_s": 1.0})
    lp = policy.completion_logprobs([trajectory_sample(traj)])[0]
    traj.logprobs = np.concatenate([[0.0], lp]).astype(np.float32) * mask_a
    rewards = [float(turn_reward[k % len(turn_reward)]) for k in range(n_turns)]
    comps = {"match": {"scope": "turn", "weight": 1.0, "status": "ok", "raw": rewards, "norm": rewards,
                       "applicable": [True] * n_turns},
             "done": {"scope": "dialogue", "weight": 1.0, "status": "ok", "raw": [dialogue_reward],
                      "norm": [dialogue_reward], "applicable": [True]}}
    return ScoredTrajectory(traj, Rewards(turn=rewards, dialogue=dialogue_reward, components=comps))


# -- a simulator that declares its parameters (config tests) ---------------------------------------------
from dataclasses import dataclass as _dataclass  # noqa: E402
from dataclasses import field as _field  # noqa: E402
from typing import Optional as _Optional  # noqa: E402

from antiphon.dialogue import UserSimulator  # noqa: E402


@_dataclass
class CountingParams:
    turns: int = 2
    seed: int = 0  # offered from the schema's simulator.seed
    script: _Optional[str] = _field(default=None, metadata={"path": True})  # must exist when given

    def __post_init__(self):
        if self.turns < 1:
            raise ValueError(f"turns={self.turns} must be >= 1")


class CountingSimulator(UserSimulator):
    """Says its turn number ``turns`` times, silently; checks of ``Params`` are what tests look at."""

    Params = CountingParams

    def __init__(self, turns: int = CountingParams.turns, seed: int = 0, script: _Optional[str] = None):
        self.turns, self.seed, self.script, self.said = turns, seed, script, 0

    async def _say(self):
        import numpy as np

        from antiphon.dialogue import UserTurn

        self.said += 1
        return UserTurn(str(self.said), np.zeros(160, np.float32), 16000, done=self.said > self.turns)

    async def start(self, scenario):
        return await self._say()

    async def react(self, agent):
        return await self._say()
