"""PPO-family losses pinned against hand-worked values (computations in the comments)."""
from __future__ import annotations

import math

import pytest
import torch

from learner.advantages import gae, vtrace_advantages
from learner.loss import aggregate, entropy_from_logits, kl_penalty, ppo_policy_loss, value_loss

NAN, INF = float("nan"), float("inf")
LN = math.log

# ---- decoupled PPO hand batch -------------------------------------------------------------------
# clip_low = 0.2 (lower bound 0.8), clip_high = 0.28 (upper bound 1.28). Proximal log-prob -1 everywhere,
# current logp = prox + ln r. Five policy tokens t0..t4, laid out over two rows with masked positions:
#   row 0: [t0, masked, t1, t2]     row 1: [t3, t4, masked(nan/inf garbage), pad]
#   tok  r    A    w=prox/behav   min(rA, clip(r)A)              surrogate   d(-rA)/dlogp if unclipped
#   t0  1.5  +1    1.0            min(1.5, 1.28)   = 1.28 (clip)   -1.28       0   (high clip active)
#   t1  1.5  -1    2.0            min(-1.5, -1.28) = -1.5          +1.5        -A r = +1.5
#   t2  0.5  -2    0.5            min(-1.0, -1.6)  = -1.6 (clip)   +1.6        0   (low clip active)
#   t3  0.5  +2    1.0            min(1.0, 1.6)    = 1.0           -1.0        -A r = -1.0
#   t4  1.0  +0.5  4.0            min(0.5, 0.5)    = 0.5           -0.5        -A r = -0.5
CLIP_LOW, CLIP_HIGH = 0.2, 0.28


def _ppo_batch():
    # (row, col) of t0..t4
    pos = [(0, 0), (0, 2), (0, 3), (1, 0), (1, 1)]
    r = [1.5, 1.5, 0.5, 0.5, 1.0]
    A = [1.0, -1.0, -2.0, 2.0, 0.5]
    w = [1.0, 2.0, 0.5, 1.0, 4.0]
    logp = torch.tensor([[0.0, NAN, 0.0, 0.0], [0.0, 0.0, 1e30, -INF]])  # garbage on masked
    prox = torch.tensor([[-1.0, INF, -1.0, -1.0], [-1.0, -1.0, NAN, 5.0]])
    behav = torch.tensor([[0.0, -INF, 0.0, 0.0], [0.0, 0.0, NAN, 1e30]])
    adv = torch.tensor([[0.0, NAN, 0.0, 0.0], [0.0, 0.0, INF, -INF]])
    mask = torch.tensor([[1, 0, 1, 1], [1, 1, 0, 0]], dtype=torch.float32)
    for (b, t), ri, ai, wi in zip(pos, r, A, w):
        logp[b, t] = -1.0 + LN(ri)
        behav[b, t] = -1.0 - LN(wi)  # w = exp(prox - behav)
        adv[b, t] = ai
    return logp.requires_grad_(True), prox, behav, adv, mask, pos


def _grad_at(logp, pos):
    return torch.tensor([float(logp.grad[b, t]) for b, t in pos])


