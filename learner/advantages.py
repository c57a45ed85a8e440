"""Advantage and return estimators for the learner, over batch-major ``[B, T]`` dialogue tensors.

A row is one dialogue. ``mask`` is 1 exactly on policy tokens (those the policy sampled); user and
simulator tokens, template glue, audio placeholders and padding are 0. A multi-turn dialogue has one
run of policy tokens per agent turn. The MDP the learner optimises lives on policy tokens only: the
state after a policy token is the *next policy token* of the row, however many masked tokens lie
between (the environment's reply is part of that transition), and the episode ends after the row's
last policy token (bootstrap value 0). Every function here therefore skips masked positions entirely
and writes 0 there.

Also the critic-free baselines (RLOO / GRPO group baselines) and the usual diagnostics.
"""
from __future__ import annotations

from typing import Dict, Hashable, List, Sequence, Tuple

import torch
from torch import Tensor


def _as_bool_mask(mask: Tensor, like: Tensor) -> Tensor:
    if mask.shape != like.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} != tensor shape {tuple(like.shape)}")
    return mask.to(device=like.device) != 0


@torch.no_grad()
def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> Tuple[Tensor, Tensor]:
    """Generalised advantage estimation over each row's policy tokens only.

    Masked positions are skipped as if absent: a policy token's successor is the next policy token in
    the row, and after the last one the episode ends with bootstrap value 0. Rewards must sit on
    policy tokens (a reward on a masked position would be silently lost, so it is an error).
    Returns ``(advantages, returns)``, both ``[B, T]``, 0 on masked positions, with
    ``returns = advantages + values`` on policy tokens. No gradient flows.
    """
    if rewards.dim() != 2 or values.shape != rewards.shape:
        raise ValueError(f"rewards {tuple(rewards.shape)} and values {tuple(values.shape)} must both be [B, T]")
    m = _as_bool_mask(mask, rewards)
    rewards = rewards.detach()
    values = values.detach()
    if bool(((rewards != 0) & ~m).any()):
        raise ValueError("rewards: nonzero reward on a masked (non-policy) position")
    # Masked positions may hold anything (e.g. value-head outputs on user tokens); never read them.
    zero = torch.zeros((), dtype=rewards.dtype, device=rewards.device)
    r = torch.where(m, rewards, zero)
    v = torch.where(m, values.to(rewards.dtype), zero)

    B, T = r.shape
    adv = torch.zeros_like(r)
    next_value = torch.zeros(B, dtype=r.dtype, device=r.device)  # V of the next policy token; 0 past the end
    next_adv = torch.zeros(B, dtype=r.dtype, device=r.device)  # GAE of the next policy token
    for t in range(T - 1, -1, -1):
        mt = m[:, t]
        delta = r[:, t] + gamma * next_value - v[:, t]
        a = delta + gamma * lam * next_adv
        adv[:, t] = torch.where(mt, a, zero)
        # Carries only advance on policy tokens, so masked stretches are transparent.
        next_value = torch.where(mt, v[:, t], next_value)
        next_adv = torch.where(mt, a, next_adv)
    returns = torch.where(m, adv + v, zero)
    return adv, returns


@torch.no_grad()
def returns_to_go(rewards: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """Discounted reward sum from each policy token onward, over policy tokens only (0 on masked).

    This is GAE with a zero critic and lambda = 1, so it shares :func:`gae`'s conventions and checks.
    """
    _, ret = gae(rewards, torch.zeros_like(rewards), mask, gamma, 1.0)
    return ret


def group_baseline_advantages(
    scores: Tensor,
    groups: Sequence[Hashable],
    leave_one_out: bool = True,
    scale: str = "none",
    eps: float = 1e-6,
) -> Tensor:
    """Critic-free advantage per sample: its score minus a baseline from its group (RLOO / GRPO).

    ``groups[i]`` is any hashable key (e.g. the prompt id, or the same key for all to use the batch
    mean). ``leave_one_out`` uses the mean of the *other* members (RLOO, unbiased since the baseline
    does not depend on the sample itself); otherwise the whole group's mean (GRPO). ``scale="std"``
    divides by the group's sample standard deviation (Bessel-corrected) plus ``eps``, as GRPO does.
    A group of size 1 gets advantage 0: without a second sample there is no baseline, and using the
    raw score would inject an uncentred signal.
    """
    if scale not in ("none", "std"):
        raise ValueError(f"unknown scale {scale!r} (expected 'none' or 'std')")
    if scores.dim() != 1 or scores.shape[0] != len(groups):
        raise ValueError(f"scores must be [N] with N == len(groups); got {tuple(scores.shape)} vs {len(groups)}")
    scores = scores.detach()
    ids: Dict[Hashable, int] = {}
    gid: List[int] = [ids.setdefault(g, len(ids)) for g in groups]
    idx = torch.tensor(gid, dtype=torch.long, device=scores.device)
    G = len(ids)
    s = scores.to(torch.float64)  # group sums in fp64: large groups of similar scores cancel badly in fp32
    count = torch.zeros(G, dtype=s.dtype, device=s.device).index_add_(0, idx, torch.ones_like(s))
    total = torch.zeros(G, dtype=s.dtype, device=s.device).index_add_(0, idx, s)
    n = count[idx]
    single = n < 2
    if leave_one_out:
        baseline = (total[idx] - s) / torch.where(single, torch.ones_like(n), n - 1)
    else:
        baseline = total[idx] / n
    adv = s - baseline
    if scale == "std":
        mean = total / count
        sq = torch.zeros(G, dtype=s.dtype, device=s.device).index_add_(0, idx, (s - mean[idx]) ** 2)
        std = torch.sqrt(sq / torch.clamp(count - 1, min=1))
        adv = adv / (std[idx] + eps)
    adv = torch.where(single, torch.zeros_like(adv), adv)
    return adv.to(scores.dtype)


def whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Normalise ``x`` by the mean and (population) std over masked positions; 0 elsewhere.

    With ``shift_mean=False`` the mean is added back, so only the scale changes (keeps the sign
    balance of e.g. advantages as computed). Raises if the mask selects nothing.
    """
    m = _as_bool_mask(mask, x)
    n = m.sum()
    if int(n) == 0:
        raise ValueError("whiten: mask selects no positions")
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    xs = torch.where(m, x, zero)
    mean = xs.sum() / n
    var = torch.where(m, (xs - mean) ** 2, zero).sum() / n
    out = (xs - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(m, out, zero)


@torch.no_grad()
def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> float:
    """``1 - Var[returns - values] / Var[returns]`` over masked positions; nan if ``Var[returns] == 0``.

    1 means the critic predicts returns perfectly, 0 means no better than a constant, < 0 worse.
    """
    m = _as_bool_mask(mask, returns)
    if int(m.sum()) == 0:
        return float("nan")
    r = returns[m].double()
    d = r - values[m].double()
    var_r = r.var(unbiased=False)
    if float(var_r) == 0.0:
        return float("nan")
    return float(1.0 - d.var(unbiased=False) / var_r)
