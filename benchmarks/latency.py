"""Latencies that tests used to assert and now only measure (tests check behaviour, not speed).

- ``prosody``: ``measure_prosody`` (the emotion verifier's prosody features) per espeak clip: three agent
  replies x three deliveries, after one warm-up call (which imports parselmouth); median and max.
- ``llm_timeout``: how long ``LLMSimulator.start`` takes to give up on an OpenAI-compatible endpoint that
  accepts the request and never answers, with ``timeout_s=0.5``: the bound a dialogue waits for a dead
  user LLM.

    .venv/bin/python benchmarks/latency.py [--repeat 5]
"""
from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import threading
import time

AGENT_TEXTS = ["I hear you, let us figure this out together.", "Tell me a little more about what happened.",
               "That sounds like a lot to take in right now."]


def prosody(repeat: int) -> list:
    from reward_service.verifiers.prosody import measure_prosody
    from simulator.voices import make_voice

    voice = make_voice("espeak", sample_rate=16000)
    clips = [voice.synthesize(t, e) for t in AGENT_TEXTS for e in ("sad", "neutral", "excited")]
    measure_prosody(clips[0], 16000)  # warm-up: imports parselmouth
    seconds = []
    for _ in range(repeat):
        for c in clips:
            t0 = time.perf_counter()
            measure_prosody(c, 16000)
            seconds.append(time.perf_counter() - t0)
    audio_s = sum(len(c) for c in clips) / 16000 / len(clips)
    return [f"| `measure_prosody`, one espeak clip (mean {audio_s:.1f} s of audio) | "
            f"{1000 * statistics.median(seconds):.0f} ms | {1000 * max(seconds):.0f} ms | {len(seconds)} |"]


def llm_timeout(repeat: int) -> list:
    from antiphon.dialogue import Scenario
    from simulator.llm import LLMSimulator, LLMSimulatorError

    # A server that accepts connections and never answers: the simulator's own timeout is all that ends it.
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held, stop = [], threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                pass

    threading.Thread(target=accept, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.getsockname()[1]}/v1"
    seconds = []
    try:
        for _ in range(repeat):
            t0 = time.perf_counter()
            try:
                asyncio.run(LLMSimulator(endpoint=endpoint, timeout_s=0.5).start(Scenario("bench")))
            except LLMSimulatorError:
                pass
            seconds.append(time.perf_counter() - t0)
    finally:
        stop.set()
        for c in held:
            c.close()
        server.close()
    return [f"| `LLMSimulator.start` giving up on a silent endpoint, `timeout_s=0.5` | "
            f"{1000 * statistics.median(seconds):.0f} ms | {1000 * max(seconds):.0f} ms | {len(seconds)} |"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    rows = prosody(args.repeat) + llm_timeout(args.repeat)
    print("| what | median | max | calls |\n|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
