"""Built-in verifiers. Text: reasoning format, answer correctness, verbosity, the simulator's feedback.
Audio: emotional continuity (prosody of the user's voice vs the agent's voiced reply), speech quality (DNSMOS).

Turns a verifier does not apply to score ``NOT_APPLICABLE`` (0.0) with ``details["applicable"] = False``.
"""
from reward_service.verifiers.common import NOT_APPLICABLE
from reward_service.verifiers.correctness import AnswerCorrectness
from reward_service.verifiers.emotion import EmotionalContinuity
from reward_service.verifiers.feedback import DialogueSatisfaction, SimulatorFeedback
from reward_service.verifiers.length import Verbosity
from reward_service.verifiers.quality import SpeechQuality
from reward_service.verifiers.think import ThinkFormat

__all__ = ["NOT_APPLICABLE", "AnswerCorrectness", "DialogueSatisfaction", "EmotionalContinuity", "SimulatorFeedback",
           "SpeechQuality", "ThinkFormat", "Verbosity"]
