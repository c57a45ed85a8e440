"""PPO-family losses for the learner, over batch-major ``[B, T]`` dialogue tensors.

``mask`` is 1 exactly on policy tokens. Every loss reads its inputs through ``torch.where(mask, x, 0)``
*before* any arithmetic, so masked positions (user tokens, audio placeholders, padding) contribute
exactly zero gradient even when they hold NaN/inf: multiplying by the mask afterwards would not do,
because ``0 * nan`` is nan and ``0 * inf`` in a backward pass is nan too.

Policy loss: decoupled PPO (Hilton et al. 2021, "Batch size-invariance for policy optimization";
the AReaL asynchronous-RL objective). Three policies take part: the *behaviour* policy that sampled
the tokens (the rollout engine, possibly several weight versions stale), the *proximal* policy
(the learner's weights before this update, log-probs recomputed and detached), and the current
policy. Clipping is applied around the proximal policy, and a detached importance weight
``prox / behav`` corrects for the staleness of the samples.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

AGG_MODES = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum")


def _bool_mask(mask: Tensor, like: Tensor) -> Tensor:
    if mask.shape != like.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} != tensor shape {tuple(like.shape)}")
    return mask.to(device=like.device) != 0


def _same_shape(ref: Tensor, **named: Optional[Tensor]) -> None:
    # torch.where would broadcast a mis-shaped input silently.
    for name, t in named.items():
        if t is not None and t.shape != ref.shape:
            raise ValueError(f"{name} shape {tuple(t.shape)} != {tuple(ref.shape)}")


def _masked(x: Tensor, m: Tensor) -> Tensor:
    """``x`` on policy tokens, 0 elsewhere; gradient to masked positions is exactly 0."""
    return torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device))


def _check_agg(mode: str) -> None:
    if mode not in AGG_MODES:
        raise ValueError(f"unknown aggregation mode {mode!r} (expected one of {AGG_MODES})")


def aggregate(x: Tensor, mask: Tensor, mode: str) -> Tensor:
    """Reduce a per-token ``[B, T]`` loss to a scalar over masked positions.

    - ``token_mean``: sum over all masked tokens of the batch / their count (long turns weigh more).
    - ``seq_mean_token_mean``: mean over rows with at least one token of each row's token mean
      (every dialogue weighs the same).
    - ``seq_mean_token_sum``: mean over all ``B`` rows of each row's token sum (a constant
      normaliser, so no length bias from dividing by a varying count; rows without tokens add 0).
    An empty mask gives 0 (still attached to the graph).
    """
    _check_agg(mode)
    m = _bool_mask(mask, x)
    xs = _masked(x, m)
    if mode == "token_mean":
        return xs.sum() / m.sum().clamp(min=1).to(x.dtype)
    row_sum = xs.sum(dim=-1)
    if mode == "seq_mean_token_sum":
        return row_sum.sum() / max(x.shape[0], 1)
    row_n = m.sum(dim=-1)
    has = row_n > 0
    row_mean = row_sum / row_n.clamp(min=1).to(x.dtype)
    return _masked(row_mean, has).sum() / has.sum().clamp(min=1).to(x.dtype)


def _mean(x: Tensor, m: Tensor) -> float:
    n = int(m.sum())
    return float(x[m].double().sum() / n) if n else 0.0


def ppo_policy_loss(
    logp: Tensor,
    prox_logp: Tensor,
    behav_logp: Optional[Tensor],
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    behav_cap: Optional[float] = None,
    behav_mode: str = "truncate",
    agg: str = "token_mean",
) -> Tuple[Tensor, Dict[str, float]]:
    """Decoupled PPO clipped surrogate, weighted per token by the behaviour importance weight.

    ``r = exp(logp - prox_logp)``, surrogate ``-min(r A, clip(r, 1 - clip_low, 1 + clip_high) A)``,
    weight ``w = exp(prox_logp - behav_logp)`` (detached; 1 when ``behav_logp`` is None, i.e. plain
    on-policy PPO). ``behav_cap`` bounds ``w``: ``"truncate"`` uses ``min(w, cap)``; ``"mask"`` drops
    tokens with ``w > cap`` from the loss (and from the aggregation's normaliser). Per-token loss
    ``w * surrogate`` is reduced with :func:`aggregate`.

    Metrics are over all policy tokens (before any ``mask``-mode drop):
    ``ratio/{mean,max,min}``; ``clip/low_frac`` (A < 0 and r < 1 - clip_low) and ``clip/high_frac``
    (A > 0 and r > 1 + clip_high), the tokens whose gradient the clip removes; ``kl/approx`` =
    mean of ``0.5 (logp - prox)^2`` (the k2 estimate of the current-vs-proximal KL);
    ``kl/behav_prox`` = k3 estimate of KL(behaviour || proximal), ``mean(w - log w - 1)`` with
    ``log w = prox - behav`` — this direction because the tokens are samples of the behaviour
    policy, which makes k3 unbiased for it; ``behav/imp_weight_{mean,max}`` of the *uncapped* w;
    ``behav/capped_frac`` = fraction of tokens with ``w > cap``.
    """
    _check_agg(agg)
    if behav_mode not in ("truncate", "mask"):
        raise ValueError(f"unknown behav_mode {behav_mode!r} (expected 'truncate' or 'mask')")
    _same_shape(logp, prox_logp=prox_logp, behav_logp=behav_logp, advantages=advantages)
    m = _bool_mask(mask, logp)
    logp_s = _masked(logp, m)
    prox_s = _masked(prox_logp.detach(), m)
    adv_s = _masked(advantages.detach(), m)

    log_ratio = logp_s - prox_s
    ratio = torch.exp(log_ratio)
    surr = -torch.minimum(ratio * adv_s, torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * adv_s)

    if behav_logp is None:
        log_w = torch.zeros_like(prox_s)
    else:
        log_w = prox_s - _masked(behav_logp.detach(), m)
    w_raw = torch.exp(log_w)
    loss_mask = m
    capped = torch.zeros_like(m)
    w = w_raw
    if behav_cap is not None:
        capped = m & (w_raw > behav_cap)
        if behav_mode == "truncate":
            w = torch.clamp(w_raw, max=behav_cap)
        else:
            loss_mask = m & ~capped
    loss = aggregate(w * surr, loss_mask, agg)

    with torch.no_grad():
        r = ratio.detach()
        n = int(m.sum())
        metrics = {
            "ratio/mean": _mean(r, m),
            "ratio/max": float(r[m].max()) if n else 0.0,
            "ratio/min": float(r[m].min()) if n else 0.0,
            "clip/low_frac": _mean(((adv_s < 0) & (r < 1.0 - clip_low)).to(r.dtype), m),
            "clip/high_frac": _mean(((adv_s > 0) & (r > 1.0 + clip_high)).to(r.dtype), m),
            "kl/approx": _mean(0.5 * log_ratio.detach() ** 2, m),
            "kl/behav_prox": _mean(w_raw - log_w - 1.0, m),
            "behav/imp_weight_mean": _mean(w_raw, m),
            "behav/imp_weight_max": float(w_raw[m].max()) if n else 0.0,
            "behav/capped_frac": _mean(capped.to(r.dtype), m),
        }
    return loss, metrics


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip: Optional[float] = 0.2,
    agg: str = "token_mean",
) -> Tuple[Tensor, Dict[str, float]]:
    """PPO value loss ``0.5 max((v - R)^2, (v_old + clip(v - v_old, -c, c) - R)^2)``; plain
    ``0.5 (v - R)^2`` when ``clip`` is None.

    The clipped term keeps one minibatch step from moving the critic far from its rollout-time
    prediction. Metrics: ``value/clip_frac`` (tokens where the clipped term is strictly larger, i.e.
    the clip is what sets the gradient) and ``value/mean`` over policy tokens.
    """
    _check_agg(agg)
    _same_shape(values, old_values=old_values, returns=returns)
    m = _bool_mask(mask, values)
    v = _masked(values, m)
    ret = _masked(returns.detach(), m)
    unclipped = (v - ret) ** 2
    if clip is None:
        per_tok = 0.5 * unclipped
        clipped_active = torch.zeros_like(m)
    else:
        v_old = _masked(old_values.detach(), m)
        v_clip = v_old + torch.clamp(v - v_old, -clip, clip)
        clipped = (v_clip - ret) ** 2
        per_tok = 0.5 * torch.maximum(unclipped, clipped)
        clipped_active = clipped.detach() > unclipped.detach()
    loss = aggregate(per_tok, m, agg)
    with torch.no_grad():
        metrics = {
            "value/clip_frac": _mean(clipped_active.to(v.dtype), m),
            "value/mean": _mean(v.detach(), m),
        }
    return loss, metrics


def kl_penalty(logp: Tensor, ref_logp: Tensor, estimator: str = "k1") -> Tensor:
    """Per-token estimate of KL(policy || reference) from tokens sampled by the policy.

    ``k1 = logp - ref_logp`` (unbiased, high variance, can be negative per token);
    ``k3 = exp(ref - logp) - (ref - logp) - 1`` (Schulman's estimator: unbiased, always >= 0, low
    variance). No masking here: callers aggregate with their mask.
    """
    if estimator == "k1":
        return logp - ref_logp
    if estimator == "k3":
        d = ref_logp - logp
        return torch.exp(d) - d - 1.0
    raise ValueError(f"unknown KL estimator {estimator!r} (expected 'k1' or 'k3')")


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of ``softmax(logits)`` over the last axis: ``[B, T, V] -> [B, T]``.

    Banned tokens carry ``-inf`` logits; their ``p log p`` is taken as 0 (its limit) and the
    log-prob is replaced *before* the product, so neither the value nor the gradient goes NaN
    (``torch.special.entr`` would give a finite value but an infinite gradient at p = 0).
    """
    logp = torch.log_softmax(logits, dim=-1)
    finite = torch.isfinite(logp)
    logp_safe = torch.where(finite, logp, torch.zeros((), dtype=logp.dtype, device=logp.device))
    p = torch.exp(logp)
    return -(p * logp_safe).sum(dim=-1)


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
    m = _bool_mask(mask, rewards)
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
