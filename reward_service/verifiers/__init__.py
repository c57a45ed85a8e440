"""Built-in text verifiers: reasoning format, answer correctness, verbosity and the simulator's feedback.

Turns a verifier does not apply to score ``NOT_APPLICABLE`` (0.0) with ``details["applicable"] = False``.
"""
from reward_service.verifiers.common import NOT_APPLICABLE
from reward_service.verifiers.correctness import AnswerCorrectness
from reward_service.verifiers.feedback import DialogueSatisfaction, SimulatorFeedback
from reward_service.verifiers.length import Verbosity
from reward_service.verifiers.think import ThinkFormat

__all__ = ["NOT_APPLICABLE", "AnswerCorrectness", "DialogueSatisfaction", "SimulatorFeedback", "ThinkFormat",
           "Verbosity"]
