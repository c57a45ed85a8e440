"""The scripted user: a persona with a goal and an emotion arc, who discloses facts one turn at a time,
asks verifiable questions, scores how well the agent met their emotional state, and ends the dialogue.

Every user turn is voiced with the emotion of the arc, so the policy has to *hear* the emotion.
"""
from __future__ import annotations

import asyncio
import re
import threading
from typing import Dict, Optional, Tuple

from antiphon.dialogue import AgentTurn, Scenario, UserSimulator, UserTurn, Voice

# Agent styles that meet a user's emotional state (the style tag the agent's reply carries).
EMPATHIC_STYLES: Dict[str, Tuple[str, ...]] = {
    "sad": ("gentle", "calm"),
    "anxious": ("calm", "gentle"),
    "angry": ("calm", "serious"),
    "tired": ("gentle", "calm"),
    "happy": ("happy", "excited"),
    "excited": ("excited", "happy"),
    "neutral": ("neutral", "calm"),
    "calm": ("calm", "neutral", "gentle"),
}
_OPENERS = {
    "sad": "Honestly, I feel low.", "anxious": "Um, I am a bit worried.", "angry": "I am really annoyed.",
    "tired": "I am so tired.", "happy": "Hi, I am in a good mood!", "excited": "Guess what!",
    "neutral": "Hello.", "calm": "Hello there.",
}
_VOICES: Dict[Tuple[str, int], Voice] = {}
_VOICES_LOCK = threading.Lock()


def shared_voice(name: str, sample_rate: int) -> Voice:
    """One voice per process and setting: dialogues are many, voice models are big."""
    from simulator.voices import make_voice

    with _VOICES_LOCK:
        key = (name, sample_rate)
        if key not in _VOICES:
            _VOICES[key] = make_voice(name, sample_rate=sample_rate)
        return _VOICES[key]


def emotion_match(user_emotion: Optional[str], agent_style: Optional[str]) -> float:
    """1 when the agent's style meets the user's state, 0.5 with no style, 0 when it clashes."""
    if agent_style is None:
        return 0.5
    return 1.0 if agent_style in EMPATHIC_STYLES.get(user_emotion or "neutral", ()) else 0.0


def answer_correct(reply: str, answer: str) -> bool:
    """The reference answer appears as a whole word/number in the reply (digits or words)."""
    from simulator.scenarios import NUMBER_WORDS

    forms = {answer.lower()}
    if answer.isdigit() and int(answer) < len(NUMBER_WORDS):
        forms.add(NUMBER_WORDS[int(answer)])
    words = set(re.findall(r"[a-z0-9]+", reply.lower()))
    return bool(forms & words)


class ScriptedSimulator(UserSimulator):
    def __init__(self, voice: str = "espeak", sample_rate: int = 16000, seed: int = 0):
        self.voice_name, self.sample_rate, self.seed = voice, int(sample_rate), int(seed)
        self.scenario: Optional[Scenario] = None
        self.turn = 0  # user turns spoken so far
        self.pending_question = None
        self.empty_replies = 0

    async def _say(self, text: str, emotion: str, **kw) -> UserTurn:
        voice = shared_voice(self.voice_name, self.sample_rate)
        audio = await asyncio.to_thread(voice.synthesize, text, emotion)
        return UserTurn(text=text, audio=audio, sample_rate=voice.sample_rate, emotion=emotion, **kw)

    def _emotion(self) -> str:
        arc = self.scenario.emotion_arc
        return arc[min(self.turn, len(arc) - 1)]

    async def _next_turn(self, feedback: Optional[float]) -> UserTurn:
        s, k, emotion = self.scenario, self.turn, self._emotion()
        parts = [_OPENERS.get(emotion, "Hello.") if k == 0 else ""]
        if k == 0:
            parts.append(f"I want to {s.goal}.")
        if k < len(s.disclosures):
            parts.append(s.disclosures[k])
        q = next((q for q in s.questions if q.turn == k), None)
        if q is not None:
            parts.append(f"Quick question, {q.text}")
        self.pending_question = q
        self.turn += 1
        return await self._say(" ".join(p for p in parts if p), emotion, feedback=feedback, question=q)

    async def start(self, scenario: Scenario) -> UserTurn:
        self.scenario, self.turn = scenario, 0
        return await self._next_turn(None)

    async def react(self, agent: AgentTurn) -> UserTurn:
        scores = [emotion_match(self._previous_emotion(), agent.style)]
        if self.pending_question is not None:
            scores.append(1.0 if answer_correct(agent.reply, self.pending_question.answer) else 0.0)
        feedback = sum(scores) / len(scores)
        self.empty_replies = self.empty_replies + 1 if not agent.reply.strip() else 0
        if self.empty_replies >= 2:
            return await self._say("Never mind. Bye.", self._previous_emotion(), feedback=feedback, done=True)
        if self.turn >= self.scenario.max_turns:
            closing = "Thank you, that helps. Bye!" if feedback >= 0.5 else "Okay. Bye."
            return await self._say(closing, self._previous_emotion(), feedback=feedback, done=True)
        return await self._next_turn(feedback)

    def _previous_emotion(self) -> str:
        arc = self.scenario.emotion_arc
        return arc[min(self.turn - 1, len(arc) - 1)]
