"""Preference pairs for the reward model: the JSONL format (see PAIRS_FORMAT.md), a validating loader, and a
generator of SYNTHETIC pairs from explicit rubric rules.

One pair per line::

    {"context": [{"role": "user", "text": "I lost my job today.", "emotion": "sad", "audio": null}],
     "chosen":   {"text": "I'm so sorry. That's a lot to carry.", "style": "gentle", "audio": null},
     "rejected": {"text": "I'm so sorry. That's a lot to carry.", "style": "excited", "audio": null},
     "rubric": ["empathy"], "synthetic": true, "source": "synthetic:rubric-rules-v1:seed=0"}

``load_pairs`` raises ``PairsFormatError`` naming ``file:line`` and the field (``chosen.style``,
``context[1].role``...). The synthetic generator (``synthesize_pairs``) is deterministic from its seed and
marks every record ``"synthetic": true`` with a ``source`` starting ``synthetic:``: it is a stand-in for
human preference data, good for tests and smoke runs, not a substitute for real judgements.

    python -m reward_service.rm.data --synthetic 500 --seed 0 --out pairs.jsonl
"""
from __future__ import annotations

import argparse
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

from antiphon.dialogue import EMOTIONS, STYLE_TAGS
from antiphon.jsonl import JsonlError, read_jsonl, write_jsonl
from antiphon.style import parse_style

ROLES = ("user", "agent")
# Labels the synthetic rules use; other labels are allowed in hand-made or human data.
RUBRIC_LABELS = ("empathy", "answers_question", "concise", "polite_persona")
SYNTHETIC_SOURCE = "synthetic:rubric-rules-v1"
_KEYS = {"context", "chosen", "rejected", "rubric", "synthetic", "source", "meta"}
_REQUIRED = ("context", "chosen", "rejected", "rubric", "synthetic", "source")


class PairsFormatError(JsonlError):
    """A preference-pairs record that cannot be used; ``file``, ``line`` and ``field`` say where."""


@dataclass
class ContextTurn:
    role: str  # "user" | "agent"
    text: str
    emotion: Optional[str] = None  # user: how it was said; agent: the style tag it used
    audio: Optional[str] = None  # path or URI of the clip, if any (not read by the text RM)


@dataclass
class Reply:
    text: str  # without style tags
    style: Optional[str] = None  # the style tag the reply carries (a key of STYLE_TAGS)
    audio: Optional[str] = None

    @property
    def rendered(self) -> str:
        return f"[{self.style}] {self.text}" if self.style else self.text


@dataclass
class PreferencePair:
    context: List[ContextTurn]
    chosen: Reply
    rejected: Reply
    rubric: List[str] = field(default_factory=list)  # what separates chosen from rejected
    synthetic: bool = False
    source: str = ""
    meta: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        d = {"context": [{"role": t.role, "text": t.text, "emotion": t.emotion, "audio": t.audio} for t in self.context],
             "chosen": {"text": self.chosen.text, "style": self.chosen.style, "audio": self.chosen.audio},
             "rejected": {"text": self.rejected.text, "style": self.rejected.style, "audio": self.rejected.audio},
             "rubric": list(self.rubric), "synthetic": bool(self.synthetic), "source": self.source}
        if self.meta:
            d["meta"] = dict(self.meta)
        return d


# -- loading + validation --------------------------------------------------------------------------
class _Where:
    def __init__(self, file: str, line: int):
        self.file, self.line = file, line

    def fail(self, field_name: str, why: str):
        raise PairsFormatError(self.file, self.line, field_name, why)


def _typed(w: _Where, m: Dict[str, Any], key: str, typ, name: str, optional: bool = False):
    if key not in m:
        if optional:
            return None
        w.fail(name, "missing")
    v = m[key]
    if v is None and optional:
        return None
    if not isinstance(v, typ) or (typ is not bool and isinstance(v, bool)):
        tn = typ.__name__ if isinstance(typ, type) else "/".join(t.__name__ for t in typ)
        w.fail(name, f"expected {tn}{' or null' if optional else ''}, got {type(v).__name__}")
    return v


def _text(w: _Where, m: Dict[str, Any], name: str) -> str:
    text = _typed(w, m, "text", str, f"{name}.text")
    if not text.strip():
        w.fail(f"{name}.text", "empty")
    return text


