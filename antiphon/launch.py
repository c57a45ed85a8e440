"""Main entry point: ``antiphon [hydra overrides]`` (``make demo`` runs it with the defaults).

Composes and validates the whole config before anything starts, then runs the whole system on one
machine or a Ray cluster: a supervised cold start (cached), vLLM rollout workers holding spoken
dialogues with the user simulator under admission control, reward service replicas scoring them, and
the PPO learner training on the scored stream and broadcasting each new weight version back. Writes
``metrics.jsonl``, TensorBoard logs, checkpoints, a learning-curve PNG and ``summary.json`` into the
run directory. ``-m`` sweeps run one job at a time; add the ``CompareSweep`` callback (see README) for
a comparison table and plot at the end.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import hydra
from omegaconf import DictConfig

from antiphon.config import config_dir, register, to_dataclass
from antiphon.config.schema import Mode
from antiphon.run_setup import (init_ray, load_scenarios, say, shutdown_workers, transport_for_run,
                                validated_run_dir)


def cold_start_policy(cfg: DictConfig, model_path: Path, scenarios) -> Path:
    """The policy RL starts from: the supervised cold start (cached), or the base model when disabled."""
    cs = cfg.learner.cold_start
    if not cs.enabled:
        return model_path
    from antiphon.dialogue_loop import DialogueSettings
    from learner.cold_start import ensure_cold_start

    # The rollout's own dialogue settings: the cold start teaches exactly the layout the workers produce.
    settings = DialogueSettings.from_config(to_dataclass(cfg.rollout), to_dataclass(cfg.model))
    key = f"{cfg.simulator.scenarios or 'generated'}:{cfg.simulator.num_scenarios}:{cfg.simulator.seed}:" \
          f"{cfg.experiment.seed}:{cfg.simulator.max_turns}"
    t0 = time.perf_counter()
    path = ensure_cold_start(str(model_path), key, to_dataclass(cfg.simulator), to_dataclass(cs), settings,
                             Path(os.path.expanduser(cfg.model.cache_dir)) / "cold_start", scenarios=scenarios)
    say(f"cold start (supervised format warm-up): {path} ({time.perf_counter() - t0:.0f}s)")
    return Path(path)


def run(cfg: DictConfig, run_dir: Path) -> Dict[str, Any]:
    """The main job: cold start, then rollout workers + reward service + learner, asynchronously.

    Reads top to bottom: the starting policy, the roles (transport, Ray, workers, reward replicas,
    learner), the training loop (``antiphon.driver``), an orderly stop, the summary."""
    import ray
    import transformers

    from actors import broadcast_weights, launch_workers
    from antiphon.driver import TrainingDriver
    from antiphon.metrics import MetricsSink
    from antiphon.model.tiny import resolve_model_path
    from antiphon.summary import write_summary
    from antiphon.transport import BlockingTransport, from_config
    from learner import policy_dir, read_checkpoint_state
    from learner.actor import Learner
    from reward_service.replica import launch_replicas, stop_replicas

    transformers.utils.logging.disable_progress_bar()
    run_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    lc = cfg.learner
    if not cfg.reward.components:
        raise SystemExit("antiphon: reward.components is empty; the learner needs rewards (reward=default)")

    # -- the policy RL starts from ---------------------------------------------------------------------
    scenarios = load_scenarios(cfg.simulator, cfg.experiment.seed)
    resume = cfg.resume
    if resume:
        state = read_checkpoint_state(resume)
        policy_path, reference_path, version0 = policy_dir(resume), state["reference_path"], state["version"]
        say(f"resuming from {resume} at weight version {version0}")
    else:
        base = resolve_model_path(cfg.model)
        say(f"base policy: {base}")
        policy_path = reference_path = cold_start_policy(cfg, base, scenarios)
        version0 = 0
    rollout_cfg, model_cfg, sim_cfg = to_dataclass(cfg.rollout), to_dataclass(cfg.model), to_dataclass(cfg.simulator)
    learner_cfg, reward_cfg = to_dataclass(lc), to_dataclass(cfg.reward)
    # Sync mode is on-policy by construction; each version needs the whole batch to finish first.
    staleness = 0 if lc.mode is Mode.sync else int(lc.max_staleness)
    # Workers load every broadcast_every-th version only: their weights may lag that much more.
    bound = staleness + int(lc.broadcast_every) - 1
    learner_cfg = dataclasses.replace(learner_cfg, max_staleness=bound)
    admission = {"max_staleness": bound, "batch_size": int(lc.batch_size), "group_size": int(lc.group_size)}
    sink = MetricsSink(run_dir)

    # -- the roles -------------------------------------------------------------------------------------
    with transport_for_run(cfg, run_dir) as tcfg:
        reader = BlockingTransport(from_config(tcfg))
        reader.reset_admission(version=version0, admitted=0)
        init_ray(cfg.cluster, cfg.rollout.num_workers * cfg.rollout.num_cpus_per_worker
                 + 0.5 * cfg.reward.replicas + lc.num_cpus)
        workers: List[Any] = []
        replicas: List[Any] = []
        replica_runs: List[Any] = []
        streams: List[Any] = []
        learner = None
        try:
            # The learner and the reward replicas start while the engines come up (their constructors run
            # as soon as the actors exist): a vLLM start-up mostly waits on its engine process's imports.
            threads = str(lc.num_threads)
            learner = ray.remote(Learner).options(
                num_cpus=float(lc.num_cpus), num_gpus=float(lc.num_gpus),
                runtime_env={"env_vars": {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
                                          "TOKENIZERS_PARALLELISM": "false"}},
            ).remote(str(policy_path), learner_cfg, tcfg, str(run_dir), cfg.rollout.temperature,
                     str(reference_path), resume)
            replicas, replica_runs = launch_replicas(tcfg, reward_cfg)
            t0 = time.perf_counter()
            workers = launch_workers(str(policy_path), rollout_cfg, model_cfg)
            say(f"{len(workers)} rollout workers ready in {time.perf_counter() - t0:.1f}s")
            say(f"{len(replicas)} reward service replica(s) scoring with "
                f"{[c.name or c._target_.rsplit('.', 1)[-1] for c in reward_cfg.components]}")
            # Started before the engines: by now it has had their whole start-up budget too.
            info = ray.get(learner.info.remote(), timeout=float(rollout_cfg.startup_timeout_s))
            say(f"learner ready on {info['device']} ({lc.mode}, max_staleness={staleness}, "
                f"batch {lc.batch_size} dialogues = {lc.batch_size // lc.group_size} scenarios x {lc.group_size})")
            if version0:
                # The workers were built from the checkpoint's policy; tag it with its version.
                broadcast_weights(workers, ray.get(learner.publish_weights.remote()), version0)
            scen = [x.to_dict() for x in scenarios]
            streams = [w.run_stream.remote(scen, sim_cfg, cfg.experiment.name, tcfg, admission) for w in workers]

            # -- training --------------------------------------------------------------------------------
            t_loop = time.perf_counter()
            driver = TrainingDriver(learner, workers, reader, learner_cfg, sink, say, t_start)
            steps_log = driver.run(first=int(info["version"]) + 1)
            loop_s = time.perf_counter() - t_loop

            # -- an orderly stop -------------------------------------------------------------------------
            for w in workers:
                w.stop_stream.remote()
            worker_stats = ray.get(streams, timeout=120)
            streams = []
            learner_info = ray.get(learner.info.remote())
            counters: Dict[str, Any] = dict(reader.counters())
            counters["reward_replicas"] = stop_replicas(replicas, replica_runs)
            replicas = []
            last_dialogues = _last_dialogues(reader, 4)
        finally:
            if learner is not None:
                with contextlib.suppress(Exception):
                    ray.get(learner.close.remote(), timeout=30)
            for w in workers:
                with contextlib.suppress(Exception):
                    w.stop_stream.remote()
            with contextlib.suppress(Exception):
                ray.get(streams, timeout=60)
            if replicas:
                with contextlib.suppress(Exception):
                    stop_replicas(replicas, replica_runs)
            shutdown_workers(workers)
            reader.close()
            sink.close()

    return write_summary(run_dir, cfg, steps_log=steps_log, staleness=staleness, reference_path=str(reference_path),
                         learner_info=learner_info, worker_stats=worker_stats, counters=counters,
                         last_dialogues=last_dialogues, loop_s=loop_s, wall_s=time.perf_counter() - t_start)


def _last_dialogues(reader, n: int):
    """The newest ``n`` dialogues of the run's trajectories stream (read without consuming)."""
    from antiphon.protocol import decode

    return reader.newest_decoded(reader.stream("trajectories"), n, decode)


register()


@hydra.main(config_path=config_dir(), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from antiphon.run_plan import dry_run

    run_dir = validated_run_dir(cfg, "antiphon")
    if dry_run(cfg, run_dir, "antiphon"):
        return
    summary = run(cfg, run_dir)
    run_dir = Path(summary["run_dir"])
    r = summary["learning"].get("reward", {}).get("reward/total")
    say(f"done in {summary['wall_s']}s. What ran: {summary['what_ran']}.")
    if r:
        say(f"mean reward/total: first 20% of steps {r['first']:.3f} -> last 20% {r['last']:.3f}")
    tensorboard = Path(sys.executable).parent / "tensorboard"  # this environment's, as installed with antiphon
    say(f"outputs in {run_dir}: summary.json, metrics.jsonl, learning_curve.png, tb/ ({tensorboard} --logdir "
        f"{run_dir / 'tb'}), checkpoints/, dialogues/")


if __name__ == "__main__":
    main()
