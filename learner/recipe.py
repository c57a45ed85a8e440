"""The PPO recipe: one learner step on one batch of scored dialogues, top to bottom.

    setup -> train_step(batch, version) ... -> save_checkpoint(dir) -> cleanup

A step: recompute the proximal log-probs and values with the current weights (no grad), compute
advantages (GAE with the learned critic, a critic-free group baseline, or V-trace targets for the
APPO variant), then ``ppo_epochs`` x ``minibatches`` optimiser updates of the decoupled PPO loss
(+ clipped value loss, optional KL to the frozen reference, optional entropy bonus).

Why decoupled: a trajectory may have been sampled by weights up to ``max_staleness`` versions old.
The clipped ratio is taken against the *proximal* policy (the weights at the start of this step), so
the trust region is about the update, not about how stale the data was; the staleness itself is
corrected by the behaviour importance weight pi_prox / pi_behav, capped (Hilton et al. 2021; AReaL).
"""
from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch

from antiphon.config.schema import Algo, Device, KLEstimator, LearnerConfig, LossAgg, OffPolicy
from learner import checkpoint
from learner.advantages import compute_advantages, explained_variance, uses_critic
from learner.batch import Batch
from learner.loss import aggregate, entropy_from_logits, kl_penalty, ppo_policy_loss, value_loss
from learner.masks import spread
from learner.policy import PolicyModel


