"""Async vs sync PPO on the whole system: trained trajectories/min, idle time, reward, staleness.

Runs the main job (``python -m antiphon.launch``) three times, one after another, with the same budget
(``learner.steps`` x ``learner.batch_size``), the same workers and the same seed:

  sync     ``learner.mode=sync``: generate -> score -> train strictly in turn (on-policy)
  async-1  ``learner.mode=async learner.max_staleness=1``
  async-4  ``learner.mode=async learner.max_staleness=4``

Dialogue lengths are long-tailed, which is what makes sync mode wait: a batch is done only when its
longest dialogue is. The scenario set (written under ``--out``) draws each scenario's agent turns from a
truncated Zipf law, P(k) ~ k^-alpha for k = 1..max (alpha 1.5, max 8: ~70% 1-2 turns, ~9% 6-8).

Per run, from its ``summary.json`` / ``metrics.jsonl``: trained trajectories per minute of the training
loop, the rollout workers' idle fraction (no dialogue in flight, waiting for admission), the learner's
idle fraction (waiting for a batch), the mean reward/total of the last 20% of steps, the reward per agent
turn (last 20% and all steps: reward/total sums over turns, so it moves with how long the trained
dialogues are), the mean staleness of trained tokens, and the speed-up over sync.

    .venv/bin/python benchmarks/async_vs_sync.py [--steps 10] [--batch-size 8] [--group-size 4]
        [--workers 2] [--max-turns 8] [--no-cold-start] [--extra KEY=VALUE ...] [--out DIR]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import random
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILLER = ["It has been like this all week.", "My friend says the same thing.", "I keep thinking about it.",
          "The weather is grey today.", "I am not sure what to do next.", "Tomorrow looks a bit better.",
          "I had tea a moment ago.", "The neighbours are loud again."]
RUNS = [("sync", ["learner.mode=sync"]),
        ("async, max_staleness=1", ["learner.mode=async", "learner.max_staleness=1"]),
        ("async, max_staleness=4", ["learner.mode=async", "learner.max_staleness=4"])]


def turn_lengths(n: int, max_turns: int, alpha: float, seed: int):
    rng = random.Random(seed)
    ks = list(range(1, max_turns + 1))
    w = [k ** -alpha for k in ks]
    return rng.choices(ks, weights=w, k=n)


def write_scenarios(out: Path, n: int, max_turns: int, alpha: float, seed: int) -> Path:
    """Scenarios with long-tailed max_turns; each has an emotion arc and a disclosure for every user turn.
    The file name carries a hash of the contents (the cold-start cache is keyed by the scenario path)."""
    from simulator.scenarios import generate_scenarios

    scen = generate_scenarios(n, seed=seed, max_turns=max_turns)  # arcs cycle to max_turns, questions too
    for s, k in zip(scen, turn_lengths(n, max_turns, alpha, seed)):
        s.max_turns = k
        s.emotion_arc = (s.emotion_arc * max_turns)[:max(k, 1)]
        # A user turn with no disclosure and no question would be silent: give every turn something to say.
        s.disclosures = (list(s.disclosures) + FILLER)[:max(k, len(s.disclosures))]
        s.questions = [q for q in s.questions if q.turn < k]
    text = "".join(json.dumps(s.to_dict()) + "\n" for s in scen)
    path = out / f"scenarios_longtail_{hashlib.sha256(text.encode()).hexdigest()[:10]}.jsonl"
    out.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_text(text)
    return path


def analyse(run_dir: Path, batch_size: int) -> dict:
    from antiphon.report import read_metrics

    summ = json.loads((run_dir / "summary.json").read_text())
    m = read_metrics(run_dir)
    loop_s = float(summ["loop_s"])
    n_workers = max(len(summ.get("rollout_idle_s") or []), 1)
    trained = sum(float(x.get("rollout/trajectories", batch_size)) for x in m) or summ["steps"] * batch_size
    tail = m[-max(1, round(0.2 * len(m))):] if m else []
    reward = summ.get("learning", {}).get("reward", {}).get("reward/total", {}).get("last")
    if reward is None and tail:  # a run too short for learning_summary's first/last windows
        reward = sum(x["reward/total"] for x in tail) / len(tail)
    # reward/total sums over a dialogue's turns, and a batch's mean turn count swings with which scenarios it
    # holds (and async trains short dialogues first): reward per agent turn compares runs more fairly.
    def per_turn(xs):
        turns = sum(float(x["rollout/agent_turns"]) for x in xs)
        return sum(x["reward/total"] * float(x["rollout/trajectories"]) for x in xs) / turns if turns else float("nan")

    steps_pt = [per_turn([x]) for x in m if "rollout/agent_turns" in x]
    se_tail = (float(statistics.stdev(steps_pt[-len(tail):])) / math.sqrt(len(tail))
               if len(tail) > 1 and len(steps_pt) >= len(tail) else float("nan"))
    stale = [x["staleness/mean"] for x in m if "staleness/mean" in x]
    ends = {}
    for w in summ.get("rollout_workers", []):
        for r, c in (w.get("end_reasons") or {}).items():
            ends[r] = ends.get(r, 0) + c
    return {"steps": summ["steps"], "loop_s": loop_s, "wall_s": summ.get("wall_s"), "trained": trained,
            "traj_per_min": trained / loop_s * 60 if loop_s > 0 else float("nan"),
            "rollout_idle": sum(summ.get("rollout_idle_s") or [0]) / (n_workers * loop_s),
            "learner_idle": float(summ["learner_wait_s"]) / loop_s, "reward_last": reward,
            "staleness": sum(stale) / len(stale) if stale else float("nan"),
            "per_turn_last": per_turn(tail) if tail else float("nan"), "per_turn_last_se": se_tail,
            "per_turn_all": per_turn(m) if m else float("nan"),
            "broadcast_s": sum(x.get("perf/broadcast_s", 0.0) for x in m), "end_reasons": ends}


def machine_line() -> str:
    out = subprocess.run([sys.executable, "-c", "import torch, vllm, ray; print(torch.__version__, vllm.__version__, "
                          "ray.__version__)"], capture_output=True, text=True, cwd=ROOT)
    tv = out.stdout.split() if out.returncode == 0 else ["?", "?", "?"]
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"Machine: {os.cpu_count()} CPUs ({platform.machine()}), {mem:.0f} GiB, torch {tv[0]}, vllm {tv[1]}, "
            f"Ray {tv[2]}, Python {platform.python_version()}; load average at start {os.getloadavg()[0]:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10, help="learner.steps of every run")
    ap.add_argument("--batch-size", type=int, default=8, help="learner.batch_size of every run")
    ap.add_argument("--group-size", type=int, help="learner.group_size (default: the config's)")
    ap.add_argument("--workers", type=int, help="rollout.num_workers (default: the config's)")
    ap.add_argument("--seed", type=int, default=0, help="experiment.seed of every run")
    ap.add_argument("--max-turns", type=int, default=8, help="longest dialogue, in agent turns")
    ap.add_argument("--alpha", type=float, default=1.5, help="Zipf exponent of the turn-count distribution")
    ap.add_argument("--scenarios", type=int, default=200, help="scenarios in the generated set")
    ap.add_argument("--cold-start", action=argparse.BooleanOptionalAction, default=None,
                    help="learner.cold_start.enabled (default: the config's)")
    ap.add_argument("--extra", nargs="*", default=[], help="more Hydra overrides for every run")
    ap.add_argument("--only", nargs="*", choices=["sync", "async1", "async4"], help="run a subset")
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench_async_vs_sync"))
    args = ap.parse_args()
    machine = machine_line()

    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out).resolve() / stamp
    sys.path.insert(0, str(ROOT))
    scen_path = write_scenarios(Path(args.out).resolve(), args.scenarios, args.max_turns, args.alpha, args.seed)
    from simulator.scenarios import read_jsonl

    ks = [s.max_turns for s in read_jsonl(scen_path)]
    common = [f"learner.steps={args.steps}", f"learner.batch_size={args.batch_size}",
              f"experiment.seed={args.seed}", f"simulator.scenarios={scen_path}",
              f"simulator.max_turns={args.max_turns}", f"rollout.dialogue.max_turns={args.max_turns}"]
    if args.group_size:
        common.append(f"learner.group_size={args.group_size}")
    if args.workers:
        common.append(f"rollout.num_workers={args.workers}")
    if args.cold_start is not None:
        common.append(f"learner.cold_start.enabled={str(args.cold_start).lower()}")
    common += list(args.extra)
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    keys = {"sync": 0, "async1": 1, "async4": 2}
    todo = [RUNS[keys[k]] for k in args.only] if args.only else RUNS
    results = {}
    for label, ov in todo:
        slug = label.replace(", max_staleness=", "").replace(" ", "")
        run_dir = out / slug
        cmd = [sys.executable, "-m", "antiphon.launch", *common, *ov, f"experiment.run_dir={run_dir}",
               f"experiment.name=avs_{slug}_{stamp}", f"hydra.run.dir={run_dir}"]
        run_dir.mkdir(parents=True, exist_ok=True)
        print(f"[{time.strftime('%H:%M:%S')}] {label}: {' '.join(shlex.quote(c) for c in cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        with open(out / f"{slug}.log", "w") as log:
            rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
        if rc != 0 or not (run_dir / "summary.json").exists():
            tail = (out / f"{slug}.log").read_text()[-4000:]
            sys.exit(f"{label} failed (exit {rc}); log {out / (slug + '.log')}:\n{tail}")
        results[label] = analyse(run_dir, args.batch_size)
        print(f"[{time.strftime('%H:%M:%S')}]   done in {time.perf_counter() - t0:.0f}s "
              f"(loop {results[label]['loop_s']:.0f}s)", flush=True)

    base = results.get("sync")
    print(f"\n{args.steps} steps x {args.batch_size} trajectories per run; agent turns per scenario: "
          + ", ".join(f"{k}: {ks.count(k) / len(ks):.0%}" for k in sorted(set(ks))) + "\n")
    print("| run | trained trajectories/min | speed-up vs sync | rollout workers idle | learner idle "
          "| reward/total, last 20% of steps | reward per agent turn, last 20% (± s.e. over steps) "
          "| reward per agent turn, all steps | mean staleness | training loop (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, r in results.items():
        sp = f"{r['traj_per_min'] / base['traj_per_min']:.2f}x" if base else "-"
        rw = f"{r['reward_last']:.3f}" if r["reward_last"] is not None else "-"
        print(f"| {label} | {r['traj_per_min']:.1f} | {sp} | {r['rollout_idle']:.0%} | {r['learner_idle']:.0%} "
              f"| {rw} | {r['per_turn_last']:.3f} ± {r['per_turn_last_se']:.3f} | {r['per_turn_all']:.3f} "
              f"| {r['staleness']:.2f} | {r['loop_s']:.0f} |")
    print("\nDialogue end reasons: " + "; ".join(
        f"{label}: " + ", ".join(f"{k} {v}" for k, v in sorted(r["end_reasons"].items()))
        for label, r in results.items()))
    print(f"Run directories: {out}")
    print(f"\nCommand: `{' '.join(shlex.quote(a) for a in [os.path.relpath(sys.executable), *sys.argv])}`")
    print(machine)


if __name__ == "__main__":
    main()
