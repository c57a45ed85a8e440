"""Scored dialogues -> token-level training tensors.

One dialogue per row, right-padded: a causal model attends only to earlier positions of its own row,
and padding sits after every real token, so nothing leaks between dialogues (tested). Every per-token
tensor is in *log-prob position* space, [B, T-1]: column j scores the token at expanded position j+1
(audio placeholders are expanded to their clip's embeddings, as the rollout engine does).

- ``mask``: 1 on tokens the policy sampled; user and simulator tokens, template glue, forced tokens,
  audio placeholders and padding are 0 and never carry loss.
- ``behav_logp`` / ``versions``: what the rollout engine reported for each policy token.
- ``rewards``: each agent turn's reward at that turn's last policy token, plus the dialogue reward at
  the last policy token of the dialogue.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Union

import numpy as np
import torch

from antiphon.config.schema import RewardNorm
from antiphon.model.audio import clip_key
from learner.policy import PolicyModel, trajectory_sample


@dataclass
class Batch:
    ids: List[str]  # trajectory ids, one per row
    groups: List[Any]  # group key per row (rollouts of one scenario share it)
    model_inputs: Dict[str, Any]  # PolicyModel.build_batch output
    mask: torch.Tensor  # [B, T-1] float
    behav_logp: torch.Tensor
    versions: torch.Tensor  # long, -1 off policy tokens
    rewards: torch.Tensor
    scores: torch.Tensor  # [B] total reward per dialogue (what the group baseline compares)
    components: Dict[str, List[float]]  # mean raw value per dialogue, per reward component (for logging)
    turn_idx: torch.Tensor  # [B, T-1] long: the agent turn (0, 1, ...) each policy token belongs to, -1 elsewhere
    turn_rewards: List[List[float]]  # per row, each agent turn's reward
    dialogue_rewards: List[float]  # per row

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, idx: Sequence[int]) -> "Batch":
        """A minibatch of rows (padding beyond its longest row is cut)."""
        idx = list(idx)
        width = int(self.model_inputs["attention_mask"][idx].sum(1).max())
        clips, feats = [], []
        per_row = self.model_inputs["clips_per_row"]
        starts = np.cumsum([0] + per_row)
        for i in idx:
            clips += self.model_inputs["clips"][starts[i]:starts[i + 1]]
            feats += self.model_inputs["audio_features"][starts[i]:starts[i + 1]]
        mi = {"input_ids": self.model_inputs["input_ids"][idx, :width],
              "attention_mask": self.model_inputs["attention_mask"][idx, :width],
              "clips": clips, "audio_features": feats, "clips_per_row": [per_row[i] for i in idx],
              "completion_pos": [self.model_inputs["completion_pos"][i] for i in idx]}
        cut = width - 1
        return Batch([self.ids[i] for i in idx], [self.groups[i] for i in idx], mi, self.mask[idx, :cut],
                     self.behav_logp[idx, :cut], self.versions[idx, :cut], self.rewards[idx, :cut],
                     self.scores[idx], {k: [v[i] for i in idx] for k, v in self.components.items()},
                     self.turn_idx[idx, :cut], [self.turn_rewards[i] for i in idx],
                     [self.dialogue_rewards[i] for i in idx])


def turn_rewards(scored, reward_norm: Union[RewardNorm, str] = RewardNorm.none, stats: Dict[str, Any] | None = None):
    """(per-agent-turn rewards, dialogue reward) of one scored dialogue.

    ``none``: as the reward service composed them (its own per-component normalisation applied).
    ``batch``: each component's raw values z-scored with ``stats[name] = (mean, std)`` over the batch,
    then weighted -- components on very different scales then pull with the weights the config gives.
    """
    r = scored.rewards
    if RewardNorm(reward_norm) is RewardNorm.none:
        return list(r.turn), float(r.dialogue)
    turn = [0.0] * len(r.turn)
    dialogue = 0.0
    for name, c in r.components.items():
        mean, std = stats[name]
        z = [(x - mean) / std if a else 0.0 for x, a in zip(c["raw"], c["applicable"])]
        if c["scope"] == "turn":
            turn = [t + c["weight"] * x for t, x in zip(turn, z)]
        else:
            dialogue += c["weight"] * z[0]
    return turn, dialogue


def component_stats(scored_list) -> Dict[str, Any]:
    vals: Dict[str, List[float]] = {}
    for s in scored_list:
        for name, c in s.rewards.components.items():
            vals.setdefault(name, []).extend(x for x, a in zip(c["raw"], c["applicable"]) if a)
    return {k: (float(np.mean(v)) if v else 0.0, float(np.std(v)) + 1e-6 if v else 1.0) for k, v in vals.items()}


def build_batch(policy: PolicyModel, scored_list, reward_norm: Union[RewardNorm, str] = RewardNorm.none) -> Batch:
    samples = [trajectory_sample(s.trajectory) for s in scored_list]
    mi = policy.build_batch(samples)
    mi["clips_per_row"] = [len(x.audio) for x in samples]
    # Log-mel features depend on the clip only: computed once here for every forward pass of a step, and
    # once per distinct clip (a group's rollouts hear the same user turns).
    keys = [clip_key(c) for c in mi["clips"]]
    by_clip: Dict[bytes, Any] = {}
    for k, c in zip(keys, mi["clips"]):
        if k not in by_clip:
            by_clip[k] = policy.frontend.features(c)
    mi["audio_features"] = [by_clip[k] for k in keys]
    B, T = mi["input_ids"].shape
    mask = torch.zeros(B, T - 1)
    behav = torch.zeros(B, T - 1)
    versions = torch.full((B, T - 1), -1, dtype=torch.long)
    rewards = torch.zeros(B, T - 1)
    turn_idx = torch.full((B, T - 1), -1, dtype=torch.long)
    all_turn_r, all_dial_r = [], []
    stats = component_stats(scored_list) if RewardNorm(reward_norm) is RewardNorm.batch else None
    comps: Dict[str, List[float]] = {}
    for i, s in enumerate(scored_list):
        t = s.trajectory
        # Token j >= 1 of the dialogue sits at expanded position pos[j-1]; its log-prob is column pos - 1.
        cols = np.asarray(mi["completion_pos"][i], dtype=np.int64) - 1
        pm = t.policy_mask[1:].astype(bool)
        c = torch.as_tensor(cols[pm])
        mask[i, c] = 1.0
        behav[i, c] = torch.as_tensor(t.logprobs[1:][pm], dtype=torch.float32)
        versions[i, c] = torch.as_tensor(t.versions[1:][pm], dtype=torch.long)
        turn_r, dial_r = turn_rewards(s, reward_norm, stats)
        policy_idx = np.flatnonzero(t.policy_mask)  # original token indices
        agent_turns = [x for x in t.turns if x.role == "assistant"]
        if len(turn_r) != len(agent_turns):
            raise ValueError(f"trajectory {t.trajectory_id}: {len(turn_r)} turn rewards for "
                             f"{len(agent_turns)} agent turns")
        for k, (turn, rew) in enumerate(zip(agent_turns, turn_r)):
            inside = policy_idx[(policy_idx >= turn.start) & (policy_idx < turn.end)]
            if len(inside):
                turn_idx[i, torch.as_tensor(cols[inside - 1])] = k
            if len(inside) and rew:
                rewards[i, cols[inside[-1] - 1]] += float(rew)
        all_turn_r.append([float(x) for x in turn_r])
        all_dial_r.append(float(dial_r))
        if len(policy_idx):
            rewards[i, cols[policy_idx[-1] - 1]] += float(dial_r)
        for name, cv in s.rewards.components.items():
            vals = [x for x, a in zip(cv["raw"], cv["applicable"]) if a]
            comps.setdefault(name, [float("nan")] * len(scored_list))[i] = float(np.mean(vals)) if vals else float("nan")
    groups = [s.trajectory.meta.get("group", s.trajectory.scenario.get("scenario_id")) for s in scored_list]
    scores = torch.tensor([sum(t) + d for t, d in zip(all_turn_r, all_dial_r)])
    return Batch([s.trajectory.trajectory_id for s in scored_list], groups, mi, mask, behav, versions, rewards,
                 scores, comps, turn_idx, all_turn_r, all_dial_r)