class PPORecipe:
    def __init__(self, cfg: LearnerConfig, model_path: str | Path, temperature: float = 1.0,
                 reference_path: Optional[str | Path] = None):
        self.cfg = cfg
        self.model_path = Path(model_path)
        self.temperature = float(temperature)
        # The frozen reference for the KL term: the policy RL started from (the cold-start model).
        self.reference_path = Path(reference_path) if reference_path else self.model_path

    # -- setup ----------------------------------------------------------------------------------
    def setup(self, checkpoint_dir: Optional[str | Path] = None) -> None:
        c = self.cfg
        torch.manual_seed(c.seed)
        random.seed(c.seed)
        np.random.seed(c.seed)
        if c.device is Device.cpu:
            torch.set_num_threads(c.num_threads)
        path = checkpoint.policy_dir(checkpoint_dir) if checkpoint_dir else self.model_path
        self.policy = PolicyModel(path, device=c.device.value, dtype=c.dtype, temperature=self.temperature)
        hidden = self.policy.model.config.text_config.hidden_size
        # The critic: a value head on the policy's last hidden state (shared trunk), zero-initialised so
        # the first advantages are the raw returns.
        self.value_head = torch.nn.Linear(hidden, 1).to(self.policy.device)
        torch.nn.init.zeros_(self.value_head.weight)
        torch.nn.init.zeros_(self.value_head.bias)
        params = list(self.policy.model.parameters()) + list(self.value_head.parameters())
        self.optimizer = torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay,
                                           betas=(0.9, 0.999), eps=1e-8)
        self.reference = None
        if c.kl_coef > 0:
            self.reference = PolicyModel(self.reference_path, device=c.device.value, dtype=c.dtype,
                                         temperature=self.temperature)
            self.reference.model.requires_grad_(False).eval()
        self.step = 0
        if checkpoint_dir:
            self.step = checkpoint.load_learner_state(checkpoint_dir, self.value_head, self.optimizer,
                                                      self.policy.device)

    # -- one learner step -----------------------------------------------------------------------
    def train_step(self, batch: Batch, version: int) -> Dict[str, float]:
        c = self.cfg
        t0 = time.perf_counter()
        mask, inputs = batch.mask.to(self.policy.device), batch.model_inputs
        behav = batch.behav_logp.to(self.policy.device)
        rewards = batch.rewards.to(self.policy.device)
        self.policy.model.eval()  # no dropout in the tiny model; keeps real checkpoints deterministic too

        # The minibatches of every epoch, drawn up front (the same draws as one epoch at a time).
        order_gen = torch.Generator().manual_seed(c.seed * 1_000_003 + self.step)
        parts = [[sorted(int(i) for i in part)
                  for part in np.array_split(torch.randperm(len(batch), generator=order_gen).numpy(), c.minibatches)]
                 for _ in range(c.ppo_epochs)]

        # 1. Proximal log-probs (and values) under the current weights. Every loss term reads policy tokens
        #    only, so logits are computed there only (``sel``); values on every position (GAE reads them).
        #    Without a critic nothing reads the proximal pass before the first update, whose own forward
        #    runs at these same weights: its rows take their proximal log-probs from it, and only the
        #    other rows are passed over here (with one minibatch and one epoch, none).
        use_critic = uses_critic(c)
        sel = mask.bool()
        first = [] if use_critic else parts[0][0]
        rest = sorted(set(range(len(batch))) - set(first))
        prox = torch.zeros_like(behav)
        old_values = torch.zeros_like(behav)
        with torch.no_grad():
            if rest:
                sub = batch.rows(rest) if len(rest) < len(batch) else batch
                cut = sub.mask.shape[1]
                logits, hidden = self.policy.forward(sub.model_inputs, sel[rest, :cut])
                prox[rest, :cut] = self.policy.token_logprobs(logits, sub.model_inputs, sel[rest, :cut])
                if use_critic:  # then ``rest`` is every row
                    old_values = self.value_head(hidden).squeeze(-1)
                del logits, hidden
            ref = None
            if self.reference is not None:
                ref = self.reference.token_logprobs(self.reference.forward(inputs, sel)[0], inputs, sel)

        # 2. Advantages and value targets (without a critic they read neither ``prox`` nor values).
        adv, returns = compute_advantages(c, batch, prox, behav, rewards, old_values, mask)
        # The behaviour policy enters the loss only through the decoupled importance weight; V-trace
        # already weights its targets by the (clipped) behaviour ratio.
        behav_for_loss = behav if (c.off_policy is OffPolicy.decoupled and c.algo is Algo.ppo) else None

        # 3. Optimiser updates.
        sums: Dict[str, float] = {}
        n_updates = 0
        # Linear warm-up: Adam's first steps move every weight by ~lr whatever the gradient's size, which
        # on a freshly fine-tuned policy is a large, mostly random jump. A function of the step: resumable.
        lr = c.lr * min(1.0, (self.step + 1) / c.warmup_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        for epoch in parts:
            for idx in epoch:
                mb = batch.rows(idx) if len(idx) < len(batch) else batch
                cut = mb.mask.shape[1]
                m, m_sel = mask[idx, :cut], sel[idx, :cut]
                logits, hidden = self.policy.forward(mb.model_inputs, m_sel)
                logp = self.policy.token_logprobs(logits, mb.model_inputs, m_sel)
                if idx is first:  # the first update, at the proximal weights
                    prox[idx, :cut] = logp.detach()
                pl, pm = ppo_policy_loss(
                    logp, prox[idx, :cut], None if behav_for_loss is None else behav_for_loss[idx, :cut],
                    adv[idx, :cut], m, clip_low=c.clip_low, clip_high=c.clip_high,
                    behav_cap=c.behav_cap, behav_mode=c.behav_mode, agg=c.loss_agg)
                loss = pl
                metrics = {"loss/policy": float(pl.detach()), **pm}
                if use_critic:
                    values = self.value_head(hidden).squeeze(-1)
                    vl, vm = value_loss(values, old_values[idx, :cut], returns[idx, :cut], m,
                                        clip=c.value_clip, agg=c.loss_agg)
                    loss = loss + c.value_coef * vl
                    metrics.update({"loss/value": float(vl.detach()), **vm})
                ent = aggregate(spread(entropy_from_logits(logits), m_sel), m, c.loss_agg)
                metrics["loss/entropy"] = float(ent.detach())
                if c.entropy_coef > 0:
                    loss = loss - c.entropy_coef * ent
                if ref is not None:
                    kl = aggregate(kl_penalty(logp, ref[idx, :cut], c.kl_estimator), m, c.loss_agg)
                    loss = loss + c.kl_coef * kl
                    metrics["kl/ref"] = float(kl.detach())
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                gn = torch.nn.utils.clip_grad_norm_(
                    list(self.policy.model.parameters()) + list(self.value_head.parameters()),
                    c.max_grad_norm if c.max_grad_norm > 0 else float("inf"))
                self.optimizer.step()
                metrics.update({"loss/total": float(loss.detach()), "perf/grad_norm": float(gn)})
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                n_updates += 1
                del logits, hidden, logp, loss
        self.step += 1

        out = {k: v / n_updates for k, v in sums.items()}
        # How far this step moved the policy (k3 estimate of KL(prox || new)), on a few rows: a diagnostic.
        with torch.no_grad():
            rows = list(range(min(4, len(batch))))
            sub = batch.rows(rows)
            cut = sub.mask.shape[1]
            where = sel[rows, :cut]
            new_logp = self.policy.token_logprobs(self.policy.forward(sub.model_inputs, where)[0], sub.model_inputs,
                                                  where)
            out["kl/update"] = float(aggregate(kl_penalty(new_logp, prox[rows, :cut], KLEstimator.k3),
                                               mask[rows, :cut], LossAgg.token_mean))
            del new_logp
        # Staleness of every trained token: how many versions behind the learner its sampler was.
        tok_versions = batch.versions[batch.mask.bool()]
        stale = (int(version) - tok_versions).clamp(min=0).float()
        out.update({
            "staleness/mean": float(stale.mean()) if stale.numel() else 0.0,
            "staleness/max": float(stale.max()) if stale.numel() else 0.0,
            "behav/max_abs_logp_diff": float(((prox - behav).abs() * mask).max()),
            "value/explained_variance": explained_variance(old_values, returns, mask) if use_critic else float("nan"),
            "adv/mean": float((adv * mask).sum() / mask.sum().clamp(min=1)),
            "adv/abs_mean": float((adv.abs() * mask).sum() / mask.sum().clamp(min=1)),
            "perf/train_s": time.perf_counter() - t0,
            "perf/policy_tokens": float(mask.sum()),
            "perf/updates": float(n_updates),
            "perf/lr": lr,
        })
        out["staleness/_hist"] = np.bincount(stale.long().numpy(), minlength=1).tolist() if stale.numel() else [0]
        return out

    # -- weights and checkpoints ----------------------------------------------------------------
    def rollout_state_dict(self) -> Dict[str, torch.Tensor]:
        return self.policy.state_dict_for_rollout()

    def save_checkpoint(self, out_dir: str | Path, extra: Optional[Dict[str, Any]] = None) -> Path:
        """The policy, the critic, the optimiser and every RNG (``learner.checkpoint``), plus ``extra``."""
        return checkpoint.save_checkpoint(out_dir, self.policy, self.value_head, self.optimizer, self.step,
                                          self.reference_path, extra)

    def cleanup(self) -> None:
        self.reference = None
