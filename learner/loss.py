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

from typing import Dict, Optional, Tuple, Union

import torch
from torch import Tensor

from antiphon.config.schema import BehavMode, KLEstimator, LossAgg
from learner.masks import bool_mask, masked


def _same_shape(ref: Tensor, **named: Optional[Tensor]) -> None:
    # torch.where would broadcast a mis-shaped input silently.
    for name, t in named.items():
        if t is not None and t.shape != ref.shape:
            raise ValueError(f"{name} shape {tuple(t.shape)} != {tuple(ref.shape)}")


def aggregate(x: Tensor, mask: Tensor, mode: Union[LossAgg, str]) -> Tensor:
    """Reduce a per-token ``[B, T]`` loss to a scalar over masked positions.

    - ``token_mean``: sum over all masked tokens of the batch / their count (long turns weigh more).
    - ``seq_mean_token_mean``: mean over rows with at least one token of each row's token mean
      (every dialogue weighs the same).
    - ``seq_mean_token_sum``: mean over all ``B`` rows of each row's token sum (a constant
      normaliser, so no length bias from dividing by a varying count; rows without tokens add 0).
    An empty mask gives 0 (still attached to the graph). Another ``mode`` raises ValueError (``LossAgg``).
    """
    mode = LossAgg(mode)
    m = bool_mask(mask, x)
    xs = masked(x, m)
    if mode is LossAgg.token_mean:
        return xs.sum() / m.sum().clamp(min=1).to(x.dtype)
    row_sum = xs.sum(dim=-1)
    if mode is LossAgg.seq_mean_token_sum:
        return row_sum.sum() / max(x.shape[0], 1)
    row_n = m.sum(dim=-1)
    has = row_n > 0
    row_mean = row_sum / row_n.clamp(min=1).to(x.dtype)
    return masked(row_mean, has).sum() / has.sum().clamp(min=1).to(x.dtype)


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
    behav_mode: Union[BehavMode, str] = BehavMode.truncate,
    agg: Union[LossAgg, str] = LossAgg.token_mean,
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
    agg, behav_mode = LossAgg(agg), BehavMode(behav_mode)  # ValueError naming any other value
    _same_shape(logp, prox_logp=prox_logp, behav_logp=behav_logp, advantages=advantages)
    m = bool_mask(mask, logp)
    logp_s = masked(logp, m)
    prox_s = masked(prox_logp.detach(), m)
    adv_s = masked(advantages.detach(), m)

    log_ratio = logp_s - prox_s
    ratio = torch.exp(log_ratio)
    surr = -torch.minimum(ratio * adv_s, torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * adv_s)

    if behav_logp is None:
        log_w = torch.zeros_like(prox_s)
    else:
        log_w = prox_s - masked(behav_logp.detach(), m)
    w_raw = torch.exp(log_w)
    loss_mask = m
    capped = torch.zeros_like(m)
    w = w_raw
    if behav_cap is not None:
        capped = m & (w_raw > behav_cap)
        if behav_mode is BehavMode.truncate:
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
    agg: Union[LossAgg, str] = LossAgg.token_mean,
) -> Tuple[Tensor, Dict[str, float]]:
    """PPO value loss ``0.5 max((v - R)^2, (v_old + clip(v - v_old, -c, c) - R)^2)``; plain
    ``0.5 (v - R)^2`` when ``clip`` is None.

    The clipped term keeps one minibatch step from moving the critic far from its rollout-time
    prediction. Metrics: ``value/clip_frac`` (tokens where the clipped term is strictly larger, i.e.
    the clip is what sets the gradient) and ``value/mean`` over policy tokens.
    """
    agg = LossAgg(agg)
    _same_shape(values, old_values=old_values, returns=returns)
    m = bool_mask(mask, values)
    v = masked(values, m)
    ret = masked(returns.detach(), m)
    unclipped = (v - ret) ** 2
    if clip is None:
        per_tok = 0.5 * unclipped
        clipped_active = torch.zeros_like(m)
    else:
        v_old = masked(old_values.detach(), m)
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


def kl_penalty(logp: Tensor, ref_logp: Tensor, estimator: Union[KLEstimator, str] = KLEstimator.k1) -> Tensor:
    """Per-token estimate of KL(policy || reference) from tokens sampled by the policy.

    ``k1 = logp - ref_logp`` (unbiased, high variance, can be negative per token);
    ``k3 = exp(ref - logp) - (ref - logp) - 1`` (Schulman's estimator: unbiased, always >= 0, low
    variance). No masking here: callers aggregate with their mask.
    """
    if KLEstimator(estimator) is KLEstimator.k1:
        return logp - ref_logp
    d = ref_logp - logp
    return torch.exp(d) - d - 1.0


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
