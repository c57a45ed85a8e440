"""What the built-in verifiers share: the not-applicable convention, tokenizer loading, and which scenario
question each agent turn answers.

Not applicable: a turn a verifier has nothing to say about (no question asked, no feedback given) scores
``NOT_APPLICABLE`` with ``details["applicable"] = False``; the service leaves such values out of its running
normalisation and adds 0 for them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from antiphon.protocol import Trajectory
from reward_service.component import Score, agent_turns

NOT_APPLICABLE = 0.0


def not_applicable(**details: Any) -> Score:
    return Score(NOT_APPLICABLE, {"applicable": False, **details})


class FileTokenizer:
    """A ``tokenizer.json`` (a Hugging Face fast tokenizer's own file) read with the ``tokenizers`` library,
    offering the two calls the verifiers make. Why not ``AutoTokenizer``: importing transformers' auto
    classes costs ~11 s of CPU, the reward service's whole start-up otherwise, for a vocabulary lookup."""

    unk_token_id = None  # an unknown token is None here, never mapped to an unk id

    def __init__(self, tokenizer):
        self._tok = tokenizer

    def convert_tokens_to_ids(self, tokens: Sequence[str]) -> List[Optional[int]]:
        return [self._tok.token_to_id(t) for t in tokens]

    def encode(self, text: str, add_special_tokens: bool = True) -> List[int]:
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids


def load_tokenizer(path: str, owner: str):
    """The tokenizer at ``path``: its ``tokenizer.json`` when there is one (``FileTokenizer``), else Hugging
    Face's ``AutoTokenizer`` (a tokenizer saved without one). ValueError naming ``owner``'s
    ``tokenizer_path`` if it cannot be loaded."""
    file = Path(str(path)) / "tokenizer.json"
    try:
        if file.is_file():
            from tokenizers import Tokenizer

            return FileTokenizer(Tokenizer.from_file(str(file)))
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(path))
    except Exception as e:  # tokenizers and transformers raise OSError, ValueError, ... depending on what is wrong
        raise ValueError(f"{owner}: tokenizer_path={path!r} cannot be loaded ({type(e).__name__}: {e})") from None


def token_ids(tokenizer, tokens: Sequence[str], owner: str, path: str) -> List[int]:
    """The ids of single tokens; ValueError naming the ones the tokenizer lacks."""
    ids = tokenizer.convert_tokens_to_ids(list(tokens))
    unk = getattr(tokenizer, "unk_token_id", None)
    missing = [t for t, i in zip(tokens, ids) if i is None or (unk is not None and i == unk)]
    if missing:
        raise ValueError(f"{owner}: tokenizer_path={path!r} has no single token for {missing}")
    return [int(i) for i in ids]


def questions_per_agent_turn(traj: Trajectory) -> List[Optional[Dict[str, Any]]]:
    """For each agent turn, in order, the scenario question its user turn asked (None where none).

    ``scenario["questions"][i]["turn"]`` is a user-turn index counting only user turns with tokens: the
    user's last word, recorded as a turn without tokens, is never answered by an agent turn.
    """
    by_turn: Dict[int, Dict[str, Any]] = {}
    for i, q in enumerate(traj.scenario.get("questions") or []):
        if not isinstance(q, dict) or "answer" not in q or not isinstance(q.get("turn"), int) \
                or isinstance(q.get("turn"), bool):
            raise ValueError(f"scenario.questions[{i}]: expected a map with an int 'turn' and an 'answer', got {q!r}")
        by_turn[q["turn"]] = q
    index: Dict[int, int] = {}
    for t in traj.turns:
        if t.role == "user" and t.end > t.start:
            index[id(t)] = len(index)
    return [by_turn.get(index[id(user)]) if user is not None and id(user) in index else None
            for user, _ in agent_turns(traj)]