def test_ppo_uncapped_loss_grad_and_metrics():
    logp, prox, behav, adv, mask, pos = _ppo_batch()
    loss, met = ppo_policy_loss(logp, prox, behav, adv, mask, clip_low=CLIP_LOW, clip_high=CLIP_HIGH)
    # w*surrogate = -1.28, 2*1.5 = 3.0, 0.5*1.6 = 0.8, -1.0, 4*(-0.5) = -2.0; sum -0.48; /5 = -0.096
    assert loss.item() == pytest.approx(-0.096, abs=1e-6)
    loss.backward()
    # d loss/d logp = w * (-A r) / 5 on unclipped tokens, 0 on clipped:
    #   t0 0; t1 2*1.5/5 = 0.6; t2 0; t3 1*(-1)/5 = -0.2; t4 4*(-0.5)/5 = -0.4
    torch.testing.assert_close(_grad_at(logp, pos), torch.tensor([0.0, 0.6, 0.0, -0.2, -0.4]), atol=1e-6, rtol=0)
    # Masked positions: exactly zero gradient despite nan/inf/1e30 there.
    assert torch.all(logp.grad[mask == 0] == 0)
    assert torch.isfinite(logp.grad).all()

    # ratio mean (1.5+1.5+0.5+0.5+1)/5 = 1.0, max 1.5, min 0.5
    assert met["ratio/mean"] == pytest.approx(1.0, abs=1e-6)
    assert met["ratio/max"] == pytest.approx(1.5, abs=1e-6)
    assert met["ratio/min"] == pytest.approx(0.5, abs=1e-6)
    assert met["clip/low_frac"] == pytest.approx(0.2)  # t2 only
    assert met["clip/high_frac"] == pytest.approx(0.2)  # t0 only
    # kl/approx = mean 0.5 (ln r)^2 = (ln1.5^2 + ln0.5^2)/5 = (0.164402 + 0.480453)/5 = 0.128971
    assert met["kl/approx"] == pytest.approx(0.128971, abs=1e-5)
    # kl/behav_prox = mean(w - ln w - 1): 0, 2-0.693147-1 = 0.306853, 0.5+0.693147-1 = 0.193147, 0,
    #   4-1.386294-1 = 1.613706 -> 2.113706/5 = 0.422741
    assert met["kl/behav_prox"] == pytest.approx(0.422741, abs=1e-5)
    assert met["behav/imp_weight_mean"] == pytest.approx(1.7, abs=1e-6)  # (1+2+0.5+1+4)/5
    assert met["behav/imp_weight_max"] == pytest.approx(4.0, abs=1e-6)
    assert met["behav/capped_frac"] == 0.0
    assert all(isinstance(v, float) for v in met.values())


def test_ppo_truncate_cap():
    logp, prox, behav, adv, mask, pos = _ppo_batch()
    loss, met = ppo_policy_loss(
        logp, prox, behav, adv, mask, clip_low=CLIP_LOW, clip_high=CLIP_HIGH, behav_cap=1.5, behav_mode="truncate"
    )
    # w -> [1, 1.5, 0.5, 1, 1.5]: -1.28 + 2.25 + 0.8 - 1.0 - 0.75 = 0.02; /5 = 0.004
    assert loss.item() == pytest.approx(0.004, abs=1e-6)
    loss.backward()
    # t1 1.5*1.5/5 = 0.45; t3 -1/5 = -0.2; t4 1.5*(-0.5)/5 = -0.15
    torch.testing.assert_close(_grad_at(logp, pos), torch.tensor([0.0, 0.45, 0.0, -0.2, -0.15]), atol=1e-6, rtol=0)
    assert torch.all(logp.grad[mask == 0] == 0)
    assert met["behav/capped_frac"] == pytest.approx(0.4)  # t1, t4
    assert met["behav/imp_weight_max"] == pytest.approx(4.0, abs=1e-6)  # reported uncapped


def test_ppo_mask_cap():
    logp, prox, behav, adv, mask, pos = _ppo_batch()
    loss, met = ppo_policy_loss(
        logp, prox, behav, adv, mask, clip_low=CLIP_LOW, clip_high=CLIP_HIGH, behav_cap=1.5, behav_mode="mask"
    )
    # t1, t4 (w > 1.5) drop out; t0, t2, t3: -1.28 + 0.8 - 1.0 = -1.48 over 3 tokens = -0.493333
    assert loss.item() == pytest.approx(-1.48 / 3, abs=1e-6)
    loss.backward()
    # only t3 has gradient: 1*(-1)/3
    torch.testing.assert_close(_grad_at(logp, pos), torch.tensor([0.0, 0.0, 0.0, -1 / 3, 0.0]), atol=1e-6, rtol=0)
    assert torch.all(logp.grad[mask == 0] == 0)
    assert met["behav/capped_frac"] == pytest.approx(0.4)
    assert met["clip/low_frac"] == pytest.approx(0.2)  # metrics stay over all policy tokens


