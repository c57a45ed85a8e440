"""The learner on real-layout dialogues: batch tensors, no leaks between rows, zero gradient off the
policy tokens, ratio 1 on fresh data, stale data dropped, and an exact resume from a checkpoint."""
from __future__ import annotations

import uuid

import numpy as np
import pytest
import torch
from support import make_scored_dialogue

from antiphon.config import compose, to_dataclass
from antiphon.protocol import encode_scored
from antiphon.transport import BlockingTransport, EmbeddedValkey, from_config
from learner.batch import build_batch
from learner.loss import ppo_policy_loss
from learner.policy import PolicyModel


@pytest.fixture(scope="module")
def policy(tiny_path):
    torch.manual_seed(0)
    return PolicyModel(tiny_path)


def _learner_cfg(*overrides):
    return to_dataclass(compose([f"learner.{o}" for o in overrides]).learner)


def test_batch_places_mask_behaviour_logprobs_and_rewards(policy):
    rng = np.random.default_rng(0)
    scored = [make_scored_dialogue(policy, rng, f"t{i}", group=i // 2, n_turns=2 + i % 2) for i in range(3)]
    b = build_batch(policy, scored)
    for i, s in enumerate(scored):
        t = s.trajectory
        cols = np.asarray(b.model_inputs["completion_pos"][i]) - 1  # token j >= 1 -> column cols[j - 1]
        want_mask = torch.zeros_like(b.mask[i])
        want_mask[cols[np.flatnonzero(t.policy_mask[1:])]] = 1
        assert torch.equal(b.mask[i], want_mask)
        assert int(b.mask[i].sum()) == int(t.policy_mask.sum())
        on = b.mask[i].bool()
        np.testing.assert_allclose(b.behav_logp[i][on].numpy(), t.logprobs[t.policy_mask == 1], atol=0)
        # Each agent turn's reward sits on its last *policy* token (not the newline glue after it), the
        # dialogue reward on the dialogue's last policy token.
        want = torch.zeros_like(b.rewards[i])
        agent = [x for x in t.turns if x.role == "assistant"]
        for turn, r in zip(agent, s.rewards.turn):
            last = max(j for j in range(turn.start, turn.end) if t.policy_mask[j])
            want[cols[last - 1]] += r
        want[cols[np.flatnonzero(t.policy_mask)[-1] - 1]] += s.rewards.dialogue
        assert torch.equal(b.rewards[i], want)
        assert b.versions[i][on].eq(0).all() and b.versions[i][~on].eq(-1).all()


def test_rows_do_not_attend_across_dialogues(policy):
    rng = np.random.default_rng(1)
    scored = [make_scored_dialogue(policy, rng, f"t{i}", n_turns=1 + i) for i in range(3)]
    b = build_batch(policy, scored)
    with torch.no_grad():
        together = policy.token_logprobs(policy.forward(b.model_inputs)[0], b.model_inputs)
        for i, s in enumerate(scored):
            one = build_batch(policy, [s])
            alone = policy.token_logprobs(policy.forward(one.model_inputs)[0], one.model_inputs)
            w = alone.shape[1]
            m = one.mask[0].bool()
            torch.testing.assert_close(together[i, :w][m], alone[0][m], atol=1e-5, rtol=0)
            # The behaviour log-probs were made by the same weights: ratio 1.
            torch.testing.assert_close(alone[0][m], one.behav_logp[0][m], atol=1e-5, rtol=0)


def test_logits_at_policy_tokens_only_give_the_full_forwards_values_and_gradients(policy):
    """The recipe computes logits only where the losses read them; values and gradients are the full
    forward's there, and nothing (0) elsewhere."""
    rng = np.random.default_rng(5)
    b = build_batch(policy, [make_scored_dialogue(policy, rng, f"t{i}", n_turns=2 + i) for i in range(3)])
    sel, mi = b.mask.bool(), b.model_inputs
    adv = torch.randn(sel.shape, generator=torch.Generator().manual_seed(0))
    out = []
    for where in (None, sel):
        policy.model.zero_grad(set_to_none=True)
        logp = policy.token_logprobs(policy.forward(mi, where)[0], mi, where)
        (logp * adv * b.mask).sum().backward()
        out.append((logp.detach(), policy.model.lm_head.weight.grad.clone(),
                    policy.model.model.audio_tower.conv1.weight.grad.clone()))
    policy.model.zero_grad(set_to_none=True)
    (full, g_head, g_audio), (part, p_head, p_audio) = out
    torch.testing.assert_close(part[sel], full[sel], atol=1e-6, rtol=0)
    assert part[~sel].eq(0).all() and sel.sum() < sel.numel() / 2
    torch.testing.assert_close(p_head, g_head, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(p_audio, g_audio, atol=1e-6, rtol=1e-5)


def test_gradient_is_exactly_zero_off_the_policy_tokens(policy):
    rng = np.random.default_rng(2)
    b = build_batch(policy, [make_scored_dialogue(policy, rng, f"t{i}", n_turns=2) for i in range(2)])
    logits, _ = policy.forward(b.model_inputs)
    logits.retain_grad()
    logp = policy.token_logprobs(logits, b.model_inputs)
    adv = torch.randn_like(logp)
    loss, _ = ppo_policy_loss(logp, logp.detach(), b.behav_logp, adv, b.mask, behav_cap=5.0)
    loss.backward()
    g = logits.grad.abs().sum(-1)
    off = ~b.mask.bool()
    assert g[off].max().item() == 0.0  # user and simulator tokens, audio placeholders, glue, padding
    assert (g[b.mask.bool()] > 0).all()


def _publish(tcfg, scored):
    with BlockingTransport(from_config(tcfg)) as t:
        stream = t.stream("scored")
        for s in scored:
            t.publish(stream, encode_scored(s), id_hint=s.trajectory.trajectory_id)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with EmbeddedValkey(tmp_path_factory.mktemp("valkey")) as s:
        yield s


def test_step_trains_at_ratio_one_and_drops_stale_data(policy, tiny_path, server, tmp_path):
    from learner.actor import Learner

    rng = np.random.default_rng(3)
    tcfg = {"url": server.url, "namespace": f"l{uuid.uuid4().hex[:8]}", "max_unconsumed": None}
    fresh = [make_scored_dialogue(policy, rng, f"a{i}", group=i // 2) for i in range(4)]
    _publish(tcfg, fresh)
    # One update per step: its ratio is exactly the fresh one (the demo's minibatches=2 would average in a
    # second minibatch taken after the first update).
    cfg = _learner_cfg("batch_size=4", "group_size=2", "max_staleness=0", "lr=1e-3", "batch_timeout_s=5",
                       "minibatches=1")
    lrn = Learner(str(tiny_path), cfg, tcfg, str(tmp_path))
    m = lrn.step()["metrics"]
    # Version 0 data trained by version 0 weights: the proximal policy is the behaviour policy.
    assert m["behav/max_abs_logp_diff"] < 1e-4
    assert abs(m["ratio/mean"] - 1) < 1e-4 and m["staleness/mean"] == 0
    lrn.reader.reset_admission(version=1, admitted=8)
    # Now at version 1: four more version-0 dialogues are one version stale -> dropped and counted,
    # their admission slots given back; four fresh ones (version 1) make the batch.
    _publish(tcfg, [make_scored_dialogue(policy, rng, f"b{i}", group=i // 2) for i in range(4)])
    _publish(tcfg, [make_scored_dialogue(policy, rng, f"c{i}", group=i // 2, version=1) for i in range(4)])
    out = lrn.step()
    assert lrn.info()["counts"]["dropped_stale"] == 4
    assert sorted(out["trajectory_ids"]) == [f"c{i}" for i in range(4)]
    assert lrn.reader.admission_state()["admitted"] == 4
    assert lrn.reader.counters().get("dropped:stale") == 4
    lrn.close()


@pytest.mark.parametrize("estimator", ["group", "gae"])
def test_group_estimator_batches_whole_groups(estimator, policy, tiny_path, server, tmp_path):
    """Groups finish out of order; with the group estimator a batch still holds whole groups."""
    from learner.actor import Learner

    rng = np.random.default_rng(5)
    tcfg = {"url": server.url, "namespace": f"g{uuid.uuid4().hex[:8]}", "max_unconsumed": None}
    arrivals = [(0, 0), (1, 0), (2, 0), (0, 1), (3, 0), (1, 1), (2, 1), (3, 1)]  # (group, member)
    _publish(tcfg, [make_scored_dialogue(policy, rng, f"g{g}m{m}", group=g) for g, m in arrivals])
    cfg = _learner_cfg(f"estimator={estimator}", "batch_size=4", "group_size=2", "max_staleness=2",
                       "lr=1e-3", "batch_timeout_s=5")
    lrn = Learner(str(tiny_path), cfg, tcfg, str(tmp_path))
    first, second = lrn.step(), lrn.step()
    lrn.close()
    if estimator == "group":
        assert sorted(first["trajectory_ids"]) == ["g0m0", "g0m1", "g1m0", "g1m1"]
        assert sorted(second["trajectory_ids"]) == ["g2m0", "g2m1", "g3m0", "g3m1"]
        assert first["metrics"]["rollout/group_fill"] == second["metrics"]["rollout/group_fill"] == 1.0
    else:  # no groups needed: first come, first trained
        assert first["trajectory_ids"] == ["g0m0", "g1m0", "g2m0", "g0m1"]
        assert first["metrics"]["rollout/group_fill"] == 0.75  # rows see 2, 1, 1, 2 of their group


def test_an_incomplete_group_goes_in_at_the_staleness_bound_or_when_nothing_arrives(
        policy, tiny_path, server, tmp_path):
    from learner.actor import Learner

    rng = np.random.default_rng(6)
    tcfg = {"url": server.url, "namespace": f"w{uuid.uuid4().hex[:8]}", "max_unconsumed": None}
    # Group 10 is one version old (at the bound of max_staleness=1); 11 is whole; 12 and 13 are fresh halves.
    data = [("x0", 10, 0), ("y0", 11, 1), ("y1", 11, 1), ("z0", 12, 1), ("w0", 13, 1)]
    _publish(tcfg, [make_scored_dialogue(policy, rng, tid, group=g, version=v) for tid, g, v in data])
    cfg = _learner_cfg("estimator=group", "batch_size=4", "group_size=2", "max_staleness=1", "lr=1e-3",
                       "batch_timeout_s=2", "group_wait_s=1000")
    lrn = Learner(str(tiny_path), cfg, tcfg, str(tmp_path))
    lrn.version = 1
    # x0 (at the bound) and group 11 are ready: 3 of 4. The fresh halves wait for their peers.
    with pytest.raises(TimeoutError, match="3/4|5/4"):
        lrn.step()
    # Nothing more arrives: after group_wait_s the halves go in too, oldest first, then in arrival order.
    lrn.cfg.group_wait_s = 0.1
    out = lrn.step()
    assert out["trajectory_ids"] == ["x0", "y0", "y1", "z0"]
    assert out["metrics"]["rollout/group_fill"] == 0.75
    assert lrn.info()["counts"].get("dropped_stale", 0) == 0
    lrn.close()


def test_resume_continues_exactly_like_an_uninterrupted_run(policy, tiny_path, server, tmp_path):
    """N steps straight vs k steps, a checkpoint, one more step lost in a crash, and a resume to N:
    the same losses and the same trained trajectories, none twice."""
    from learner.actor import Learner

    n_steps, k = 4, 2
    rng = np.random.default_rng(4)
    data = [make_scored_dialogue(policy, rng, f"t{i:02d}", group=i // 2, n_turns=1 + i % 3)
            for i in range(4 * n_steps)]
    cfg = _learner_cfg("batch_size=4", "group_size=2", "max_staleness=100", "lr=3e-3", "ppo_epochs=2",
                       "minibatches=2", "batch_timeout_s=5")
    runs = {}
    for name in ("straight", "resumed"):
        tcfg = {"url": server.url, "namespace": f"{name}{uuid.uuid4().hex[:6]}", "max_unconsumed": None}
        _publish(tcfg, data)
        runs[name] = tcfg

    a = Learner(str(tiny_path), cfg, runs["straight"], str(tmp_path / "a"))
    losses_a = [a.step()["metrics"]["loss/total"] for _ in range(n_steps)]
    ids_a = a.trained_ids()
    weights_a = a.recipe.rollout_state_dict()
    a.close()

    b = Learner(str(tiny_path), cfg, runs["resumed"], str(tmp_path / "b"))
    losses_b = [b.step()["metrics"]["loss/total"] for _ in range(k)]
    ckpt = b.save_checkpoint()
    b.step()  # trained, never checkpointed: lost with the crash, so it must be trained again
    b.close()

    c = Learner(str(tiny_path), cfg, runs["resumed"], str(tmp_path / "b"), resume=ckpt)
    assert c.info()["version"] == k
    losses_c = [c.step()["metrics"]["loss/total"] for _ in range(n_steps - k)]
    ids_c = c.trained_ids()
    weights_c = c.recipe.rollout_state_dict()
    c.close()

    np.testing.assert_allclose(losses_b + losses_c, losses_a, rtol=0, atol=1e-6)
    assert ids_c == ids_a and len(set(ids_c)) == len(ids_c) == 4 * n_steps
    # The resumed run ends with the straight run's policy.
    for name, w in weights_a.items():
        torch.testing.assert_close(weights_c[name], w, atol=1e-6, rtol=0)


def test_per_turn_group_advantages_compare_the_same_turn_across_a_group():
    from types import SimpleNamespace

    from learner.advantages import turn_group_advantages

    # Rows 0-2 play scenario A (row 2 ended after one turn), row 3 plays B alone. turn_idx marks tokens.
    turn_idx = torch.tensor([[0, 0, -1, 1, 1], [0, -1, 1, 1, -1], [0, 0, 0, -1, -1], [-1, 0, 0, -1, -1]])
    b = SimpleNamespace(turn_idx=turn_idx, groups=["A", "A", "A", "B"],
                        turn_rewards=[[1.0, 0.0], [0.0, 0.0], [0.5], [2.0]], dialogue_rewards=[1.0, 0.0, 0.5, 3.0])
    adv = turn_group_advantages(b)
    # Turn 0 in A: 1 - (0 + .5)/2 = .75, 0 - (1 + .5)/2 = -.75, .5 - (1 + 0)/2 = 0. Turn 1 in A: 0 - 0 = 0 (both).
    # Dialogue in A: 1 - .25 = .75, 0 - .75 = -.75, .5 - .5 = 0. A group of one (B) has no baseline: 0.
    want = torch.tensor([[1.5, 1.5, 0, 0.75, 0.75], [-1.5, 0, -0.75, -0.75, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]])
    torch.testing.assert_close(adv, want)


@pytest.mark.parametrize("overrides", [
    ["algo=appo", "estimator=gae"],  # V-trace targets from ray.rllib
    ["estimator=gae", "kl_coef=0.1", "kl_estimator=k1", "entropy_coef=0.01", "behav_mode=mask", "behav_cap=1.5"],
    ["estimator=group", "group_credit=dialogue", "group_scale=std", "reward_norm=batch",
     "loss_agg=seq_mean_token_sum", "ppo_epochs=2", "minibatches=2"],
])
def test_every_estimator_and_loss_option_trains(policy, tiny_path, overrides):
    from learner.recipe import PPORecipe

    rng = np.random.default_rng(5)
    scored = [make_scored_dialogue(policy, rng, f"t{i}", group=i // 2, n_turns=1 + i % 2,
                                   turn_reward=(float(i), -0.5), dialogue_reward=0.1 * i) for i in range(4)]
    cfg = _learner_cfg("batch_size=4", "group_size=2", "lr=1e-3", *overrides)
    recipe = PPORecipe(cfg, tiny_path)
    recipe.setup()
    before = {k: v.clone() for k, v in recipe.rollout_state_dict().items()}
    m = recipe.train_step(build_batch(recipe.policy, scored, cfg.reward_norm), version=0)
    assert all(np.isfinite(v) for k, v in m.items() if isinstance(v, float) and k != "value/explained_variance")
    assert m["behav/max_abs_logp_diff"] < 1e-4
    moved = sum(float((recipe.rollout_state_dict()[k] - v).abs().sum()) for k, v in before.items())
    assert moved > 0  # the step changed the policy


@pytest.mark.parametrize("overrides, proximal_rows", [
    (["estimator=group", "minibatches=1"], 0),  # the update's own forward gives the proximal log-probs
    (["estimator=group", "minibatches=2"], 2),  # the second minibatch's rows only
    (["estimator=gae", "minibatches=2"], 4),  # a critic: every row's values before the first update
])
def test_the_proximal_pass_covers_only_rows_the_first_update_does_not(policy, tiny_path, overrides, proximal_rows):
    from learner.recipe import PPORecipe

    rng = np.random.default_rng(8)
    scored = [make_scored_dialogue(policy, rng, f"t{i}", group=i // 2) for i in range(4)]
    cfg = _learner_cfg("batch_size=4", "group_size=2", "kl_coef=0", *overrides)
    recipe = PPORecipe(cfg, tiny_path)
    recipe.setup()
    rows = []
    forward = recipe.policy.forward
    recipe.policy.forward = lambda inputs, where=None: (rows.append(len(inputs["input_ids"])), forward(inputs, where))[1]
    m = recipe.train_step(build_batch(recipe.policy, scored, cfg.reward_norm), version=0)
    # Every proximal log-prob is the starting weights' own (the behaviour log-probs are exactly those).
    assert m["behav/max_abs_logp_diff"] < 1e-4
    updates = cfg.ppo_epochs * cfg.minibatches
    assert len(rows) == (proximal_rows > 0) + updates + 1  # + the post-update diagnostic on a few rows
    assert sum(rows[:-1]) == proximal_rows + 4 * cfg.ppo_epochs


def test_batch_reward_norm_z_scores_each_component(policy):
    rng = np.random.default_rng(6)
    scored = [make_scored_dialogue(policy, rng, f"t{i}", n_turns=2, turn_reward=(float(i), 2.0 * i),
                                   dialogue_reward=10.0 * i) for i in range(3)]
    b = build_batch(policy, scored, "batch")
    # "match" raw values over the batch: 0,0 | 1,2 | 2,4 -> mean 1.5, std sqrt(1.9167); "done": 0, 10, 20.
    vals = np.array([0, 0, 1, 2, 2, 4], float)
    z = (vals - vals.mean()) / (vals.std() + 1e-6)
    d = np.array([0, 10, 20.0])
    zd = (d - d.mean()) / (d.std() + 1e-6)
    np.testing.assert_allclose(b.turn_rewards[1], z[2:4], rtol=1e-5)
    np.testing.assert_allclose(b.dialogue_rewards, zd, rtol=1e-5)
