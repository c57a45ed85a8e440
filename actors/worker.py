"""The rollout worker: a Ray actor that owns one vLLM engine.

Many generate calls run concurrently inside one actor (an async actor), and vLLM batches them.
Weights arrive as a versioned state dict in checkpoint naming -- typically one ``ray.put`` by the
learner that every worker reads from the object store -- and are loaded in place between requests.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from typing import TYPE_CHECKING, Any, Dict, List, Mapping

from antiphon.dialogue_loop import Dialogue
from antiphon.affinity import pin_process
from antiphon.dialogue import Scenario, simulator_factory
from antiphon.generation import GenerationRequest, GenerationResult
from antiphon.protocol import encode

if TYPE_CHECKING:
    from antiphon.config.schema import ModelConfig, RolloutConfig, SimulatorConfig


class RolloutWorker:
    def __init__(self, index: int, model_path: str, rollout_cfg: RolloutConfig, model_cfg: ModelConfig):
        self.index = int(index)
        self.model_path = str(model_path)
        self.rollout_cfg = rollout_cfg
        self.model_cfg = model_cfg
        # Each worker samples from its own stream: the same seed in two engines gives identical samples.
        self.seed = rollout_cfg.seed + self.index
        self.engine = None
        pin_process(rollout_cfg.cpu_affinity, "rollout.cpu_affinity")

    async def start(self) -> Dict[str, Any]:
        from actors.engine import RolloutEngine

        if self.engine is None:
            self.engine = await RolloutEngine.create(self.model_path, self.rollout_cfg, self.model_cfg, self.seed)
        return self.info()

    def info(self) -> Dict[str, Any]:
        return {"index": self.index, "seed": self.seed, "pid": os.getpid(), "host": socket.gethostname(),
                "weight_version": self.engine.version if self.engine else None}

    async def generate(self, requests: List[GenerationRequest]) -> List[GenerationResult]:
        return await self.engine.generate_batch(list(requests))

    async def run_dialogues(self, scenarios: List[Dict[str, Any]], simulator_cfg: SimulatorConfig,
                            run: str = "", transport_cfg: Dict[str, Any] | None = None) -> Dict[str, Any]:
        """Runs the dialogues concurrently (``rollout.dialogue.max_concurrent`` at a time).

        With ``transport_cfg`` each finished trajectory is appended to the run's ``trajectories`` stream
        as soon as it ends (waiting there when consumers fall behind); without, the encoded trajectories
        come back in ``"trajectories"``. Dialogues that end before any agent turn produce no trajectory
        but are counted under their reason in ``"end_reasons"``.
        """
        from collections import Counter

        self._ensure_dialogue_parts()
        make_sim = simulator_factory(simulator_cfg, self.settings.sample_rate)
        gate = asyncio.Semaphore(max(1, self.rollout_cfg.dialogue.max_concurrent))
        reasons: Counter = Counter()
        out: List[bytes] = []

        async def one(sd: Dict[str, Any]) -> None:
            nonlocal published
            async with gate:
                try:
                    sim = make_sim()
                except Exception as e:  # a simulator that cannot even be built ends only its own dialogue
                    reasons[f"simulator_error:init:{type(e).__name__}: {e}"[:300]] += 1
                    return
                d = Dialogue(self.engine, sim, Scenario.from_dict(sd), self.chat, self.agent_voice, self.settings,
                             run=run, worker=self.index, tokens_per_clip=self.tokens_per_clip)
                traj = await d.run()
                reasons[d.end_reason] += 1
                if traj is None:
                    return
                t1 = time.perf_counter()
                payload = encode(traj)
                if stream is None:
                    out.append(payload)
                else:
                    # The id makes a retried publish (e.g. after a reconnect) land once.
                    await transport.publish(stream, payload, id_hint=traj.trajectory_id)
                    published += 1
                timing["encode_publish_s"] += time.perf_counter() - t1
                for t in traj.turns:
                    for k, v in t.timing.items():
                        timing[k] += v
                timing["simulator_s"] += traj.meta["simulator_s"]
                timing["dialogue_s"] += traj.meta["wall_s"]

        transport, stream = None, None
        if transport_cfg is not None:
            transport = await self._transport(transport_cfg)
            stream = transport.stream("trajectories")
        timing: Counter = Counter()
        published = 0
        engine_before = Counter(self.engine.stats)
        t0 = time.perf_counter()
        await asyncio.gather(*(one(sd) for sd in scenarios))
        timing.update(Counter(self.engine.stats) - engine_before)
        for r, n in reasons.items():
            self.end_reasons[r] += n
        return {"trajectories": out, "published": published, "end_reasons": dict(reasons),
                "wall_s": time.perf_counter() - t0, "timing": dict(timing)}

    async def _transport(self, transport_cfg: Dict[str, Any]):
        if getattr(self, "transport", None) is None:
            from antiphon.transport import from_config

            self.transport = from_config(transport_cfg)
        return self.transport

    def _ensure_dialogue_parts(self) -> None:
        if getattr(self, "chat", None) is not None:
            return
        from collections import Counter

        from hydra.utils import instantiate
        from transformers import AutoFeatureExtractor, AutoTokenizer

        from antiphon.dialogue_loop import DialogueSettings
        from antiphon.model.chat import ChatFormat, audio_placeholder_count

        self.chat = ChatFormat(AutoTokenizer.from_pretrained(self.model_path))
        max_frames = int(AutoFeatureExtractor.from_pretrained(self.model_path).nb_max_frames)
        self.tokens_per_clip = lambda n: audio_placeholder_count(n, max_frames)
        self.settings = DialogueSettings.from_config(self.rollout_cfg, self.model_cfg)
        voice_cfg = self.rollout_cfg.agent_voice
        self.agent_voice = instantiate(voice_cfg, sample_rate=self.settings.sample_rate) if voice_cfg else None
        self.end_reasons = Counter()

    def metrics(self) -> Dict[str, Any]:
        return {"end_reasons": dict(getattr(self, "end_reasons", {}))}

    async def load_weights(self, weights: Mapping[str, Any], version: int) -> float:
        """Loads a state dict, or a handle from ``antiphon.weight_sync`` (what the learner publishes)."""
        if "kind" in weights and "version" in weights:
            from antiphon.weight_sync import receive

            weights = await asyncio.to_thread(receive, dict(weights))
        return await self.engine.load_weights(weights, version)

    async def run_stream(self, scenarios: List[Dict[str, Any]], simulator_cfg: SimulatorConfig, run: str,
                         transport_cfg: Dict[str, Any], admission: Dict[str, int]) -> Dict[str, Any]:
        """Runs dialogues until ``stop_stream``: up to ``rollout.dialogue.max_concurrent`` in flight, each
        started only when admission control admits it (``admission``: max_staleness, batch_size,
        group_size). Ticket k plays scenario ``k // group_size`` (cycled), so consecutive tickets -- on any
        worker -- form the groups of the group baseline. Returns counts and the time spent idle (nothing in
        flight, waiting for admission)."""
        from collections import Counter

        self._ensure_dialogue_parts()
        transport = await self._transport(transport_cfg)
        stream = transport.stream("trajectories")
        make_sim = simulator_factory(simulator_cfg, self.settings.sample_rate)
        s, b, g = int(admission["max_staleness"]), int(admission["batch_size"]), int(admission["group_size"])
        cap = max(1, self.rollout_cfg.dialogue.max_concurrent)
        self._stop = asyncio.Event()
        stats = self.stream_stats = Counter()
        in_flight: set = set()

        async def one(ticket: int, admitted_version: int) -> None:
            sd = scenarios[(ticket // g) % len(scenarios)]
            traj = None
            try:
                try:
                    sim = make_sim()
                except Exception as e:  # a simulator that cannot even be built ends only its own dialogue
                    self.end_reasons[f"simulator_error:init:{type(e).__name__}: {e}"[:300]] += 1
                    return
                d = Dialogue(self.engine, sim, Scenario.from_dict(sd), self.chat, self.agent_voice, self.settings,
                             run=run, worker=self.index, tokens_per_clip=self.tokens_per_clip)
                traj = await d.run()
                self.end_reasons[d.end_reason] += 1
                if traj is not None:
                    traj.meta.update(ticket=ticket, group=ticket // g, admitted_version=admitted_version)
                    await transport.publish(stream, encode(traj), id_hint=traj.trajectory_id)
                    stats["published"] += 1
            finally:
                if traj is None:
                    await transport.release_admission(1)  # nothing to train: the slot goes back to the pool
                    stats["released"] += 1

        t0 = time.perf_counter()
        idle_since = None
        try:
            while not self._stop.is_set():
                if len(in_flight) >= cap:
                    await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                    continue
                ticket, version = await transport.try_admit(s, b)
                if ticket is None:
                    if not in_flight and idle_since is None:
                        idle_since = time.perf_counter()
                    try:
                        await asyncio.wait_for(self._stop.wait(), timeout=0.05)
                    except asyncio.TimeoutError:
                        pass
                    continue
                if idle_since is not None:
                    stats["idle_ms"] += int(1000 * (time.perf_counter() - idle_since))
                    idle_since = None
                stats["admitted"] += 1
                task = asyncio.ensure_future(one(ticket, version))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
        finally:
            if idle_since is not None:
                stats["idle_ms"] += int(1000 * (time.perf_counter() - idle_since))
            for task in list(in_flight):
                task.cancel()  # the run is over: unfinished dialogues are not needed
            await asyncio.gather(*in_flight, return_exceptions=True)
        return {**dict(stats), "wall_s": time.perf_counter() - t0, "end_reasons": dict(self.end_reasons)}

    def stop_stream(self) -> None:
        if getattr(self, "_stop", None) is not None:
            self._stop.set()

    def stats(self) -> Dict[str, Any]:
        return {"index": self.index, **dict(getattr(self, "stream_stats", {})),
                "end_reasons": dict(getattr(self, "end_reasons", {})),
                "weight_version": self.engine.version if self.engine else None}

    def weight_version(self) -> int:
        return self.engine.version

    async def shutdown(self) -> None:
        if getattr(self, "transport", None) is not None:
            await self.transport.close()
            self.transport = None
        if self.engine is not None:
            self.engine.shutdown()
            self.engine = None


def launch_workers(model_path: str, rollout_cfg: RolloutConfig, model_cfg: ModelConfig,
                   num_workers: int | None = None) -> List[Any]:
    """Starts ``rollout.num_workers`` RolloutWorker actors (engines ready on return). Needs ``ray.init()``."""
    import ray

    from actors.engine import engine_env

    from antiphon.config import to_dataclass
    from antiphon.config.schema import ModelConfig, RolloutConfig

    # Mappings given by hand go through the schema: the workers get its dataclasses either way.
    rollout_cfg, model_cfg = to_dataclass(rollout_cfg, RolloutConfig), to_dataclass(model_cfg, ModelConfig)
    n = int(num_workers if num_workers is not None else rollout_cfg.num_workers)
    cpus, gpus = rollout_cfg.num_cpus_per_worker, rollout_cfg.num_gpus_per_worker
    actor_cls = ray.remote(RolloutWorker).options(
        num_cpus=cpus,
        num_gpus=gpus,
        runtime_env={"env_vars": engine_env(rollout_cfg)},
        max_concurrency=1000,  # many dialogues' requests in flight at once
    )
    total = ray.cluster_resources()
    if n * cpus > total.get("CPU", 0) or n * gpus > total.get("GPU", 0):
        # Not an error: an autoscaling cluster grows to fit. The start-up timeout below bounds the wait.
        logging.getLogger("antiphon").warning(
            "rollout.num_workers=%d x (num_cpus_per_worker=%s, num_gpus_per_worker=%s) exceeds the Ray cluster's "
            "current CPU=%s, GPU=%s; waiting up to rollout.startup_timeout_s for resources", n, cpus, gpus,
            total.get("CPU", 0), total.get("GPU", 0))
    workers = [actor_cls.remote(i, model_path, rollout_cfg, model_cfg) for i in range(n)]
    timeout = rollout_cfg.startup_timeout_s
    try:
        ray.get([w.start.remote() for w in workers], timeout=timeout)
    except ray.exceptions.GetTimeoutError:
        for w in workers:
            ray.kill(w)
        raise TimeoutError(f"rollout workers not ready after rollout.startup_timeout_s={timeout}; Ray has "
                           f"{ray.available_resources()} free for {n} x {cpus} CPU / {gpus} GPU") from None
    return workers


def broadcast_weights(workers: List[Any], weights: Mapping[str, Any], version: int) -> List[float]:
    """Every worker loads ``weights`` -- a ``antiphon.weight_sync`` handle, or a state dict (then put
    into the object store once); returns each worker's load time (s)."""
    import ray

    if not ("kind" in weights and "version" in weights):
        from antiphon.weight_sync import sender

        weights = sender("object_store").publish(weights, version)
    return ray.get([w.load_weights.remote(weights, version) for w in workers])
