"""Style tags: how the agent asks for a tone of voice. A reply may carry a tag, usually leading
(``"[gentle] I'm sorry to hear that."``); the tag is not spoken, the agent voice renders its emotion.

=========  =============  ===============================  ==================================
tag        emotion        prosody (pitch, rate, energy)    sounds
=========  =============  ===============================  ==================================
neutral    ``neutral``    1.00, 1.00, 1.00                 the voice's default
calm       ``calm``       0.90, 0.85, 0.80                 lower, slower, softer
gentle     ``gentle``     0.95, 0.85, 0.70                 soft and unhurried
happy      ``happy``      1.25, 1.10, 1.20                 brighter, a little faster
excited    ``excited``    1.40, 1.30, 1.40                 high, fast, loud
sad        ``sad``        0.80, 0.75, 0.60                 low, slow, quiet
serious    ``serious``    0.90, 0.95, 1.10                 lower and firm
=========  =============  ===============================  ==================================

This is part of the dialogue contract (the policy writes tags, the rollout loop strips them, the agent
voice renders them), so it lives in the spine. The prosody column is ``antiphon.dialogue.EMOTION_PROSODY[emotion]``, which the voices apply. Tags match
case-insensitively and may have spaces inside the brackets (``[ Calm ]``); any other bracketed word is
ordinary text and stays.
"""
from __future__ import annotations

import re
from typing import Dict, Optional, Tuple

# tag -> the emotion the agent voice speaks it with (a key of EMOTION_PROSODY)
STYLE_TAGS: Dict[str, str] = {tag: tag for tag in
                              ("neutral", "calm", "gentle", "happy", "excited", "sad", "serious")}

_NAMES = "|".join(STYLE_TAGS)
_TAG = re.compile(rf"\[\s*({_NAMES})\s*\]", re.IGNORECASE)
# A run of known tags with the spaces and tabs around them (never newlines), removed as one.
_TAG_RUN = re.compile(rf"[ \t]*(?:\[\s*(?:{_NAMES})\s*\][ \t]*)+", re.IGNORECASE)
_NO_SPACE_AFTER = "([{\n"
_NO_SPACE_BEFORE = ",.;:!?)]}\n"


def parse_style(text: str) -> Tuple[Optional[str], str]:
    """``(style, text)``: the first known tag (lower case) or None, and the text with every known tag removed.

    A removed tag leaves one space between words, and none at the ends, next to brackets, before punctuation
    or at a line break:
    ``"Oh [happy]!"`` -> ``"Oh!"``, ``"I see.[calm]Take your time"`` -> ``"I see. Take your time"``.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    first = _TAG.search(text)

    def gap(match: re.Match) -> str:
        before, after = text[:match.start()], text[match.end():]
        if not before or not after or before[-1] in _NO_SPACE_AFTER or after[0] in _NO_SPACE_BEFORE:
            return ""
        return " "

    return (first.group(1).lower() if first else None), _TAG_RUN.sub(gap, text).strip()
