"""Advantage estimators pinned against hand-worked values (computations in the comments)."""
from __future__ import annotations

import math

import pytest
import torch

from learner.advantages import explained_variance, gae, group_baseline_advantages, returns_to_go, whiten

G = 9.0  # garbage on masked positions: must never be read

# Row 0: T=10, two agent turns: policy tokens at 2,3,4 and 7,8.
# Turn-end rewards 0.5 at 4 and 0.25 at 8, plus the dialogue reward 1.0 at the last agent token (8).
# Row 1: a shorter dialogue, policy tokens at 1,2 (reward 1.0 at 2), then padding to T=10.
MASK = torch.tensor(
    [
        [0, 0, 1, 1, 1, 0, 0, 1, 1, 0],
        [0, 1, 1, 0, 0, 0, 0, 0, 0, 0],
    ],
    dtype=torch.float32,
)
REWARDS = torch.tensor(
    [
        [0, 0, 0, 0, 0.5, 0, 0, 0, 0.25 + 1.0, 0],
        [0, 0, 1.0, 0, 0, 0, 0, 0, 0, 0],
    ]
)
VALUES = torch.tensor(
    [
        [G, G, 0.1, 0.2, 0.3, G, G, 0.4, 0.5, G],
        [G, 0.5, 0.25, G, G, G, G, G, G, G],
    ]
)


def _row(vals, positions, T=10):
    out = torch.zeros(T)
    for p, v in zip(positions, vals):
        out[p] = v
    return out


def test_gae_gamma_lambda_one_is_monte_carlo():
    # gamma = lam = 1: A_t = (sum of rewards from t on) - V_t, returns = reward-to-go.
    # Row 0: rewards to go: from 2,3,4 -> 0.5 + 1.25 = 1.75; from 7,8 -> 1.25.
    #   A = 1.75-0.1, 1.75-0.2, 1.75-0.3, 1.25-0.4, 1.25-0.5 = 1.65, 1.55, 1.45, 0.85, 0.75
    # Row 1: reward to go 1.0 at both: A = 1-0.5, 1-0.25 = 0.5, 0.75
    adv, ret = gae(REWARDS, VALUES, MASK, gamma=1.0, lam=1.0)
    exp_adv0 = _row([1.65, 1.55, 1.45, 0.85, 0.75], [2, 3, 4, 7, 8])
    exp_ret0 = _row([1.75, 1.75, 1.75, 1.25, 1.25], [2, 3, 4, 7, 8])
    exp_adv1 = _row([0.5, 0.75], [1, 2])
    exp_ret1 = _row([1.0, 1.0], [1, 2])
    torch.testing.assert_close(adv, torch.stack([exp_adv0, exp_adv1]), atol=1e-6, rtol=0)
    torch.testing.assert_close(ret, torch.stack([exp_ret0, exp_ret1]), atol=1e-6, rtol=0)


def test_gae_discounted_multi_turn():
    # gamma=0.9, lam=0.8 (gamma*lam = 0.72). Row 0 over its policy tokens k=0..4 (positions 2,3,4,7,8):
    #   r = [0, 0, 0.5, 0, 1.25], V = [0.1, 0.2, 0.3, 0.4, 0.5], V after the last = 0.
    #   delta4 = 1.25 - 0.5 = 0.75
    #   delta3 = 0 + 0.9*0.5 - 0.4 = 0.05        (next state of position 7 is position 8)
    #   delta2 = 0.5 + 0.9*0.4 - 0.3 = 0.56      (next state of position 4 is position 7: 5,6 skipped)
    #   delta1 = 0.9*0.3 - 0.2 = 0.07
    #   delta0 = 0.9*0.2 - 0.1 = 0.08
    #   A4 = 0.75; A3 = 0.05 + 0.72*0.75 = 0.59; A2 = 0.56 + 0.72*0.59 = 0.9848
    #   A1 = 0.07 + 0.72*0.9848 = 0.779056; A0 = 0.08 + 0.72*0.779056 = 0.64092032
    #   returns = A + V = 0.74092032, 0.979056, 1.2848, 0.99, 1.25
    # Row 1 (positions 1,2): delta1' = 0.75; delta0' = 0.9*0.25 - 0.5 = -0.275
    #   A = -0.275 + 0.72*0.75 = 0.265, 0.75; returns = 0.765, 1.0
    adv, ret = gae(REWARDS, VALUES, MASK, gamma=0.9, lam=0.8)
    pos0 = [2, 3, 4, 7, 8]
    exp_adv = torch.stack([_row([0.64092032, 0.779056, 0.9848, 0.59, 0.75], pos0), _row([0.265, 0.75], [1, 2])])
    exp_ret = torch.stack([_row([0.74092032, 0.979056, 1.2848, 0.99, 1.25], pos0), _row([0.765, 1.0], [1, 2])])
    torch.testing.assert_close(adv, exp_adv, atol=1e-6, rtol=0)
    torch.testing.assert_close(ret, exp_ret, atol=1e-6, rtol=0)


