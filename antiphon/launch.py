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
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import hydra
from omegaconf import DictConfig

from antiphon.config import ConfigError, config_dir, register, to_plain, validate

log = logging.getLogger("antiphon")


def say(msg: str) -> None:
    print(f"[antiphon] {msg}", flush=True)


def init_ray(cluster: DictConfig, num_cpus_needed: float) -> None:
    import ray

    if cluster.address:
        ray.init(address=cluster.address, namespace=cluster.namespace, log_to_driver=cluster.log_to_driver)
    else:
        num_cpus = cluster.num_cpus or max(int(num_cpus_needed + 0.999), os.cpu_count() or 1)
        ray.init(num_cpus=num_cpus, namespace=cluster.namespace, include_dashboard=cluster.include_dashboard,
                 log_to_driver=cluster.log_to_driver)


@contextlib.contextmanager
def transport_for_run(cfg: DictConfig, run_dir: Path):
    """The run's transport config as a plain dict with a usable ``url``: the configured server, or an
    embedded Valkey (loopback, generated password, AOF on) that lives as long as the block. In a Hydra
    multirun each job gets its own stream namespace (``<namespace>.job<N>``), even on a shared server."""
    tcfg = to_plain(cfg.transport)
    job = _multirun_job()
    if job is not None:
        tcfg["namespace"] = f"{tcfg['namespace']}.job{job}"
    if tcfg.get("url"):
        yield tcfg
        return
    from antiphon.transport import EmbeddedValkey

    data_dir = Path(tcfg.get("data_dir") or run_dir / "valkey")
    with EmbeddedValkey(data_dir, appendfsync=tcfg["appendfsync"]) as server:
        say(f"embedded Valkey on {server!r}, data in {data_dir}")
        yield dict(tcfg, url=server.url)


def _multirun_job():
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    return hc.job.num if hc.mode == RunMode.MULTIRUN else None


def validated_run_dir(cfg: DictConfig, prog: str) -> Path:
    """Validates the composed config (exit 2 with every problem named, before anything starts) and
    returns the run directory."""
    from hydra.core.hydra_config import HydraConfig

    try:
        validate(cfg)
    except ConfigError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        sys.exit(2)
    return Path(cfg.experiment.run_dir or HydraConfig.get().runtime.output_dir)


def shutdown_workers(workers: List[Any]) -> None:
    import ray

    for w in workers:
        try:
            ray.get(w.shutdown.remote(), timeout=30)
        except Exception:  # a dead worker has nothing left to shut down
            pass
    ray.shutdown()


def load_scenarios(sim_cfg: DictConfig, seed: int):
    from simulator.scenarios import generate_scenarios, read_jsonl

    if sim_cfg.scenarios:
        return read_jsonl(sim_cfg.scenarios)
    return generate_scenarios(sim_cfg.num_scenarios, seed=sim_cfg.seed + seed, max_turns=sim_cfg.max_turns)


def cold_start_policy(cfg: DictConfig, model_path: Path, scenarios) -> Path:
    """The policy RL starts from: the supervised cold start (cached), or the base model when disabled."""
    cs = cfg.learner.cold_start
    if not cs.enabled:
        return model_path
    from learner.cold_start import ensure_cold_start

    d = cfg.rollout.dialogue
    cs_cfg = dict(to_plain(cs), open_think=d.open_think, user_text_in_prompt=d.user_text_in_prompt,
                  system_prompt=d.system_prompt, max_turns=d.max_turns, think_budget=d.think_budget,
                  max_new_tokens=cfg.rollout.max_new_tokens)
    key = f"{cfg.simulator.scenarios or 'generated'}:{cfg.simulator.num_scenarios}:{cfg.simulator.seed}:" \
          f"{cfg.experiment.seed}:{cfg.simulator.max_turns}"
    t0 = time.perf_counter()
    path = ensure_cold_start(str(model_path), key, to_plain(cfg.simulator), cs_cfg,
                             Path(os.path.expanduser(cfg.model.cache_dir)) / "cold_start", scenarios=scenarios)
    say(f"cold start (supervised format warm-up): {path} ({time.perf_counter() - t0:.0f}s)")
    return Path(path)