def _reply(w: _Where, m: Any, name: str) -> Reply:
    if not isinstance(m, dict):
        w.fail(name, f"expected an object, got {type(m).__name__}")
    extra = set(m) - {"text", "style", "audio"}
    if extra:
        w.fail(f"{name}.{sorted(extra)[0]}", "unknown field")
    text = _text(w, m, name)
    tag, _ = parse_style(text)
    if tag is not None:
        w.fail(f"{name}.text", f"carries a style tag [{tag}]: put it in {name}.style, not the text")
    style = _typed(w, m, "style", str, f"{name}.style", optional=True)
    if style is not None and style not in STYLE_TAGS:
        w.fail(f"{name}.style", f"{style!r} is not a style tag ({', '.join(STYLE_TAGS)})")
    audio = _typed(w, m, "audio", str, f"{name}.audio", optional=True)
    return Reply(text, style, audio)


def parse_pair(obj: Any, file: str = "<pairs>", line: int = 0) -> PreferencePair:
    """Validates one decoded record; raises PairsFormatError naming file:line and the field."""
    w = _Where(file, line)
    if not isinstance(obj, dict):
        w.fail("record", f"expected an object, got {type(obj).__name__}")
    extra = set(obj) - _KEYS
    if extra:
        w.fail(sorted(extra)[0], f"unknown field (known: {', '.join(sorted(_KEYS))})")
    for k in _REQUIRED:
        if k not in obj:
            w.fail(k, "missing")
    ctx_raw = _typed(w, obj, "context", list, "context")
    context = []
    for i, t in enumerate(ctx_raw):
        name = f"context[{i}]"
        if not isinstance(t, dict):
            w.fail(name, f"expected an object, got {type(t).__name__}")
        extra = set(t) - {"role", "text", "emotion", "audio"}
        if extra:
            w.fail(f"{name}.{sorted(extra)[0]}", "unknown field")
        role = _typed(w, t, "role", str, f"{name}.role")
        if role not in ROLES:
            w.fail(f"{name}.role", f"{role!r} is not one of {', '.join(ROLES)}")
        text = _text(w, t, name)
        emotion = _typed(w, t, "emotion", str, f"{name}.emotion", optional=True)
        allowed = EMOTIONS if role == "user" else tuple(STYLE_TAGS)
        if emotion is not None and emotion not in allowed:
            w.fail(f"{name}.emotion", f"{emotion!r} is not a {'user emotion' if role == 'user' else 'style tag'} "
                                      f"({', '.join(allowed)})")
        if role == "agent" and parse_style(text)[0] is not None:
            w.fail(f"{name}.text", "carries a style tag: put it in emotion, not the text")
        audio = _typed(w, t, "audio", str, f"{name}.audio", optional=True)
        context.append(ContextTurn(role, text, emotion, audio))
    chosen = _reply(w, obj["chosen"], "chosen")
    rejected = _reply(w, obj["rejected"], "rejected")
    if chosen.rendered == rejected.rendered:
        w.fail("rejected", "identical to chosen (same text and style)")
    rubric = _typed(w, obj, "rubric", list, "rubric")
    for i, r in enumerate(rubric):
        if not isinstance(r, str) or not r.strip():
            w.fail(f"rubric[{i}]", f"expected a non-empty string, got {r!r}")
    synthetic = _typed(w, obj, "synthetic", bool, "synthetic")
    source = _typed(w, obj, "source", str, "source")
    meta = _typed(w, obj, "meta", dict, "meta", optional=True) or {}
    return PreferencePair(context, chosen, rejected, list(rubric), synthetic, source, meta)


def load_pairs(path: Union[str, os.PathLike]) -> List[PreferencePair]:
    """Every pair in a JSONL file (blank lines skipped); PairsFormatError names file:line/field on the first bad one."""
    p = str(path)
    pairs = [parse_pair(obj, p, n) for n, obj in read_jsonl(p, error=PairsFormatError)]
    if not pairs:
        raise PairsFormatError(p, 0, "file", "no pairs")
    return pairs


def dump_pairs(pairs: Iterable[PreferencePair], path: Union[str, os.PathLike]) -> Path:
    return write_jsonl((pair.to_dict() for pair in pairs), path)


