"""The training loop of a run: drives the learner step by step and moves each new weight version to the
rollout workers, while the workers keep generating and the reward service keeps scoring.

Async mode: version v's weights load into the workers while the learner already trains on the next batch;
admission opens for v only once every worker has them, so a dialogue admitted under v never starts on
older weights. Sync mode: each step waits for its broadcast. The learner actor runs its calls in order,
so its next step is queued right behind this step's publish (and checkpoint): it trains while the driver
waits for the workers' loads and writes logs, instead of idling through them.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from antiphon.config.schema import Mode
from antiphon.metrics import progress_line


class TrainingDriver:
    """One run's loop over learner steps ``first..last`` (``learner`` and ``workers`` are Ray actor handles;
    ``transport`` is the run's ``BlockingTransport``, for its admission operations; ``sink`` a
    :class:`antiphon.metrics.MetricsSink`)."""

    def __init__(self, learner, workers: List[Any], transport, learner_cfg, sink,
                 say: Callable[[str], None], t_start: float):
        self.learner, self.workers, self.transport, self.lc = learner, workers, transport, learner_cfg
        self.sink, self.say, self.t_start = sink, say, t_start
        self.steps_log: List[Dict[str, Any]] = []
        self._pending: Optional[Tuple[int, List[Any], float]] = None  # (version, load refs, start time)

    def _want_samples(self, step: int) -> bool:
        return step % int(self.lc.log_samples_every) == 0 or step == 1

    def _start_broadcast(self, version: int, handle: Dict[str, Any]) -> None:
        self._pending = (version, [w.load_weights.remote(handle, version) for w in self.workers],
                         time.perf_counter())

    def _finish_broadcast(self) -> Tuple[float, float]:
        """Waits for the pending version's loads, then opens admission for it: (slowest load, broadcast) s."""
        import ray

        version, refs, t_b = self._pending
        self._pending = None
        load = ray.get(refs)
        self.transport.set_admission_version(version)
        return max(load), time.perf_counter() - t_b

    def run(self, first: int) -> List[Dict[str, Any]]:
        """Runs learner steps ``first..learner.steps``; returns the metrics lines written."""
        import ray

        lc, learner = self.lc, self.learner
        last = int(lc.steps)
        sync = lc.mode is Mode.sync
        load_s, bcast_s = 0.0, 0.0
        last_t = time.perf_counter()
        step_ref = learner.step.remote(want_samples=self._want_samples(first)) if first <= last else None
        for step in range(first, last + 1):
            if self._pending is not None:
                load_s, bcast_s = self._finish_broadcast()
            out = ray.get(step_ref)
            version = out["version"]
            out["metrics"]["perf/weight_load_s"], out["metrics"]["perf/broadcast_s"] = load_s, bcast_s
            publish = version % int(lc.broadcast_every) == 0 or step == last
            handle_ref = learner.publish_weights.remote() if publish else None
            ckpt_ref = learner.save_checkpoint.remote() if step % int(lc.checkpoint_every) == 0 or step == last \
                else None
            if step < last:
                step_ref = learner.step.remote(want_samples=self._want_samples(step + 1))
            if publish:
                self._start_broadcast(version, ray.get(handle_ref))
                if sync:
                    load_s, bcast_s = self._finish_broadcast()
            else:
                self.transport.set_admission_version(version)
            if ckpt_ref is not None:
                ray.get(ckpt_ref)
            now = time.perf_counter()
            m = out["metrics"]
            m["perf/tokens_per_s"] = m["perf/policy_tokens"] / max(now - last_t, 1e-6)
            m["time_s"] = now - self.t_start
            last_t = now
            self.steps_log.append(self.sink.write(step, version, out))
            self.say(progress_line(step, last, out, m["perf/tokens_per_s"], now - self.t_start))
        if self._pending is not None:
            self._finish_broadcast()
        return self.steps_log
