"""Generated tokens/s and peak memory: one rollout actor (vLLM) vs plain transformers ``generate``.

Same tiny policy, same prompts: 32 concurrent sequences, each with a spoken clip, sampled at
temperature 1 with the structural tokens banned in both. Each mode runs in its own process so peak
memory is measured per mode (RSS of the whole process tree, sampled every 50 ms).

    .venv/bin/python benchmarks/rollout_throughput.py [--seqs 32] [--max-new-tokens 64] [--rounds 3]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np


def _tree_rss(pid: int) -> int:
    import psutil

    try:
        p = psutil.Process(pid)
        procs = [p] + p.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for q in procs:
        try:
            total += q.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


class PeakRSS:
    def __init__(self, pid: int):
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _tree_rss(self.pid))
            time.sleep(0.05)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def _prompts(tokenizer, n: int, seed: int):
    from antiphon.model.chat import ChatFormat
    from simulator.synthetic import SyntheticSpeaker

    chat = ChatFormat(tokenizer)
    utts = SyntheticSpeaker(seed=seed).utterances(0, n)
    return [(chat.user_turn(u.text, num_audio=1) + chat.assistant_prefix(open_think=True), u.audio) for u in utts]


def run_vllm(model_path: str, seqs: int, max_new: int, rounds: int, audio_input: str) -> dict:
    import ray

    from actors import launch_workers
    from antiphon.config import compose, to_dataclass
    from antiphon.generation import GenerationRequest
    from transformers import AutoTokenizer

    cfg = compose([f"rollout.max_new_tokens={max_new}", f"rollout.max_num_seqs={seqs}", "rollout.num_workers=1",
                   f"rollout.audio_input={audio_input}"])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    t0 = time.perf_counter()
    (worker,) = launch_workers(model_path, to_dataclass(cfg.rollout), to_dataclass(cfg.model))
    startup = time.perf_counter() - t0
    pid = ray.get(worker.info.remote())["pid"]
    tok = AutoTokenizer.from_pretrained(model_path)
    rates = []
    with PeakRSS(pid) as mem:
        for r in range(rounds + 1):  # round 0 warms up
            reqs = [GenerationRequest(f"{r}-{i}", ids, [a]) for i, (ids, a) in enumerate(_prompts(tok, seqs, r))]
            t = time.perf_counter()
            res = ray.get(worker.generate.remote(reqs))
            dt = time.perf_counter() - t
            if r:
                rates.append(sum(len(x.token_ids) for x in res) / dt)
    ray.get(worker.shutdown.remote())
    ray.shutdown()
    return {"mode": f"vllm_actor (audio_input={audio_input})", "tokens_per_s": float(np.median(rates)), "rates": rates,
            "peak_rss_gib": mem.peak / 2**30, "startup_s": startup}


def run_hf(model_path: str, seqs: int, max_new: int, rounds: int, audio_input: str = "") -> dict:
    import torch
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    from antiphon.model.tokens import structural_token_ids

    torch.set_num_threads(1)  # the same single core a rollout actor gets (num_cpus_per_worker=1)
    t0 = time.perf_counter()
    model = Qwen2AudioForConditionalGeneration.from_pretrained(model_path, dtype=torch.float32).eval()
    proc = AutoProcessor.from_pretrained(model_path)
    proc.tokenizer.padding_side = "left"
    startup = time.perf_counter() - t0
    banned = structural_token_ids(proc.tokenizer)
    rates = []
    with PeakRSS(os.getpid()) as mem:
        for r in range(rounds + 1):
            prompts = _prompts(proc.tokenizer, seqs, r)
            texts = [proc.tokenizer.decode(ids) for ids, _ in prompts]
            t = time.perf_counter()  # audio feature extraction counts, as it does inside the engine
            inputs = proc(text=texts, audio=[a for _, a in prompts], sampling_rate=16000, return_tensors="pt",
                          padding=True)
            with torch.no_grad():
                out = model.generate(**inputs, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                                     max_new_tokens=max_new, suppress_tokens=banned,
                                     pad_token_id=proc.tokenizer.pad_token_id)
            dt = time.perf_counter() - t
            gen = out[:, inputs["input_ids"].shape[1]:]
            eos = proc.tokenizer.convert_tokens_to_ids("<|im_end|>")
            n = 0
            for row in gen.tolist():  # count real tokens: up to and including the first end-of-turn
                n += (row.index(eos) + 1) if eos in row else len(row)
            if r:
                rates.append(n / dt)
    return {"mode": "transformers_generate", "tokens_per_s": float(np.median(rates)), "rates": rates,
            "peak_rss_gib": mem.peak / 2**30, "startup_s": startup}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seqs", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--mode", choices=["embeddings", "waveform", "hf"], help=argparse.SUPPRESS)
    ap.add_argument("--model-path", help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.mode:
        fn = run_hf if args.mode == "hf" else run_vllm
        res = fn(args.model_path, args.seqs, args.max_new_tokens, args.rounds, args.mode)
        print("RESULT " + json.dumps(res), flush=True)
        return

    from antiphon.config import compose
    from antiphon.model.tiny import resolve_model_path

    path = str(resolve_model_path(compose().model))
    results = {}
    for mode in ("embeddings", "waveform", "hf"):  # one at a time: never two benchmarks on 2 cores at once
        out = subprocess.run([sys.executable, __file__, "--mode", mode, "--model-path", path, "--seqs",
                              str(args.seqs), "--max-new-tokens", str(args.max_new_tokens), "--rounds",
                              str(args.rounds)], capture_output=True, text=True)
        line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        if out.returncode or not line:
            sys.exit(f"{mode} run failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
        results[mode] = json.loads(line[-1][len("RESULT "):])
    v, w, h = results["embeddings"], results["waveform"], results["hf"]
    print(f"| mode | generated tokens/s (median of {args.rounds}) | peak RSS (GiB) | start-up (s) |")
    print("|---|---|---|---|")
    for r in (v, w, h):
        print(f"| {r['mode']} | {r['tokens_per_s']:.0f} | {r['peak_rss_gib']:.2f} | {r['startup_s']:.1f} |")
    print(f"\nratio vLLM (default, audio_input=embeddings) / generate: {v['tokens_per_s'] / h['tokens_per_s']:.2f}x; "
          f"vLLM encoding the 30 s window itself / generate: {w['tokens_per_s'] / h['tokens_per_s']:.2f}x "
          f"({args.seqs} sequences with audio, {args.max_new_tokens} new tokens max)")


if __name__ == "__main__":
    main()
