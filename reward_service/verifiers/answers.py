"""Answer matching for verifiable questions: normalised word/number sequences, hedges refused.

Normalisation (applied to reply and reference alike): lower case; punctuation dropped; thousands separators
removed (``1,000`` -> ``1000``); decimals canonical (``7.0`` -> ``7``, ``2.50`` -> ``2.5``); number words
``zero`` .. ``twenty`` and the tens with their compounds up to ``ninety-nine`` become digits (the compounds
are read so that ``twenty-one`` is 21, never a 20). Signs are dropped (``-7`` reads as ``7``, so a range
``7-8`` reads as two numbers).

A reply matches when the reference's normalised tokens appear in it as a contiguous run, so ``17`` never
matches ``7``. When the reference holds numbers, the reply may hold no other number: ``7 or 8`` is a hedge
and does not match ``7``. That also refuses incidental numbers ("the one you want is 7": ``one`` is 1); a
reply to a numeric question has to state one number. Hedges over words ("Paris or Lyon") are not detected.
"""
from __future__ import annotations

import re
from typing import List, Tuple

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
         "sixteen seventeen eighteen nineteen").split()
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80,
         "ninety": 90}
_WORD_VALUE = {**{w: i for i, w in enumerate(_ONES)}, **_TENS}
_COMPOUND = re.compile(rf"\b({'|'.join(_TENS)})[-\s]+({'|'.join(_ONES[1:10])})\b")
# A number with thousands separators (not followed by more digits: "1,2345" is not one), a plain number with
# an optional decimal part, or a run of letters. Everything else (punctuation, signs, spaces) separates.
_TOKEN = re.compile(r"\d{1,3}(?:,\d{3})+(?!\d)(?:\.\d+)?|\d+(?:\.\d+)?|[^\W\d_]+")


def _canonical_number(s: str) -> str:
    whole, _, frac = s.replace(",", "").partition(".")
    frac = frac.rstrip("0")
    return str(int(whole)) + (f".{frac}" if frac else "")


def normalise(text: str) -> List[str]:
    """The normalised tokens of ``text``: words in lower case, numbers as canonical digit strings."""
    text = _COMPOUND.sub(lambda m: str(_TENS[m.group(1)] + _ONES.index(m.group(2))), text.lower())
    out = []
    for tok in _TOKEN.findall(text):
        if tok[0].isdigit():
            out.append(_canonical_number(tok))
        else:
            out.append(str(_WORD_VALUE[tok]) if tok in _WORD_VALUE else tok)
    return out


def _is_number(tok: str) -> bool:
    return tok[0].isdigit()


def _contains_run(tokens: List[str], run: List[str]) -> bool:
    n = len(run)
    return any(tokens[i:i + n] == run for i in range(len(tokens) - n + 1))


def reference_tokens(answer: str) -> List[str]:
    """The reference's normalised tokens; ValueError if nothing is left (it could never be matched)."""
    ref = normalise(str(answer))
    if not ref:
        raise ValueError(f"reference answer {answer!r} has no words or numbers")
    return ref


def contains_answer(text: str, answer: str) -> bool:
    """The reference appears in ``text`` (no hedge check: for reasoning, where numbers are worked with)."""
    return _contains_run(normalise(text), reference_tokens(answer))


def check_answer(reply: str, answer: str) -> Tuple[str, List[str]]:
    """``(verdict, numbers in the reply)``; verdict is ``correct``, ``missing`` or ``hedged`` (the reference
    appears, but next to other numbers)."""
    ref, tokens = reference_tokens(answer), normalise(reply)
    numbers = sorted({t for t in tokens if _is_number(t)})
    if not _contains_run(tokens, ref):
        return "missing", numbers
    if any(_is_number(t) for t in ref) and set(numbers) - set(ref):
        return "hedged", numbers
    return "correct", numbers