def test_gae_rows_independent_and_masked_stretches_transparent():
    adv, ret = gae(REWARDS, VALUES, MASK, gamma=0.9, lam=0.8)
    # Each row alone gives the same result as in the batch.
    a0, r0 = gae(REWARDS[:1], VALUES[:1], MASK[:1], 0.9, 0.8)
    torch.testing.assert_close(adv[:1], a0, atol=0, rtol=0)
    torch.testing.assert_close(ret[:1], r0, atol=0, rtol=0)
    # Row 1 cut to its real length (no padding) gives the same values.
    a1, r1 = gae(REWARDS[1:, :3], VALUES[1:, :3], MASK[1:, :3], 0.9, 0.8)
    torch.testing.assert_close(adv[1:, :3], a1, atol=0, rtol=0)
    assert torch.all(adv[1:, 3:] == 0)
    # Row 0 with its masked tokens removed (dense 5-token episode) gives the same policy-token values.
    pos0 = [2, 3, 4, 7, 8]
    ad, rd = gae(REWARDS[:1, pos0], VALUES[:1, pos0], torch.ones(1, 5), 0.9, 0.8)
    torch.testing.assert_close(adv[0, pos0], ad[0], atol=1e-7, rtol=0)
    torch.testing.assert_close(ret[0, pos0], rd[0], atol=1e-7, rtol=0)
    # Masked positions are exactly 0 and garbage values there were not read.
    assert torch.all(adv[MASK == 0] == 0) and torch.all(ret[MASK == 0] == 0)


def test_gae_bool_mask_no_grad_and_reward_on_masked_raises():
    v = VALUES.clone().requires_grad_(True)
    adv, ret = gae(REWARDS, v, MASK.bool(), 1.0, 1.0)
    assert not adv.requires_grad and not ret.requires_grad
    bad = REWARDS.clone()
    bad[0, 5] = 1.0  # a user-turn token
    with pytest.raises(ValueError, match="rewards"):
        gae(bad, VALUES, MASK, 1.0, 1.0)


def test_returns_to_go():
    # gamma = 0.9, row 0: G8 = 1.25; G7 = 0.9*1.25 = 1.125; G4 = 0.5 + 0.9*1.125 = 1.5125;
    # G3 = 0.9*1.5125 = 1.36125; G2 = 0.9*1.36125 = 1.225125. Row 1: G2 = 1.0, G1 = 0.9.
    g = returns_to_go(REWARDS, MASK, 0.9)
    exp = torch.stack([_row([1.225125, 1.36125, 1.5125, 1.125, 1.25], [2, 3, 4, 7, 8]), _row([0.9, 1.0], [1, 2])])
    torch.testing.assert_close(g, exp, atol=1e-6, rtol=0)


def test_group_baseline_leave_one_out_and_mean():
    scores = torch.tensor([1.0, 2.0, 6.0, 5.0, 7.0, 3.0])
    groups = ["a", "a", "a", ("b", 1), ("b", 1), "c"]
    # Leave-one-out: a: 1-(2+6)/2 = -3, 2-(1+6)/2 = -1.5, 6-(1+2)/2 = 4.5; b: 5-7 = -2, 7-5 = 2;
    # c is alone -> 0 (no baseline, no signal).
    loo = group_baseline_advantages(scores, groups)
    torch.testing.assert_close(loo, torch.tensor([-3.0, -1.5, 4.5, -2.0, 2.0, 0.0]), atol=1e-6, rtol=0)
    # Group mean: a mean 3 -> -2, -1, 3; b mean 6 -> -1, 1; c -> 0.
    mean = group_baseline_advantages(scores, groups, leave_one_out=False)
    torch.testing.assert_close(mean, torch.tensor([-2.0, -1.0, 3.0, -1.0, 1.0, 0.0]), atol=1e-6, rtol=0)


def test_group_baseline_std_scale():
    scores = torch.tensor([1.0, 2.0, 6.0, 5.0, 7.0, 3.0])
    groups = ["a", "a", "a", "b", "b", "c"]
    # Sample std: a: ((1-3)^2 + (2-3)^2 + (6-3)^2)/2 = 14/2 = 7 -> sqrt 7; b: (1 + 1)/1 = 2 -> sqrt 2.
    s7, s2 = math.sqrt(7.0), math.sqrt(2.0)
    grpo = group_baseline_advantages(scores, groups, leave_one_out=False, scale="std")
    exp = torch.tensor([-2 / s7, -1 / s7, 3 / s7, -1 / s2, 1 / s2, 0.0])
    torch.testing.assert_close(grpo, exp, atol=1e-5, rtol=0)
    loo = group_baseline_advantages(scores, groups, leave_one_out=True, scale="std")
    exp = torch.tensor([-3 / s7, -1.5 / s7, 4.5 / s7, -2 / s2, 2 / s2, 0.0])
    torch.testing.assert_close(loo, exp, atol=1e-5, rtol=0)
    # A group whose members all score the same has zero advantage (not nan).
    same = group_baseline_advantages(torch.tensor([4.0, 4.0]), ["x", "x"], scale="std")
    assert torch.all(same == 0)


