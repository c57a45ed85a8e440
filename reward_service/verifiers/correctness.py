"""Answer correctness: did the agent's spoken reply answer the user's verifiable question?"""
from __future__ import annotations

from typing import List

from antiphon.protocol import Trajectory
from reward_service.component import RewardComponent, Score, agent_turns
from reward_service.verifiers.answers import check_answer, contains_answer
from reward_service.verifiers.common import not_applicable, questions_per_agent_turn


class AnswerCorrectness(RewardComponent):
    """Per agent turn: 1.0 if the reply states the reference answer of the question its user turn asked,
    0.0 otherwise (see ``reward_service.verifiers.answers`` for the normalisation and the hedge rule).

    Only the reply counts (``turn.text``, reasoning and style tags removed): an answer worked out in the
    reasoning but never said scores 0 (verdict ``only_in_reasoning``). Turns whose user turn asked no question
    score 0.0 with ``details["applicable"] = False``.
    """

    scope = "turn"

    def score(self, traj: Trajectory) -> List[Score]:
        out = []
        for (_, turn), q in zip(agent_turns(traj), questions_per_agent_turn(traj)):
            if q is None:
                out.append(not_applicable())
                continue
            answer = str(q["answer"])
            verdict, numbers = check_answer(turn.text, answer)
            if verdict == "missing" and contains_answer(turn.reasoning or "", answer):
                verdict = "only_in_reasoning"
            out.append(Score(1.0 if verdict == "correct" else 0.0,
                             {"applicable": True, "question_turn": q["turn"], "answer": answer, "verdict": verdict,
                              "reply_numbers": numbers}))
        return out