def test_ppo_on_policy_and_seq_aggregation():
    logp, prox, _, adv, mask, pos = _ppo_batch()
    loss, met = ppo_policy_loss(logp, prox, None, adv, mask, clip_low=CLIP_LOW, clip_high=CLIP_HIGH)
    # w = 1: -1.28 + 1.5 + 1.6 - 1.0 - 0.5 = 0.32; /5 = 0.064
    assert loss.item() == pytest.approx(0.064, abs=1e-6)
    assert met["kl/behav_prox"] == 0.0 and met["behav/imp_weight_mean"] == 1.0
    logp, prox, behav, adv, mask, pos = _ppo_batch()
    loss, _ = ppo_policy_loss(
        logp, prox, behav, adv, mask.bool(), clip_low=CLIP_LOW, clip_high=CLIP_HIGH, agg="seq_mean_token_mean"
    )
    # row 0 (t0,t1,t2): (-1.28 + 3.0 + 0.8)/3 = 0.84; row 1 (t3,t4): (-1.0 - 2.0)/2 = -1.5; mean -0.33
    assert loss.item() == pytest.approx(-0.33, abs=1e-6)
    loss.backward()
    assert torch.all(logp.grad[mask == 0] == 0)
    # t1: 2*1.5/(3 tokens * 2 rows) = 0.5; t3: 1*(-1)/(2*2) = -0.25; t4: 4*(-0.5)/(2*2) = -0.5
    torch.testing.assert_close(_grad_at(logp, pos), torch.tensor([0.0, 0.5, 0.0, -0.25, -0.5]), atol=1e-6, rtol=0)


def test_ppo_all_masked_row_garbage_is_finite():
    logp = torch.tensor([[NAN, INF, -INF, 1e38]], requires_grad=True)
    prox = torch.tensor([[INF, NAN, 1e38, -INF]])
    loss, _ = ppo_policy_loss(logp, prox, prox, prox, torch.zeros(1, 4))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(logp.grad == 0)


def test_value_loss():
    v = torch.tensor([[1.0, 1.0, 0.1, NAN]], requires_grad=True)
    v_old = torch.tensor([[0.5, 0.5, 0.0, INF]])
    R = torch.tensor([[2.0, 0.0, 1.0, -INF]])
    m = torch.tensor([[1, 1, 1, 0]])
    # t0: (1-2)^2 = 1 vs clipped v 0.5+0.2 = 0.7 -> (0.7-2)^2 = 1.69 -> max 1.69 (clip active), 0.845
    # t1: (1-0)^2 = 1 vs 0.7^2 = 0.49 -> 1 -> 0.5
    # t2: |0.1-0| < 0.2 -> both 0.9^2 = 0.81 -> 0.405
    # token_mean = (0.845 + 0.5 + 0.405)/3 = 1.75/3
    loss, met = value_loss(v, v_old, R, m, clip=0.2)
    assert loss.item() == pytest.approx(1.75 / 3, abs=1e-6)
    assert met["value/clip_frac"] == pytest.approx(1 / 3)
    assert met["value/mean"] == pytest.approx(0.7, abs=1e-6)  # (1 + 1 + 0.1)/3
    loss.backward()
    # d/dv: t0 clipped branch (v - v_old beyond the clip) -> 0; t1 (1-0)/3; t2 (0.1-1)/3 = -0.3; masked 0
    torch.testing.assert_close(v.grad, torch.tensor([[0.0, 1 / 3, -0.3, 0.0]]), atol=1e-6, rtol=0)
    loss2, met2 = value_loss(v, v_old, R, m, clip=None)
    assert loss2.item() == pytest.approx(0.5 * 2.81 / 3, abs=1e-6)  # 0.5*(1 + 1 + 0.81)/3
    assert met2["value/clip_frac"] == 0.0


