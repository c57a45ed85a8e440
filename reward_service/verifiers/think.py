"""Reasoning format: each agent turn thinks first, closes its reasoning itself, then says something.

The rollout loop (``antiphon/dialogue_loop.py``) usually opens an agent turn inside ``<think>``: the prompt ends with
it, so it sits just before the turn's token span and is not a policy token. The reasoning runs until the
policy samples ``</think>``, or until the thinking budget is spent and the loop forces ``</think>`` in as a
non-policy token; the reply follows. Without an opened ``<think>`` the policy may open one as its first token.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np

from antiphon.checks import check_number
from antiphon.model.tokens import END_THINK, IM_END, THINK
from antiphon.protocol import Trajectory, TurnRecord
from reward_service.component import RewardComponent, Score, agent_turns
from reward_service.verifiers.answers import contains_answer
from reward_service.verifiers.common import load_tokenizer, questions_per_agent_turn, token_ids

RULES = ("empty_reasoning", "unclosed", "over_budget", "stray_marker", "empty_reply")


class ThinkFormat(RewardComponent):
    """Per agent turn: 1.0 when non-empty reasoning is closed by a sampled ``</think>`` within ``budget``
    reasoning tokens and a non-empty reply follows; otherwise ``max(0, 1 - sum of the fired rules' penalties)``.

    Rules (``details["rules"]`` lists those that fired):

    - ``empty_reasoning``: no reasoning opened (``details["opened"] == "none"``), or nothing but whitespace in it.
    - ``unclosed``: the reasoning was opened but no ``</think>`` follows (the turn ended inside it). Its reply
      is empty by construction; ``empty_reply`` is not charged on top.
    - ``over_budget``: ``</think>`` was forced in by the loop (``details["close"] == "forced"``), or more than
      ``budget`` reasoning tokens came before it.
    - ``stray_marker``: the policy sampled a ``<think>``/``</think>`` other than the opening and the closing one.
    - ``empty_reply``: nothing to say after ``</think>`` (``turn.text``, style tags removed, is blank).

    With ``tokenizer_path`` (the policy's tokenizer, for the marker ids) the structure is read from the
    turn's tokens and ``policy_mask`` (``details["close"]``: ``sampled``, ``forced``, ``none`` when never closed,
    None when never opened); emptiness is judged on the decoded ``turn.reasoning``/``turn.text``
    either way. Without it only ``empty_reasoning`` and ``empty_reply`` can be seen (a forced ``</think>``
    is invisible in text), so ``budget`` needs ``tokenizer_path``.

    Where the turn answers a scenario question, ``details["answer_only_in_reasoning"]`` reports a reference
    answer worked out in the reasoning but not said; it costs nothing here (``AnswerCorrectness`` scores it).
    """

    scope = "turn"

    def __init__(self, tokenizer_path: Optional[str] = None, budget: Optional[int] = None,
                 empty_reasoning_penalty: float = 0.5, unclosed_penalty: float = 1.0,
                 over_budget_penalty: float = 0.5, stray_marker_penalty: float = 0.5,
                 empty_reply_penalty: float = 0.5, name: Optional[str] = None):
        super().__init__(name)
        owner = type(self).__name__
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 1):
            raise ValueError(f"{owner}: budget={budget!r} must be a positive int (reasoning tokens) or None")
        if budget is not None and tokenizer_path is None:
            raise ValueError(f"{owner}: budget={budget} counts tokens and needs tokenizer_path")
        self.budget = budget
        given = {"empty_reasoning": empty_reasoning_penalty, "unclosed": unclosed_penalty,
                 "over_budget": over_budget_penalty, "stray_marker": stray_marker_penalty,
                 "empty_reply": empty_reply_penalty}
        self.penalties: Dict[str, float] = {r: check_number(f"{owner}: {r}_penalty", given[r], 0.0, 1.0) for r in RULES}
        self.marker_ids: Optional[Tuple[int, int, int]] = None  # <think>, </think>, <|im_end|>
        if tokenizer_path is not None:
            tok = load_tokenizer(tokenizer_path, owner)
            self.marker_ids = tuple(token_ids(tok, [THINK, END_THINK, IM_END], owner, tokenizer_path))

    def score(self, traj: Trajectory) -> List[Score]:
        out = []
        for (_, turn), q in zip(agent_turns(traj), questions_per_agent_turn(traj)):
            rules, details = self._token_rules(traj, turn) if self.marker_ids else self._text_rules(turn)
            details["rules"] = rules
            if q is not None:
                answer = str(q["answer"])
                details["answer_only_in_reasoning"] = (contains_answer(turn.reasoning or "", answer)
                                                       and not contains_answer(turn.text, answer))
            out.append(Score(max(0.0, 1.0 - sum(self.penalties[r] for r in rules)), details))
        return out

    @staticmethod
    def _text_rules(turn: TurnRecord):
        rules = []
        if not (turn.reasoning or "").strip():
            rules.append("empty_reasoning")
        if not turn.text.strip():
            rules.append("empty_reply")
        return rules, {"mode": "text"}

    def _token_rules(self, traj: Trajectory, turn: TurnRecord):
        think, end_think, im_end = self.marker_ids
        ids = traj.token_ids[turn.start:turn.end]
        policy = traj.policy_mask[turn.start:turn.end].astype(bool)
        if turn.start > 0 and traj.token_ids[turn.start - 1] == think:
            opened, body = "prompt", 0
        elif len(ids) and ids[0] == think and policy[0]:
            opened, body = "policy", 1
        else:
            opened, body = "none", 0
        expected = set()  # where the opening and closing markers the policy may sample are
        close, reasoning = None, 0
        if opened != "none":
            closes = np.flatnonzero(ids[body:] == end_think) + body
            end = int(closes[0]) if len(closes) else len(ids)
            close = ("sampled" if policy[end] else "forced") if len(closes) else "none"
            # Reasoning tokens: what the policy sampled between the opening and the close (or the turn's
            # end), less a sampled end of turn.
            reasoning = int((policy[body:end] & (ids[body:end] != im_end)).sum())
            expected = {0, end} if opened == "policy" else {end}
        rules = []
        if reasoning == 0 or not (turn.reasoning or "").strip():
            rules.append("empty_reasoning")
        if close == "none":
            rules.append("unclosed")
        if close == "forced" or (self.budget is not None and reasoning > self.budget):
            rules.append("over_budget")
        markers = np.flatnonzero(((ids == think) | (ids == end_think)) & policy)
        if any(int(m) not in expected for m in markers):
            rules.append("stray_marker")
        if close != "none" and not turn.text.strip():
            rules.append("empty_reply")
        return rules, {"mode": "tokens", "opened": opened, "close": close, "reasoning_tokens": reasoning,
                       "budget": self.budget}