# -- SYNTHETIC pairs from explicit rubric rules ------------------------------------------------------
# Rule "empathy": the reply's style tag matches the user's emotion (MATCH), the rejected one clashes (CLASH).
EMPATHY_MATCH: Dict[str, Sequence[str]] = {
    "sad": ("gentle", "calm"), "happy": ("happy", "excited"), "excited": ("excited", "happy"),
    "angry": ("calm", "serious"), "anxious": ("calm", "gentle"), "tired": ("gentle", "calm"),
    "calm": ("calm", "neutral"), "neutral": ("neutral", "calm"),
}
EMPATHY_CLASH: Dict[str, Sequence[str]] = {
    "sad": ("happy", "excited"), "happy": ("sad", "serious"), "excited": ("sad", "serious"),
    "angry": ("excited", "happy"), "anxious": ("excited", "happy"), "tired": ("excited", "happy"),
    "calm": ("excited", "sad"), "neutral": ("sad", "excited"),
}

_USER_SAYS: Dict[str, Sequence[str]] = {
    "sad": ("I lost my job today.", "My dog died last week.", "I failed my exam again.",
            "My best friend moved away.", "Nobody came to my birthday.", "I miss my grandmother."),
    "happy": ("I got the job!", "We're having a baby!", "I passed my driving test.",
              "My team won the final.", "I finally finished my novel.", "It's sunny and I feel great."),
    "excited": ("We leave for Japan tomorrow!", "I just got concert tickets!", "I'm getting married next week!",
                "The rocket launch is today!", "I won the raffle!", "My band got a gig!"),
    "angry": ("The delivery is late for the third time.", "My landlord kept my deposit.",
              "Someone scratched my car.", "They cancelled my flight again.", "My order arrived broken.",
              "The bank charged me twice."),
    "anxious": ("My interview is in an hour.", "I can't stop worrying about my test results.",
                "I have to give a speech tomorrow.", "My flight has bad turbulence forecast.",
                "I think I forgot to lock the door.", "The doctor wants to see me again."),
    "tired": ("I worked a double shift.", "The baby kept me up all night.", "I've been studying since dawn.",
              "I drove for ten hours.", "I can barely keep my eyes open.", "Long week, I'm done."),
    "calm": ("I'm just relaxing on the porch.", "I had a quiet morning.", "I'm making some tea.",
             "Just watching the rain.", "I finished my yoga class.", "Reading a book in the park."),
    "neutral": ("I need to plan my week.", "I'm looking at new phones.", "I moved to a new flat.",
                "I'm thinking about dinner.", "I started a new course.", "I have a meeting at noon."),
}
_AGENT_SAYS: Dict[str, Sequence[str]] = {  # an emotion-fitting reply, by the style it is voiced with
    "gentle": ("I'm so sorry. That's a lot to carry.", "That sounds really hard. I'm here for you.",
               "Take your time. I'm listening."),
    "calm": ("Let's take it one step at a time.", "I understand. Let's sort this out together.",
             "That makes sense. Let's look at it calmly."),
    "happy": ("That's wonderful news!", "I'm so happy for you!", "Congratulations, well done!"),
    "excited": ("Wow, that's amazing!", "No way, that's fantastic!", "That's so exciting!"),
    "serious": ("That's not acceptable. Let's fix it.", "I understand. Here's what we can do.",
                "You have every right to be upset. Let's act on it."),
    "neutral": ("Okay, let's look at that.", "Sure, tell me more.", "Got it. What would you like to do?"),
    "sad": ("Oh. That's a shame, I suppose.", "Sigh. Things like that never last.", "Hmm. That's a pity."),
}
_RAMBLE = ("Also, as I was saying, there are many things one could consider here, and in general it depends "
           "on a lot of factors, some of which we may or may not know about, so it's hard to say for sure.",
           "Anyway, on a related note, I once read that people often feel this way, and there is a long history "
           "of discussion about it, which I could go into at length if you want, or maybe not.",
           "By the way, let me also mention several other points, first of all the general context, second "
           "the details, and third everything else that might matter at some point later on.")
_RUDE = ("Whatever. Figure it out yourself.", "That's your problem, not mine.", "Ugh, stop complaining.",
         "I don't care. Next question.", "Who asked? Deal with it.")
_OFF_PERSONA = ("As a large language model I have no feelings about that.",
                "ERROR: input not recognised. Please rephrase.", "I am just a program. I cannot help humans.")
_DODGE = ("Hmm, let's talk about something else.", "I'd rather not do math right now.",
          "Numbers are boring, don't you think?", "Who knows? Maybe ask someone else.")
_OPENERS = (("Hi there.", "Hello! How can I help you today?"), ("Hey, are you there?", "Yes, I'm here. What's up?"),
            ("Good evening.", "Good evening! How are you?"))


def _sum_question(rng: random.Random):
    a, b = rng.randint(2, 19), rng.randint(2, 19)
    return a, b, rng.choice((f"What is {a} plus {b}?", f"Quick question: what's {a} plus {b}?",
                             f"Can you tell me what {a} plus {b} is?"))