def test_kl_penalty():
    logp = torch.tensor([-1.0, -2.0])
    ref = torch.tensor([-2.0, -1.0])
    torch.testing.assert_close(kl_penalty(logp, ref, "k1"), torch.tensor([1.0, -1.0]))
    # k3: d = ref - logp = [-1, 1]: e^-1 + 1 - 1 = 0.367879; e - 1 - 1 = 0.718282
    torch.testing.assert_close(kl_penalty(logp, ref, "k3"), torch.tensor([0.367879, 0.718282]), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="k2"):
        kl_penalty(logp, ref, "k2")


def test_aggregate_modes():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, NAN, INF], [7.0, 8.0, 9.0]])
    m = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]])
    # token_mean: (1+2+3+4)/4 = 2.5; seq_mean_token_mean: rows with tokens: (2 + 4)/2 = 3;
    # seq_mean_token_sum: (6 + 4 + 0)/3 rows = 10/3
    assert float(aggregate(x, m, "token_mean")) == pytest.approx(2.5)
    assert float(aggregate(x, m.bool(), "seq_mean_token_mean")) == pytest.approx(3.0)
    assert float(aggregate(x, m.float(), "seq_mean_token_sum")) == pytest.approx(10 / 3)
    with pytest.raises(ValueError, match="tok_mean"):
        aggregate(x, m, "tok_mean")


def test_unknown_modes_raise():
    logp, prox, behav, adv, mask, _ = _ppo_batch()
    with pytest.raises(ValueError, match="clip"):
        ppo_policy_loss(logp, prox, behav, adv, mask, behav_cap=2.0, behav_mode="clip")
    with pytest.raises(ValueError, match="sum_all"):
        ppo_policy_loss(logp, prox, behav, adv, mask, agg="sum_all")
    with pytest.raises(ValueError, match="mean_of_means"):
        value_loss(adv, adv, adv, mask, agg="mean_of_means")


def test_entropy_from_logits_with_banned_tokens():
    logits = torch.tensor(
        [
            [[0.0, 0.0, -INF, -INF], [0.0, LN(3.0), -INF, -INF]],
            [[1.0, 1.0, 1.0, 1.0], [5.0, -INF, -INF, -INF]],
        ],
        requires_grad=True,
    )
    h = entropy_from_logits(logits)
    # uniform over 2 -> ln 2; p = [1/4, 3/4] -> 0.25 ln4 + 0.75 ln(4/3) = 0.346574 + 0.215762 = 0.562335;
    # uniform over 4 -> ln 4; a single allowed token -> 0
    exp = torch.tensor([[LN(2.0), 0.562335], [LN(4.0), 0.0]])
    torch.testing.assert_close(h, exp, atol=1e-6, rtol=0)
    h.sum().backward()
    assert torch.isfinite(logits.grad).all()
    assert torch.all(logits.grad[torch.isinf(logits.detach())] == 0)


# ---- V-trace ------------------------------------------------------------------------------------


def _vtrace():
    pytest.importorskip("ray.rllib.algorithms.impala.torch.vtrace_torch_v2")
    return vtrace_advantages


def test_vtrace_on_policy_equals_lambda_one_gae():
    vt = _vtrace()
    g = torch.Generator().manual_seed(0)
    mask = torch.tensor([[0, 1, 1, 0, 0, 1, 1, 1, 0], [1, 0, 1, 0, 0, 0, 0, 0, 0]], dtype=torch.float32)
    values = torch.randn(2, 9, generator=g)
    rewards = torch.randn(2, 9, generator=g) * mask
    logp = -torch.rand(2, 9, generator=g)
    pg, vs = vt(logp, logp, rewards, values, mask, gamma=0.9, clip_rho=1.0, clip_pg_rho=1.0)
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=1.0)
    # rho = c = 1: vs_t = V_t + sum_k gamma^k delta_{t+k} = lambda-1 return; pg_t = r_t + gamma vs_{t+1} - V_t = A_t
    torch.testing.assert_close(vs, ret, atol=1e-5, rtol=0)
    torch.testing.assert_close(pg, adv, atol=1e-5, rtol=0)


