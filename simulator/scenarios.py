"""Scenario sets: generated deterministically from a seed, stored as JSONL data files.

    python -m simulator.scenarios --n 200 --seed 0 --out scenarios.jsonl
"""
from __future__ import annotations

import argparse
import random
from pathlib import Path
from typing import Iterable, List

from antiphon import jsonl
from antiphon.dialogue import Question, Scenario

PERSONAS = [
    ("Maya", "a nurse coming off a night shift"),
    ("Tom", "a student before an exam"),
    ("Ana", "a shop owner with a busy week"),
    ("Leo", "a retired teacher who likes puzzles"),
    ("Sara", "a new parent who slept badly"),
    ("Ravi", "a programmer stuck on a bug"),
]
GOALS = [
    ("plan a calm evening", ["I have about two free hours.", "I would like something quiet.", "Maybe a short walk."]),
    ("get ready for a test", ["The test is on Friday.", "Maths is my weak spot.", "I study best in the morning."]),
    ("sort out a busy week", ["I have three deliveries due.", "My helper is away.", "Tuesday is the worst day."]),
    ("talk about a bad day", ["Work was loud today.", "I missed lunch.", "I just want to rest now."]),
    ("share some good news", ["I got the job!", "They called this morning.", "I start next month."]),
]
# Emotion arcs over a dialogue: the user's state drifts, and the agent has to follow it.
ARCS = [
    ["anxious", "anxious", "calm"],
    ["sad", "sad", "calm"],
    ["happy", "excited", "happy"],
    ["angry", "calm", "calm"],
    ["tired", "neutral", "calm"],
    ["neutral", "happy", "excited"],
]
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]


def _question(rng: random.Random, turn: int) -> Question:
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    if rng.random() < 0.5:
        return Question(turn, f"what is {a} plus {b}?", str(a + b))
    a, b = max(a, b), min(a, b)
    return Question(turn, f"what is {a} minus {b}?", str(a - b))


def generate_scenarios(n: int, seed: int = 0, max_turns: int = 3, question_rate: float = 0.5) -> List[Scenario]:
    """``n`` scenarios, the same for the same arguments on every machine."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        name, who = rng.choice(PERSONAS)
        goal, facts = rng.choice(GOALS)
        arc = list(rng.choice(ARCS))
        arc = (arc * (max_turns // len(arc) + 1))[:max_turns]
        questions = [_question(rng, t) for t in range(max_turns) if rng.random() < question_rate]
        out.append(Scenario(scenario_id=f"s{seed}-{i:05d}", persona=f"{name}, {who}", goal=goal, emotion_arc=arc,
                            questions=questions, disclosures=list(facts[:max_turns]), max_turns=max_turns,
                            meta={"name": name, "seed": seed}))
    return out


def write_jsonl(scenarios: Iterable[Scenario], path: str | Path) -> Path:
    """A scenario set as JSONL, one ``Scenario.to_dict()`` per line."""
    return jsonl.write_jsonl((s.to_dict() for s in scenarios), path)


def read_jsonl(path: str | Path) -> List[Scenario]:
    """A scenario set written by :func:`write_jsonl`; JsonlError naming ``file:line`` on a bad line."""
    out = []
    for lineno, d in jsonl.read_jsonl(path):
        try:
            out.append(Scenario.from_dict(d))
        except (KeyError, ValueError, TypeError) as e:
            raise jsonl.JsonlError(str(path), lineno, jsonl.RECORD,
                                   f"not a scenario ({type(e).__name__}: {e})") from None
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Generate a scenario set (JSONL), deterministically from a seed.")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-turns", type=int, default=3)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    print(write_jsonl(generate_scenarios(a.n, a.seed, a.max_turns), a.out))


if __name__ == "__main__":
    main()