def test_group_baseline_batch_grouping_and_bad_scale():
    # Batch baseline = one key for all: scores 1,2,3 -> leave-one-out 1-2.5, 2-2, 3-1.5.
    adv = group_baseline_advantages(torch.tensor([1.0, 2.0, 3.0]), [0, 0, 0])
    torch.testing.assert_close(adv, torch.tensor([-1.5, 0.0, 1.5]), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="mad"):
        group_baseline_advantages(torch.tensor([1.0]), ["a"], scale="mad")


def test_whiten():
    x = torch.tensor([[2.0, 6.0, 100.0]])
    m = torch.tensor([[1, 1, 0]])
    # mean 4, population var ((2-4)^2 + (6-4)^2)/2 = 4 -> std 2: [-1, 1], masked -> 0.
    torch.testing.assert_close(whiten(x, m), torch.tensor([[-1.0, 1.0, 0.0]]), atol=1e-6, rtol=0)
    # shift_mean=False adds the mean back: [3, 5].
    torch.testing.assert_close(whiten(x, m, shift_mean=False), torch.tensor([[3.0, 5.0, 0.0]]), atol=1e-6, rtol=0)
    with pytest.raises(ValueError):
        whiten(x, torch.zeros_like(m))


def test_explained_variance():
    returns = torch.tensor([[1.0, 2.0, 3.0, 4.0, 50.0]])
    values = torch.tensor([[1.0, 2.0, 3.0, 5.0, -50.0]])
    m = torch.tensor([[1, 1, 1, 1, 0]])
    # residual [0,0,0,-1]: mean -0.25, var (3*0.0625 + 0.5625)/4 = 0.1875;
    # returns var: mean 2.5, (2.25+0.25+0.25+2.25)/4 = 1.25 -> EV = 1 - 0.1875/1.25 = 0.85
    assert explained_variance(values, returns, m) == pytest.approx(0.85, abs=1e-9)
    assert explained_variance(returns, returns, m) == pytest.approx(1.0)
    assert math.isnan(explained_variance(values, torch.full_like(returns, 3.0), m))


def test_compute_advantages_dispatches_on_the_learner_config():
    from types import SimpleNamespace

    from antiphon.config.schema import Estimator, GroupCredit, LearnerConfig
    from learner.advantages import compute_advantages, turn_group_advantages

    mask = torch.tensor([[0, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.float32)
    rewards = torch.tensor([[0.0, 0.0, 2.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    values = torch.tensor([[G, 0.5, 0.25, G], [0.1, 0.2, G, G]])
    logp = torch.zeros(2, 4)
    batch = SimpleNamespace(scores=torch.tensor([2.0, 1.0]), groups=["a", "a"], dialogue_rewards=[2.0, 1.0],
                            turn_rewards=[[], []], turn_idx=torch.full((2, 4), -1))
    gae_cfg = LearnerConfig(estimator=Estimator.gae, gamma=0.9, lam=0.8, whiten_advantages=False)
    adv, ret = compute_advantages(gae_cfg, batch, logp, logp, rewards, values, mask)
    want_adv, want_ret = gae(rewards, values, mask, 0.9, 0.8)
    torch.testing.assert_close(adv, want_adv)
    torch.testing.assert_close(ret, want_ret)
    # Group baseline over the dialogue's total reward: leave-one-out 2 - 1 = 1 and 1 - 2 = -1 on every policy
    # token; value targets are the plain returns-to-go.
    dial = LearnerConfig(estimator=Estimator.group, group_credit=GroupCredit.dialogue, whiten_advantages=False)
    adv, ret = compute_advantages(dial, batch, logp, logp, rewards, values, mask)
    torch.testing.assert_close(adv, torch.tensor([[0.0, 1.0, 1.0, 0.0], [-1.0, -1.0, 0.0, 0.0]]))
    torch.testing.assert_close(ret, returns_to_go(rewards, mask, 1.0))
    turn = LearnerConfig(estimator=Estimator.group, whiten_advantages=True)
    adv, _ = compute_advantages(turn, batch, logp, logp, rewards, values, mask)
    torch.testing.assert_close(adv, whiten(turn_group_advantages(batch) * mask, mask) * mask)