def test_vtrace_off_policy_hand_example_and_row_independence():
    vt = _vtrace()
    # Row 0: policy tokens at positions 0, 2, 3 (step k = 0, 1, 2), gamma = 0.5,
    #   V = [1, 2, 4], r = [0, 2, 8], rho = [1, 0.5, 1] (target - behaviour = ln 0.5 at step 1).
    #   step 2 (last, discount 0): delta = 8 - 4 = 4 -> vs2 = 4 + 4 = 8
    #   step 1: rho_bar = c = 0.5: delta = 0.5*(2 + 0.5*4 - 2) = 1; vs1 - V1 = 1 + 0.5*0.5*4 = 2 -> vs1 = 4
    #   step 0: delta = 0 + 0.5*2 - 1 = 0; vs0 - V0 = 0 + 0.5*1*2 = 1 -> vs0 = 2
    #   pg: step2 = 1*(8 - 4) = 4; step1 = 0.5*(2 + 0.5*vs2 - 2) = 0.5*4 = 2; step0 = 1*(0 + 0.5*vs1 - 1) = 1
    # Row 1: a longer row (5 policy tokens) of on-policy noise, to check it does not affect row 0.
    mask = torch.tensor([[1, 0, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0, 1]], dtype=torch.float32)
    values = torch.tensor([[1.0, 7.0, 2.0, 4.0, 7.0, 7.0, 7.0], [0.3, -0.2, 0.5, 1.0, 2.0, 0.0, -1.0]])
    rewards = torch.tensor([[0.0, 0.0, 2.0, 8.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 3.0, 0.0, 0.0, 2.0]])
    behav = torch.tensor([[-1.0, NAN, -1.0, -1.0, INF, 0.0, 0.0], [-0.5, -0.4, -0.3, -0.2, -0.1, 0.0, -0.7]])
    target = behav.clone()
    target[0, 2] = -1.0 + LN(0.5)
    target[1, 1] = -0.4 + LN(3.0)  # an off-policy step in the other row, too
    pg, vs = vt(target, behav, rewards, values, mask, gamma=0.5)
    torch.testing.assert_close(vs[0], torch.tensor([2.0, 0, 4.0, 8.0, 0, 0, 0]), atol=1e-5, rtol=0)
    torch.testing.assert_close(pg[0], torch.tensor([1.0, 0, 2.0, 4.0, 0, 0, 0]), atol=1e-5, rtol=0)
    assert torch.all(pg[mask == 0] == 0) and torch.all(vs[mask == 0] == 0)
    # Row 0 alone (trimmed to its last policy token) gives the same; so does row 1 alone.
    pg0, vs0 = vt(target[:1, :4], behav[:1, :4], rewards[:1, :4], values[:1, :4], mask[:1, :4], gamma=0.5)
    torch.testing.assert_close(pg0[0], pg[0, :4], atol=1e-6, rtol=0)
    torch.testing.assert_close(vs0[0], vs[0, :4], atol=1e-6, rtol=0)
    pg1, vs1 = vt(target[1:], behav[1:], rewards[1:], values[1:], mask[1:], gamma=0.5)
    torch.testing.assert_close(pg1[0], pg[1], atol=1e-6, rtol=0)
    torch.testing.assert_close(vs1[0], vs[1], atol=1e-6, rtol=0)
    # With rho = 2 at step 0 and clip_pg_rho = 1.5: vs unchanged (rho_bar, c clipped at 1),
    # pg step0 = 1.5*(0 + 0.5*4 - 1) = 1.5
    target2 = target.clone()
    target2[0, 0] = -1.0 + LN(2.0)
    pg2, vs2 = vt(target2, behav, rewards, values, mask, gamma=0.5, clip_rho=1.0, clip_pg_rho=1.5)
    torch.testing.assert_close(vs2[0], vs[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(pg2[0], torch.tensor([1.5, 0, 2.0, 4.0, 0, 0, 0]), atol=1e-5, rtol=0)
