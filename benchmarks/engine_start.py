"""vLLM engine start-up and generation cost: the rollout's in-process engine vs vLLM's AsyncLLM.

Run once per mode (each in a fresh interpreter, so imports are counted alike). Reports wall seconds and
CPU seconds of this process and its children at three points: after importing vLLM, when the engine is
ready, and after ``--rounds`` rounds of ``--prompts`` concurrent requests of ``--tokens`` tokens each.
``separate`` is ``AsyncLLM``: its engine core is a child process that imports vLLM, torch and
transformers again.

    .venv/bin/python benchmarks/engine_start.py --mode in_process   # the rollout workers' engine
    .venv/bin/python benchmarks/engine_start.py --mode separate     # AsyncLLM (the LLM user simulator's)
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import resource
import time


def _cpu_s() -> float:
    import psutil

    own = resource.getrusage(resource.RUSAGE_SELF)
    total = own.ru_utime + own.ru_stime
    for child in psutil.Process().children(recursive=True):
        try:
            t = child.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", choices=["in_process", "separate"], required=True)
    ap.add_argument("--model-path", default=None, help="an HF checkpoint (default: the tiny policy, built locally)")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    t0 = time.perf_counter()
    path = args.model_path
    if path is None:
        from antiphon.config.schema import TinyModelConfig
        from antiphon.model.tiny import ensure_tiny_policy

        path = str(ensure_tiny_policy(dataclasses.asdict(TinyModelConfig()),
                                      os.environ.get("ANTIPHON_CACHE", os.path.expanduser("~/.cache/antiphon"))))
    from antiphon.vllm_engine import EngineSpec, start_engine

    spec = EngineSpec(model_path=str(path), device="cpu", dtype="float32", max_model_len=2048, seed=0,
                      extra_args={"limit_mm_per_prompt": {"audio": 8}})
    os.environ.update(spec.environment())
    from vllm import SamplingParams

    marks = [("imported", time.perf_counter() - t0, _cpu_s())]
    engine = start_engine(spec, keep_env=True, in_process=args.mode == "in_process")
    marks.append(("ready", time.perf_counter() - t0, _cpu_s()))
    params = SamplingParams(max_tokens=args.tokens, temperature=1.0, logprobs=0, detokenize=False, ignore_eos=True)

    async def one(i: int, r: int) -> int:
        async for out in engine.generate({"prompt_token_ids": list(range(10, 110 + i))}, params,
                                         request_id=f"r{r}-{i}"):
            final = out
        return len(final.outputs[0].token_ids)

    async def rounds() -> int:
        n = 0
        for r in range(args.rounds):
            n += sum(await asyncio.gather(*(one(i, r) for i in range(args.prompts))))
        return n

    tokens = asyncio.run(rounds())
    marks.append((f"generated {tokens} tokens", time.perf_counter() - t0, _cpu_s()))
    print(f"mode={args.mode} cpus={os.cpu_count()}")
    last_cpu = 0.0
    for name, wall, cpu in marks:
        print(f"  {name:>24}: wall {wall:6.1f} s  cpu {cpu:6.1f} s (+{cpu - last_cpu:.1f})")
        last_cpu = cpu
    engine.shutdown()


if __name__ == "__main__":
    main()
