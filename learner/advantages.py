"""Advantage and return estimators for the learner, over batch-major ``[B, T]`` dialogue tensors.

A row is one dialogue. ``mask`` is 1 exactly on policy tokens (those the policy sampled); user and
simulator tokens, template glue, audio placeholders and padding are 0. A multi-turn dialogue has one
run of policy tokens per agent turn. The MDP the learner optimises lives on policy tokens only: the
state after a policy token is the *next policy token* of the row, however many masked tokens lie
between (the environment's reply is part of that transition), and the episode ends after the row's
last policy token (bootstrap value 0). Every function here therefore skips masked positions entirely
and writes 0 there.

Also the critic-free baselines (RLOO / GRPO group baselines, per dialogue or per turn), the V-trace
targets of the APPO variant, and the usual diagnostics. :func:`compute_advantages` is what the recipe
calls: it picks the estimator the learner config names.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Dict, Hashable, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from antiphon.config.schema import Algo, Estimator, GroupCredit, GroupScale, LearnerConfig
from learner.masks import bool_mask

if TYPE_CHECKING:
    from learner.batch import Batch


def uses_critic(cfg: LearnerConfig) -> bool:
    """Whether the estimator reads the value head (GAE, V-trace): only then is there a value loss."""
    return cfg.algo is Algo.appo or cfg.estimator is Estimator.gae


@torch.no_grad()
def compute_advantages(cfg: LearnerConfig, batch: "Batch", prox_logp: Tensor, behav_logp: Tensor,
                       rewards: Tensor, values: Tensor, mask: Tensor) -> Tuple[Tensor, Tensor]:
    """``(advantages, value targets)``, both ``[B, T]`` and 0 off policy tokens, by the estimator the config
    names: V-trace targets (``algo=appo``), GAE with the learned critic (``estimator=gae``), or the
    critic-free group baseline over the dialogue's total reward (``group_credit=dialogue``) or per agent
    turn (``turn``), whose value targets are the plain returns-to-go. Whitened over the policy tokens when
    ``whiten_advantages``."""
    if cfg.algo is Algo.appo:
        adv, returns = vtrace_advantages(prox_logp, behav_logp, rewards, values, mask, cfg.gamma,
                                         clip_rho=cfg.vtrace_clip_rho, clip_pg_rho=cfg.vtrace_clip_pg_rho)
    elif cfg.estimator is Estimator.gae:
        adv, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam)
    else:
        if cfg.group_credit is GroupCredit.dialogue:
            seq_adv = group_baseline_advantages(batch.scores, batch.groups, leave_one_out=True,
                                                scale=cfg.group_scale).to(mask.device)
            adv = seq_adv[:, None] * mask
        else:
            adv = turn_group_advantages(batch, cfg.group_scale).to(mask.device) * mask
        returns = returns_to_go(rewards, mask, cfg.gamma)
    if cfg.whiten_advantages:
        adv = whiten(adv, mask) * mask
    return adv, returns


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
    m = bool_mask(mask, rewards)
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
    scale: Union[GroupScale, str] = GroupScale.none,
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
    scale = GroupScale(scale)  # ValueError naming any other value
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
    if scale is GroupScale.std:
        mean = total / count
        sq = torch.zeros(G, dtype=s.dtype, device=s.device).index_add_(0, idx, (s - mean[idx]) ** 2)
        std = torch.sqrt(sq / torch.clamp(count - 1, min=1))
        adv = adv / (std[idx] + eps)
    adv = torch.where(single, torch.zeros_like(adv), adv)
    return adv.to(scores.dtype)


def turn_group_advantages(batch: "Batch", scale: Union[GroupScale, str] = GroupScale.none) -> Tensor:
    """Critic-free, per-turn credit: a token of agent turn k gets (its turn's reward minus the mean of
    the same turn's reward in the other rollouts of its group) plus (its dialogue reward minus the
    others' mean). Rollouts of one group play the same scenario, so turn k meets the same user state
    in all of them: the comparison isolates what this turn did. [B, T-1], 0 off policy tokens."""
    adv = torch.zeros(batch.turn_idx.shape)
    dial = group_baseline_advantages(torch.tensor(batch.dialogue_rewards), batch.groups, leave_one_out=True,
                                     scale=scale)
    n_turns = max((len(t) for t in batch.turn_rewards), default=0)
    for k in range(n_turns):
        rows = [i for i, t in enumerate(batch.turn_rewards) if len(t) > k]
        a = group_baseline_advantages(torch.tensor([batch.turn_rewards[i][k] for i in rows]),
                                      [batch.groups[i] for i in rows], leave_one_out=True, scale=scale)
        for i, v in zip(rows, a.tolist()):
            adv[i][batch.turn_idx[i] == k] = v + float(dial[i])
    return adv


def whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Normalise ``x`` by the mean and (population) std over masked positions; 0 elsewhere.

    With ``shift_mean=False`` the mean is added back, so only the scale changes (keeps the sign
    balance of e.g. advantages as computed). Raises if the mask selects nothing.
    """
    m = bool_mask(mask, x)
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
    m = bool_mask(mask, returns)
    if int(m.sum()) == 0:
        return float("nan")
    r = returns[m].double()
    d = r - values[m].double()
    var_r = r.var(unbiased=False)
    if float(var_r) == 0.0:
        return float("nan")
    return float(1.0 - d.var(unbiased=False) / var_r)


def vtrace_advantages(
    target_logp: Tensor,
    behav_logp: Tensor,
    rewards: Tensor,
    values: Tensor,
    mask: Tensor,
    gamma: float,
    clip_rho: Optional[float] = 1.0,
    clip_pg_rho: Optional[float] = 1.0,
) -> Tuple[Tensor, Tensor]:
    """V-trace targets over each row's policy tokens (the APPO variant), via RLlib's ``vtrace_torch``.

    Like :func:`gae`, the trajectory of a row is its policy tokens in order (masked tokens skipped),
    ending after the last one with bootstrap value 0. Rows are packed into a dense time-major
    ``[T', B]`` layout, ``T'`` = the longest row; the discount is 0 on each row's last real step and
    on padding, and padding has zero reward, value and log-ratio, so a row's result never depends on
    another row's length. Returns ``(pg_advantages, vs_targets)`` as ``[B, T]``, 0 on masked:
    ``pg_advantages_t = min(rho_t, clip_pg_rho) (r_t + gamma vs_{t+1} - V_t)`` — RLlib's convention,
    already weighted by the clipped importance ratio, so the policy loss must not reweight by rho
    again — and ``vs_targets`` the V-trace value targets (clipped at ``clip_rho``, traces ``c`` at 1).
    No gradient flows.
    """
    from ray.rllib.algorithms.impala.torch.vtrace_torch_v2 import vtrace_torch

    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [B, T]; got {tuple(rewards.shape)}")
    for name, t in (("target_logp", target_logp), ("behav_logp", behav_logp), ("values", values)):
        if t.shape != rewards.shape:
            raise ValueError(f"{name} shape {tuple(t.shape)} != rewards shape {tuple(rewards.shape)}")
    m = bool_mask(mask, rewards)
    if bool(((rewards != 0) & ~m).any()):
        raise ValueError("rewards: nonzero reward on a masked (non-policy) position")
    B, _ = rewards.shape
    dtype, device = rewards.dtype, rewards.device
    pg_out = torch.zeros_like(rewards, dtype=dtype)
    vs_out = torch.zeros_like(rewards, dtype=dtype)
    lengths = m.sum(dim=-1)
    Tp = int(lengths.max()) if B else 0
    if Tp == 0:
        return pg_out, vs_out

    with torch.no_grad():
        rows, cols = m.nonzero(as_tuple=True)
        k = (torch.cumsum(m.to(torch.long), dim=-1) - 1)[rows, cols]  # index among the row's policy tokens

        def pack(x: Tensor) -> Tensor:
            dense = torch.zeros(B, Tp, dtype=dtype, device=device)
            dense[rows, k] = x.detach().to(dtype)[rows, cols]
            return dense.transpose(0, 1).contiguous()

        steps = torch.arange(Tp, device=device).unsqueeze(0)
        live_next = steps < (lengths.unsqueeze(1) - 1)  # a real step with a real successor
        discounts = torch.where(live_next, torch.full((), gamma, dtype=dtype, device=device),
                                torch.zeros((), dtype=dtype, device=device)).transpose(0, 1).contiguous()
        vs, pg = vtrace_torch(
            target_action_log_probs=pack(target_logp),
            behaviour_action_log_probs=pack(behav_logp),
            discounts=discounts,
            rewards=pack(rewards),
            values=pack(values),
            bootstrap_values=torch.zeros(B, dtype=dtype, device=device),
            clip_rho_threshold=clip_rho,
            clip_pg_rho_threshold=clip_pg_rho,
        )
        pg_out[rows, cols] = pg.transpose(0, 1)[rows, k]
        vs_out[rows, cols] = vs.transpose(0, 1)[rows, k]
    return pg_out, vs_out