def _wrong(rng: random.Random, right: int) -> int:
    while True:
        x = right + rng.choice((-3, -2, -1, 1, 2, 3, 10))
        if x != right and x > 0:
            return x


def synthesize_pairs(n: int, seed: int = 0, p_wrong_number: float = 0.5,
                     weights: Optional[Dict[str, float]] = None) -> List[PreferencePair]:
    """``n`` SYNTHETIC preference pairs, deterministic from ``seed``; each one differs by one rubric rule.

    Rules (``rubric`` label of the pair):
      empathy           chosen's style tag matches the user's emotion (EMPATHY_MATCH), rejected's clashes
                        (EMPATHY_CLASH); half the time the text is the same and only the tag differs.
      answers_question  the user asks "what is a plus b?": chosen states a+b, rejected states a wrong number
                        (probability ``p_wrong_number``) or dodges.
      concise           chosen is short; rejected is the same reply followed by rambling.
      polite_persona    chosen is polite and in persona; rejected is rude or breaks persona.
    Every record has ``synthetic: true`` and ``source`` "synthetic:rubric-rules-v1:seed=<seed>".
    """
    if n < 0:
        raise ValueError("n must be >= 0")
    w = {"empathy": 0.4, "answers_question": 0.2, "concise": 0.2, "polite_persona": 0.2}
    w.update(weights or {})
    rules = [k for k in RUBRIC_LABELS if w.get(k, 0) > 0]
    rng = random.Random(f"antiphon-rm-synthetic:{seed}")
    source = f"{SYNTHETIC_SOURCE}:seed={seed}"
    out = []
    for i in range(n):
        rule = rng.choices(rules, weights=[w[r] for r in rules])[0]
        emotion = rng.choice(EMOTIONS)
        context: List[ContextTurn] = []
        if rng.random() < 0.5:
            u, a = rng.choice(_OPENERS)
            context += [ContextTurn("user", u, "neutral"), ContextTurn("agent", a, "neutral")]
        said = rng.choice(_USER_SAYS[emotion])
        good_style = rng.choice(EMPATHY_MATCH[emotion])
        good_text = rng.choice(_AGENT_SAYS[good_style])
        meta: Dict[str, Any] = {"rule": rule, "user_emotion": emotion}
        if rule == "answers_question":
            a_, b_, q = _sum_question(rng)
            context.append(ContextTurn("user", f"{said} {q}", emotion))
            chosen = Reply(rng.choice((f"It's {a_ + b_}.", f"{a_} plus {b_} is {a_ + b_}.", f"That's {a_ + b_}.")),
                           good_style)
            if rng.random() < p_wrong_number:
                x = _wrong(rng, a_ + b_)
                rejected = Reply(rng.choice((f"It's {x}.", f"{a_} plus {b_} is {x}.", f"That's {x}.")), good_style)
                meta["rejected_kind"] = "wrong_number"
            else:
                rejected = Reply(rng.choice(_DODGE), good_style)
                meta["rejected_kind"] = "dodge"
        else:
            context.append(ContextTurn("user", said, emotion))
            chosen = Reply(good_text, good_style)
            if rule == "empathy":
                bad_style = rng.choice(EMPATHY_CLASH[emotion])
                bad_text = good_text if rng.random() < 0.5 else rng.choice(_AGENT_SAYS[bad_style])
                rejected = Reply(bad_text, bad_style)
                meta["rejected_kind"] = "tag_only" if bad_text == good_text else "tag_and_text"
            elif rule == "concise":
                rejected = Reply(f"{good_text} {rng.choice(_RAMBLE)}", good_style)
                meta["rejected_kind"] = "rambling"
            else:
                rude = rng.random() < 0.6
                rejected = Reply(rng.choice(_RUDE if rude else _OFF_PERSONA), good_style)
                meta["rejected_kind"] = "rude" if rude else "off_persona"
        out.append(PreferencePair(context, chosen, rejected, [rule], True, source, meta))
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description="Write SYNTHETIC preference pairs (rubric rules, not human judgements).")
    ap.add_argument("--synthetic", type=int, required=True, metavar="N")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    p = dump_pairs(synthesize_pairs(args.synthetic, args.seed), args.out)
    print(f"wrote {args.synthetic} SYNTHETIC preference pairs (rubric rules, seed {args.seed}; "
          f"every record has synthetic=true) to {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
