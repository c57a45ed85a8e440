"""Weight broadcast cost: learner -> N rollout workers through the object store, vs an in-memory copy.

Starts a local Ray instance and N rollout workers (vLLM) on the policy, then for V weight versions:
perturbs a learner-side ``PolicyModel`` slightly, takes ``state_dict_for_rollout()``, and times
``weight_sync.sender("object_store").publish`` (one ``ray.put``) plus every worker's load
(``broadcast_weights`` with the handle: each worker reads the object and reloads its engine in place)
end to end. The baseline is a plain in-memory copy of the same state dict (``v.clone()`` per tensor).
A warm-up version comes first and is not counted. Optionally (default on) the same broadcast is timed
again while every worker has spoken dialogues in flight: a reload waits for the generate calls already
running, so this is what the learner sees during a real run.

    .venv/bin/python benchmarks/weight_sync.py [--workers 2] [--versions 10] [--model-path DIR] [--no-under-load]
"""
from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time

import numpy as np


def _stats(xs):
    a = np.asarray(xs, dtype=float)
    return float(np.median(a)), float(np.percentile(a, 90))


def machine_line() -> str:
    import ray
    import torch

    try:
        import vllm
        vv = vllm.__version__
    except Exception:  # noqa: BLE001 - the line is informative only
        vv = "?"
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"Machine: {os.cpu_count()} CPUs ({platform.machine()}), {mem:.0f} GiB, torch {torch.__version__}, "
            f"vllm {vv}, Ray {ray.__version__}, Python {platform.python_version()}; load average at start "
            f"{os.getloadavg()[0]:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--versions", type=int, default=10, help="timed weight versions (after one warm-up version)")
    ap.add_argument("--model-path", help="a local Hugging Face checkpoint (default: the tiny policy)")
    ap.add_argument("--noise", type=float, default=1e-4, help="std of the perturbation added per version")
    ap.add_argument("--under-load", action=argparse.BooleanOptionalAction, default=True,
                    help="also time broadcasts while the workers hold dialogues (default: on)")
    ap.add_argument("--dialogues", type=int, default=32, help="dialogues per worker per load wave")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    machine = machine_line()

    import ray
    import torch

    from actors import broadcast_weights, launch_workers
    from antiphon.config import compose, to_dataclass
    from antiphon.model.tiny import resolve_model_path
    from antiphon.weight_sync import sender
    from learner.policy import PolicyModel
    from simulator.scenarios import generate_scenarios

    import transformers

    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(1)
    overrides = [f"rollout.num_workers={args.workers}"]
    if args.model_path:
        overrides.append(f"model.path={args.model_path}")
    cfg = compose(overrides)
    path = str(resolve_model_path(cfg.model))
    ray.init(num_cpus=max(args.workers, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False)
    t0 = time.perf_counter()
    workers = launch_workers(path, to_dataclass(cfg.rollout), to_dataclass(cfg.model))
    startup = time.perf_counter() - t0
    policy = PolicyModel(path)
    params = [p for p in policy.model.parameters() if p.is_floating_point()]
    snd = sender("object_store")
    gen = torch.Generator().manual_seed(0)

    def one_version(version: int) -> dict:
        with torch.no_grad():
            for p in params:
                p.add_(torch.randn(p.shape, generator=gen) * args.noise)
        t = time.perf_counter()
        sd = policy.state_dict_for_rollout()
        sd_s = time.perf_counter() - t
        t = time.perf_counter()
        copy = {k: v.clone() for k, v in sd.items()}
        copy_s = time.perf_counter() - t
        del copy
        t = time.perf_counter()
        handle = snd.publish(sd, version)
        publish_s = time.perf_counter() - t
        loads = broadcast_weights(workers, handle, version)
        e2e_s = time.perf_counter() - t
        return {"state_dict_s": sd_s, "copy_s": copy_s, "publish_s": publish_s, "e2e_s": e2e_s,
                "load_max_s": max(loads), "load_mean_s": float(np.mean(loads)),
                "mb": sum(v.numel() * v.element_size() for v in sd.values()) / 2**20}

    version = 1
    one_version(version)  # warm-up: first reload, first ray.put of this size
    idle = []
    for _ in range(args.versions):
        version += 1
        idle.append(one_version(version))

    loaded, waves = [], 0
    if args.under_load:
        scen = [s.to_dict() for s in generate_scenarios(max(args.dialogues, 1) * args.workers, seed=1, max_turns=3)]
        sim_cfg = to_dataclass(cfg.simulator)
        pending = {}  # worker index -> its run_dialogues call in flight

        while len(loaded) < args.versions:
            started = False
            for i, w in enumerate(workers):  # a worker whose dialogues all ended gets a new wave
                if i not in pending or ray.wait([pending[i]], timeout=0)[0]:
                    if i in pending:
                        ray.get(pending[i])
                    pending[i] = w.run_dialogues.remote(scen[i::args.workers], sim_cfg)
                    waves += 1
                    started = True
            if started:
                time.sleep(1.0)  # let the new wave's first generate calls start
            version += 1
            loaded.append(one_version(version))
        ray.get(list(pending.values()))

    for w in workers:
        ray.get(w.shutdown.remote())
    ray.shutdown()

    rows = [("state dict size (MB)", "mb", 1.0, "{:.2f}"),
             ("`state_dict_for_rollout()` (ms)", "state_dict_s", 1e3, "{:.1f}"),
             ("in-memory copy, `clone()` per tensor (ms)", "copy_s", 1e3, "{:.2f}"),
             ("publish = `ray.put` (ms)", "publish_s", 1e3, "{:.1f}"),
             ("worker in-engine load, slowest worker (ms)", "load_max_s", 1e3, "{:.1f}"),
             ("worker in-engine load, mean over workers (ms)", "load_mean_s", 1e3, "{:.1f}"),
             ("**publish + every worker loaded, end to end (ms)**", "e2e_s", 1e3, "{:.1f}")]
    cols = [("idle workers", idle)] + ([("workers with dialogues in flight", loaded)] if loaded else [])
    print(f"\n{args.workers} rollout workers, {len(idle)} timed versions (+1 warm-up), model {path} "
          f"(workers ready in {startup:.1f}s)\n")
    print("| per weight version | " + " | ".join(f"{n}: median | p90" for n, _ in cols) + " |")
    print("|---|" + "---|---|" * len(cols))
    for label, key, scale, fmt in rows:
        cells = []
        for _, res in cols:
            med, p90 = _stats([r[key] * scale for r in res])
            cells += [fmt.format(med), fmt.format(p90)]
        print(f"| {label} | " + " | ".join(cells) + " |")
    cells = []
    for _, res in cols:
        med, p90 = _stats([r["e2e_s"] / max(r["copy_s"], 1e-9) for r in res])
        cells += [f"{med:.0f}x", f"{p90:.0f}x"]
    print("| ratio end to end / in-memory copy | " + " | ".join(cells) + " |")
    if loaded:
        print(f"\n(under load: {len(loaded)} versions broadcast while {args.dialogues} dialogues per worker ran, "
              f"{waves} per-worker wave(s); the in-engine load there includes waiting for the generate calls in flight)")
    print(f"\nCommand: `{' '.join(shlex.quote(a) for a in [os.path.relpath(sys.executable), *sys.argv])}`")
    print(machine)


if __name__ == "__main__":
    main()