def progress_line(step: int, steps: int, out: Dict[str, Any], tokens_per_s: float, elapsed: float) -> str:
    m = out["metrics"]
    parts = [f"step {step}/{steps}", f"v{out['version']}", f"reward {m['reward/total']:.3f}"]
    for k in ("reward/user_feedback", "reward/emotional_continuity"):
        if k in m:
            parts.append(f"{k.split('/')[1]} {m[k]:.2f}")
    parts += [f"kl {m.get('kl/update', float('nan')):.4f}", f"staleness {m['staleness/mean']:.2f}",
              f"{tokens_per_s:.0f} tok/s", f"{elapsed:.0f}s"]
    return " | ".join(parts)


def run(cfg: DictConfig, run_dir: Path) -> Dict[str, Any]:
    """The main job: cold start, then rollout workers + reward service + learner, asynchronously."""
    import ray
    import transformers

    from actors import broadcast_weights, launch_workers
    from antiphon.model.tiny import resolve_model_path
    from antiphon.report import learning_curve_png, learning_summary
    from antiphon.transport import Admission, from_config
    from learner.actor import Learner
    from reward_service.replica import launch_replicas, stop_replicas

    transformers.utils.logging.disable_progress_bar()
    run_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    lc = cfg.learner
    if not cfg.reward.components:
        raise SystemExit("antiphon: reward.components is empty; the learner needs rewards (reward=default)")
    scenarios = load_scenarios(cfg.simulator, cfg.experiment.seed)
    resume = cfg.resume
    if resume:
        from learner.recipe import read_checkpoint_state

        state = read_checkpoint_state(resume)
        policy_path, reference_path, version0 = Path(resume) / "policy", state["reference_path"], state["version"]
        say(f"resuming from {resume} at weight version {version0}")
    else:
        base = resolve_model_path(cfg.model)
        say(f"base policy: {base}")
        policy_path = reference_path = cold_start_policy(cfg, base, scenarios)
        version0 = 0
    rollout_cfg, model_cfg, sim_cfg = to_plain(cfg.rollout), to_plain(cfg.model), to_plain(cfg.simulator)
    learner_cfg, reward_cfg = to_plain(lc), to_plain(cfg.reward)
    # Sync mode is on-policy by construction; each version needs the whole batch to finish first.
    staleness = 0 if lc.mode == "sync" else int(lc.max_staleness)
    # Workers load every broadcast_every-th version only: their weights may lag that much more.
    bound = staleness + int(lc.broadcast_every) - 1
    learner_cfg["max_staleness"] = bound
    admission = {"max_staleness": bound, "batch_size": int(lc.batch_size), "group_size": int(lc.group_size)}
    tb = _tensorboard(run_dir / "tb")
    metrics_path = run_dir / "metrics.jsonl"
    steps_log: List[Dict[str, Any]] = []
    with transport_for_run(cfg, run_dir) as tcfg:
        reader = from_config(tcfg)
        Admission(reader).reset(version=version0, admitted=0)
        init_ray(cfg.cluster, cfg.rollout.num_workers * cfg.rollout.num_cpus_per_worker
                 + 0.5 * cfg.reward.replicas + lc.num_cpus)
        workers: List[Any] = []
        replicas: List[Any] = []
        replica_runs: List[Any] = []
        streams: List[Any] = []
        learner = None
        worker_stats: List[Dict[str, Any]] = []
        try:
            t0 = time.perf_counter()
            workers = launch_workers(str(policy_path), rollout_cfg, model_cfg)
            say(f"{len(workers)} rollout workers ready in {time.perf_counter() - t0:.1f}s")
            replicas, replica_runs = launch_replicas(tcfg, reward_cfg)
            say(f"{len(replicas)} reward service replica(s) scoring with "
                f"{[c.get('name') or c['_target_'].rsplit('.', 1)[-1] for c in reward_cfg['components']]}")
            threads = str(lc.num_threads)
            learner = ray.remote(Learner).options(
                num_cpus=float(lc.num_cpus), num_gpus=float(lc.num_gpus),
                runtime_env={"env_vars": {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
                                          "TOKENIZERS_PARALLELISM": "false"}},
            ).remote(str(policy_path), learner_cfg, tcfg, str(run_dir), cfg.rollout.temperature,
                     str(reference_path), resume)
            info = ray.get(learner.info.remote())
            say(f"learner ready on {info['device']} ({lc.mode}, max_staleness={staleness}, "
                f"batch {lc.batch_size} dialogues = {lc.batch_size // lc.group_size} scenarios x {lc.group_size})")
            if version0:
                # The workers were built from the checkpoint's policy; tag it with its version.
                broadcast_weights(workers, ray.get(learner.publish_weights.remote()), version0)
            scen = [x.to_dict() for x in scenarios]
            streams = [w.run_stream.remote(scen, sim_cfg, cfg.experiment.name, tcfg, admission) for w in workers]
            last_t, t_loop = time.perf_counter(), time.perf_counter()
            # Async: version v's weights load into the workers while the learner already trains on the
            # next batch; admission opens for v only once every worker has them, so a dialogue admitted
            # under v never starts on older weights. Sync: each step waits for its broadcast.
            admit = Admission(reader)
            pending = None  # (version, load refs, start time)

            def finish_broadcast():
                v, refs, t_b = pending
                load = ray.get(refs)
                admit.set_version(v)
                return max(load), time.perf_counter() - t_b

            load_s, bcast_s = 0.0, 0.0
            first, last = int(info["version"]) + 1, int(lc.steps)

            def want_samples(step: int) -> bool:
                return step % int(lc.log_samples_every) == 0 or step == 1

            # The learner actor runs its calls in order, so its next step is queued right behind this
            # step's publish (and checkpoint): it trains while this loop waits for the workers' loads and
            # writes logs, instead of idling through them.
            step_ref = learner.step.remote(want_samples=want_samples(first)) if first <= last else None
            for step in range(first, last + 1):
                if pending is not None:
                    load_s, bcast_s = finish_broadcast()
                    pending = None
                out = ray.get(step_ref)
                version = out["version"]
                out["metrics"]["perf/weight_load_s"], out["metrics"]["perf/broadcast_s"] = load_s, bcast_s
                publish = version % int(lc.broadcast_every) == 0 or step == lc.steps
                handle_ref = learner.publish_weights.remote() if publish else None
                ckpt_ref = (learner.save_checkpoint.remote()
                            if step % int(lc.checkpoint_every) == 0 or step == lc.steps else None)
                if step < last:
                    step_ref = learner.step.remote(want_samples=want_samples(step + 1))
                if publish:
                    handle = ray.get(handle_ref)
                    pending = (version, [w.load_weights.remote(handle, version) for w in workers], time.perf_counter())
                    if lc.mode == "sync":
                        load_s, bcast_s = finish_broadcast()
                        pending = None
                else:
                    admit.set_version(version)
                if ckpt_ref is not None:
                    ray.get(ckpt_ref)
                now = time.perf_counter()
                m = out["metrics"]
                m["perf/tokens_per_s"] = m["perf/policy_tokens"] / max(now - last_t, 1e-6)
                m["time_s"] = now - t_start
                last_t = now
                line = {"step": step, "version": version, "time_s": m.pop("time_s"), **m}
                steps_log.append(line)
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(line) + "\n")
                _tb_step(tb, step, out)
                say(progress_line(step, int(lc.steps), out, m["perf/tokens_per_s"], now - t_start))
            if pending is not None:
                finish_broadcast()
            loop_s = time.perf_counter() - t_loop
            for w in workers:
                w.stop_stream.remote()
            worker_stats = ray.get(streams, timeout=120)
            streams = []
            learner_info = ray.get(learner.info.remote())
            counters: Dict[str, Any] = dict(reader.counters())
            counters["reward_replicas"] = stop_replicas(replicas, replica_runs)
            replicas = []
            trajs = _last_dialogues(reader, 4)
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
    if tb is not None:
        tb.close()

    from antiphon.listen import write_dialogues

    listen_dir = write_dialogues(trajs, run_dir / "dialogues", None)
    curve = learning_curve_png(steps_log, run_dir / "learning_curve.png", run_name=cfg.experiment.name)
    idle = [w.get("idle_ms", 0) / 1000 for w in worker_stats]
    summary = {
        "what_ran": f"{'sync' if lc.mode == 'sync' else 'async'} PPO on spoken multi-turn dialogues: "
                    f"{cfg.rollout.num_workers} vLLM rollout workers talking with simulated, voiced users, "
                    f"{cfg.reward.replicas} reward service replica(s), one learner; weights broadcast every "
                    f"{lc.broadcast_every} step(s)",
        "learning": learning_summary(steps_log),
        "steps": len(steps_log), "mode": lc.mode, "max_staleness": staleness,
        "cold_start": str(reference_path), "checkpoint": learner_info["last_checkpoint"],
        "learner": learner_info, "rollout_workers": worker_stats,
        "rollout_idle_s": idle, "learner_wait_s": float(sum(x["perf/learner_wait_s"] for x in steps_log)),
        "loop_s": round(loop_s, 1), "transport_counters": counters,
        "listen": str(listen_dir), "learning_curve": str(curve), "tensorboard": str(run_dir / "tb"),
        "wall_s": round(time.perf_counter() - t_start, 1), "run_dir": str(run_dir),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def _tensorboard(path: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a runtime dependency; a trimmed install still trains
        log.warning("tensorboard not installed: no TensorBoard logs")
        return None
    return SummaryWriter(str(path))


def _tb_step(tb, step: int, out: Dict[str, Any]) -> None:
    if tb is None:
        return
    import numpy as np

    for k, v in out["metrics"].items():
        if isinstance(v, (int, float)) and v == v:
            tb.add_scalar(k, v, step)
    hist = out.get("staleness_hist") or [0]
    values = np.repeat(np.arange(len(hist)), hist)
    if values.size:
        tb.add_histogram("staleness/tokens", values, step)
    for i, s in enumerate(out.get("samples", [])):
        tb.add_text(f"dialogue/{i}", f"reward {s['reward']:.3f}\n\n" + s["transcript"].replace("\n", "  \n"), step)
        for j, a in enumerate(s["audio"][:6]):
            wave = np.asarray(a["pcm"], dtype=np.float32) / 32767.0
            if wave.size == 0:  # a turn voiced as silence (e.g. a reply that was only a style tag)
                continue
            tb.add_audio(f"dialogue/{i}/turn{j}_{a['role']}", wave[None], step, sample_rate=a["sample_rate"])
    tb.flush()


def _last_dialogues(reader, n: int):
    """The newest ``n`` dialogues of the run's trajectories stream (read without consuming)."""
    from antiphon.protocol import decode

    out = []
    for _, fields in reader.client.xrevrange(reader.stream("trajectories"), count=n):
        with contextlib.suppress(Exception):
            out.append(decode(fields[b"d"]))
    return out


register()


@hydra.main(config_path=config_dir(), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    summary = run(cfg, validated_run_dir(cfg, "antiphon"))
    run_dir = Path(summary["run_dir"])
    r = summary["learning"].get("reward", {}).get("reward/total")
    say(f"done in {summary['wall_s']}s. What ran: {summary['what_ran']}.")
    if r:
        say(f"mean reward/total: first 20% of steps {r['first']:.3f} -> last 20% {r['last']:.3f}")
    say(f"outputs in {run_dir}: summary.json, metrics.jsonl, learning_curve.png, tb/ (tensorboard --logdir "
        f"{run_dir / 'tb'}), checkpoints/, dialogues/")


if __name__ == "__main__":
    main()
