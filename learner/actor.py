"""The learner process role: reads scored dialogues through a consumer group, trains, publishes weights.

Runs as a Ray actor (on a GPU when the cluster has one: ``learner.device=cuda``, ``learner.num_gpus``)
or as a plain object in tests -- the same code.

Exactly-once training across restarts: a trajectory's stream entry is acknowledged only when a
checkpoint that includes its update is on disk. A restarted learner (``resume=<checkpoint>``) re-reads
what it had been delivered but not acknowledged, skips ids the checkpoint lists as trained, and goes
on -- so no trajectory is trained twice and none is lost.
"""
from __future__ import annotations

import collections
import dataclasses
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from antiphon.config.schema import Estimator, LearnerConfig, Mode

GROUP = "learner"


class Learner:
    def __init__(self, model_path: str, learner_cfg: LearnerConfig, transport_cfg: Dict[str, Any], run_dir: str,
                 temperature: float = 1.0, reference_path: Optional[str] = None, resume: Optional[str] = None,
                 consumer: str = "learner-0"):
        from antiphon.transport import BlockingTransport, from_config
        from antiphon.weight_sync import sender
        from learner.checkpoint import read_checkpoint_state
        from learner.recipe import PPORecipe

        from antiphon.affinity import pin_process

        from antiphon.config import to_dataclass

        learner_cfg = to_dataclass(learner_cfg, LearnerConfig)  # a mapping given by hand: through the schema
        pin_process(learner_cfg.cpu_affinity, "learner.cpu_affinity")
        self.cfg = learner_cfg
        self.run_dir = Path(run_dir)
        self.consumer = consumer
        self.reader = BlockingTransport(from_config(transport_cfg))
        self.stream = self.reader.stream("scored")
        self.reader.ensure_group(self.stream, GROUP)
        self.recipe = PPORecipe(self.cfg, model_path, temperature, reference_path)
        self.recipe.setup(resume)
        self.sender = sender(self.cfg.weight_sync.value)
        self.version = 0
        self.trained: List[str] = []  # trajectory ids, in training order
        self.unacked: List[str] = []  # stream entries trained since the last checkpoint
        self.counts: collections.Counter = collections.Counter()
        self.last_checkpoint: Optional[str] = None
        if resume:
            st = read_checkpoint_state(resume)
            self.version, self.trained = int(st["version"]), list(st["trained_ids"])
            self.counts.update(st.get("counts", {}))
        self._trained_set = set(self.trained)
        self._replay = bool(resume)  # first read what this consumer held but never acknowledged
        self._replay_after = "0"
        self._held: List[List[Any]] = []  # read, not yet trained: groups of (msg_id, scored), oldest first
        self._open: Dict[Any, List[Any]] = {}  # group key -> its held group, while incomplete

    # -- batches --------------------------------------------------------------------------------
    # Scored dialogues wait in ``self._held`` (groups in order of first arrival) until a batch takes them.
    # With the group estimator a batch takes whole groups: every rollout then has its group_size - 1 peers
    # as its baseline. Dialogues of one group finish at different times, so in async mode a batch of the
    # first batch_size arrivals would split groups, and a member alone in its batch gets no baseline at all.
    # A group still incomplete is taken anyway once it is as old as the staleness bound allows (a version
    # later it would be dropped) or when no dialogue has arrived for learner.group_wait_s (a member that
    # never came: its dialogue failed and its admission slot went to another group).

    def _whole_groups(self) -> bool:
        return self.cfg.estimator is Estimator.group and self.cfg.group_size > 1

    def _lag(self, s) -> int:
        t = s.trajectory
        pv = t.versions[t.policy_mask.astype(bool)]
        return self.version - int(pv.min())

    def _hold(self, msg_id: str, s) -> None:
        if not self._whole_groups():  # first come, first trained
            self._held.append([(msg_id, s)])
            return
        key = s.trajectory.meta.get("group", s.trajectory.scenario.get("scenario_id"))
        group = self._open.get(key)
        if group is None:
            group = self._open[key] = []
            self._held.append(group)
        group.append((msg_id, s))
        if len(group) >= self.cfg.group_size:
            del self._open[key]  # complete: a later dialogue with the same key starts a new group

    def _drop(self, msg_id: str, reason: str) -> None:
        # Dropped, counted, and its admission slot given back so the pipeline does not shrink.
        self.reader.drop(self.stream, GROUP, msg_id, reason)
        self.reader.release_admission(1)
        self.counts["dropped_stale" if reason == "stale" else "dropped_empty"] += 1

    def _take(self, need: int, smax: int, quiet: bool) -> Optional[List[Any]]:
        """``need`` held dialogues, or None while the held ones cannot make a batch yet."""
        for group in self._held:  # held ones age as the learner's version moves on
            keep = []
            for msg_id, s in group:
                if self._lag(s) > smax:
                    self._drop(msg_id, "stale")
                else:
                    keep.append((msg_id, s))
            group[:] = keep  # in place: _open refers to it
        if self._whole_groups():
            g = self.cfg.group_size
            lag = {id(grp): max((self._lag(s) for _, s in grp), default=0) for grp in self._held}
            ready = [grp for grp in self._held if len(grp) >= g or lag[id(grp)] >= smax or quiet]
            ready.sort(key=lambda grp: -lag[id(grp)])  # oldest first: they are the next to go stale
        else:
            ready = list(self._held)
        if sum(len(grp) for grp in ready) < need:
            return None
        out: List[Any] = []
        for split in (False, True):  # groups that fit whole first; split one only to fill the batch
            for grp in ready:
                if grp and (split or len(grp) <= need - len(out)):
                    took = grp[:need - len(out)]
                    out += took
                    del grp[:len(took)]
        self._held = [grp for grp in self._held if grp]
        self._open = {k: grp for k, grp in self._open.items() if grp}
        return out

    def _next_batch(self) -> List[Any]:
        from antiphon.protocol import decode_scored

        need = self.cfg.batch_size
        smax = 0 if self.cfg.mode is Mode.sync else self.cfg.max_staleness
        deadline = time.monotonic() + self.cfg.batch_timeout_s
        last_arrival = time.monotonic()
        while True:
            quiet = time.monotonic() - last_arrival > self.cfg.group_wait_s
            got = self._take(need, smax, quiet)
            if got is not None:
                return got
            held = sum(len(grp) for grp in self._held)
            if time.monotonic() > deadline:
                raise TimeoutError(f"learner: {held}/{need} scored dialogues after learner.batch_timeout_s="
                                   f"{self.cfg.batch_timeout_s} (are rollout workers and the reward service up?)")
            # Whole groups may need more than a batch's worth in hand; otherwise read only what is missing.
            count = need if self._whole_groups() else need - held
            if self._replay:
                msgs = self.reader.read_pending(self.stream, GROUP, self.consumer, count, after=self._replay_after)
                if not msgs:
                    self._replay = False
                    continue
                self._replay_after = msgs[-1][0]
                items = self.reader.validate(self.stream, GROUP, msgs, decode_scored)
            else:
                items = self.reader.consume_validated(self.stream, GROUP, self.consumer, decode_scored,
                                                      count=count, block_ms=200)
            for msg_id, s in items:
                t = s.trajectory
                last_arrival = time.monotonic()
                if t.trajectory_id in self._trained_set:
                    self.reader.ack(self.stream, GROUP, [msg_id])  # trained before a restart
                    self.counts["duplicates_skipped"] += 1
                elif not t.policy_mask.any():
                    self._drop(msg_id, "no_policy_tokens")
                elif self._lag(s) > smax:  # beyond the bound admission control enforces
                    self._drop(msg_id, "stale")
                else:
                    self._hold(msg_id, s)

    # -- one step -------------------------------------------------------------------------------
    def step(self, want_samples: bool = False) -> Dict[str, Any]:
        """Reads one batch, trains on it, bumps the version; returns metrics (and a few sample dialogues)."""
        from learner.batch import build_batch

        t0 = time.perf_counter()
        items = self._next_batch()
        wait_s = time.perf_counter() - t0
        scored = [s for _, s in items]
        batch = build_batch(self.recipe.policy, scored, self.cfg.reward_norm)
        metrics = self.recipe.train_step(batch, self.version)
        hist = metrics.pop("staleness/_hist")
        for msg_id, s in items:
            self.trained.append(s.trajectory.trajectory_id)
            self._trained_set.add(s.trajectory.trajectory_id)
            self.unacked.append(msg_id)
        self.version += 1
        totals = [s.rewards.total for s in scored]
        metrics.update({
            "reward/total": float(np.mean(totals)),
            **{f"reward/{k}": float(np.nanmean(v)) for k, v in batch.components.items()
               if not np.all(np.isnan(v))},
            "rollout/trajectories": float(len(scored)),
            "rollout/agent_turns": float(sum(s.trajectory.num_agent_turns for s in scored)),
            "rollout/mean_dialogue_s": float(np.mean([s.trajectory.meta.get("wall_s", 0.0) for s in scored])),
            # Mean over rows of (its group's rows in this batch) / group_size: 1.0 when every group is whole.
            "rollout/group_fill": float(np.mean([batch.groups.count(k) for k in batch.groups])
                                        / self.cfg.group_size),
            "perf/learner_wait_s": wait_s,
            "perf/step_s": time.perf_counter() - t0,
            "staleness/dropped_total": float(self.counts["dropped_stale"]),
        })
        out = {"version": self.version, "metrics": metrics, "staleness_hist": hist,
               "trajectory_ids": [s.trajectory.trajectory_id for s in scored]}
        if want_samples:
            out["samples"] = [_sample(s) for s in scored[:2]]
        return out

    # -- weights --------------------------------------------------------------------------------
    def publish_weights(self) -> Dict[str, Any]:
        """A handle rollout workers load the current weights from (tagged with the current version)."""
        return self.sender.publish(self.recipe.rollout_state_dict(), self.version)

    # -- checkpoints ----------------------------------------------------------------------------
    def save_checkpoint(self) -> str:
        path = self.run_dir / "checkpoints" / f"step_{self.version:06d}"
        self.recipe.save_checkpoint(path, extra={"version": self.version, "trained_ids": self.trained,
                                                 "counts": dict(self.counts), "stream": self.stream,
                                                 "group": GROUP, "consumer": self.consumer,
                                                 "config": dataclasses.asdict(self.cfg)})
        # Only now is the work durable: acknowledge what it covers.
        self.reader.ack(self.stream, GROUP, self.unacked)
        self.unacked = []
        self.last_checkpoint = str(path)
        (self.run_dir / "checkpoints" / "latest").write_text(path.name)
        return str(path)

    def info(self) -> Dict[str, Any]:
        return {"version": self.version, "trained": len(self.trained), "counts": dict(self.counts),
                "last_checkpoint": self.last_checkpoint, "device": str(self.recipe.policy.device)}

    def trained_ids(self) -> List[str]:
        return list(self.trained)

    def close(self) -> None:
        self.sender.close()
        self.recipe.cleanup()
        self.reader.close()


def _sample(s) -> Dict[str, Any]:
    """A dialogue for TensorBoard: transcript lines and the audio of every turn (int16 PCM)."""
    t = s.trajectory
    lines, audio = [], []
    for x in t.turns:
        if x.role == "user":
            lines.append(f"user ({x.emotion}): {x.text}")
        else:
            lines.append(f"agent [{x.emotion}] <think>{x.reasoning}</think> {x.text}")
        if x.audio is not None:
            audio.append({"role": x.role, "pcm": x.audio.pcm, "sample_rate": x.audio.sample_rate})
    return {"id": t.trajectory_id, "transcript": "\n".join(lines), "audio": audio,
            "reward": float(s.rewards.total)}
