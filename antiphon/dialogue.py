"""The dialogue contract: what a user simulator, a voice and the rollout loop exchange.

A dialogue is driven by the rollout worker:

    sim = <simulator._target_>(**params)          # one instance per dialogue: keep its state on self
    user = await sim.start(scenario)              # the user speaks first
    while not user.done and turns < cap:
        agent = <policy replies to the history + user.audio, voiced by the agent voice>
        user = await sim.react(agent)             # may carry feedback on the agent turn, may end it
    await sim.close()

Plain data only, so simulators can live in any package (``simulator._target_=my_pkg.MySim``).
"""
from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Optional

import numpy as np

if TYPE_CHECKING:
    from antiphon.config.schema import SimulatorConfig

EMOTIONS = ("neutral", "calm", "happy", "excited", "sad", "angry", "anxious", "tired")


@dataclass
class Prosody:
    """Relative voice settings: 1.0 is the voice's default."""

    pitch: float = 1.0
    rate: float = 1.0
    energy: float = 1.0


# How an emotion is voiced, and how the emotional-continuity reward reads it back from audio.
EMOTION_PROSODY: Dict[str, Prosody] = {
    "neutral": Prosody(1.0, 1.0, 1.0),
    "calm": Prosody(0.9, 0.85, 0.8),
    "happy": Prosody(1.25, 1.1, 1.2),
    "excited": Prosody(1.4, 1.3, 1.4),
    "sad": Prosody(0.8, 0.75, 0.6),
    "angry": Prosody(1.15, 1.2, 1.6),
    "anxious": Prosody(1.3, 1.35, 0.9),
    "tired": Prosody(0.85, 0.7, 0.6),
    "gentle": Prosody(0.95, 0.85, 0.7),
    "serious": Prosody(0.9, 0.95, 1.1),
}

# The style tags an agent reply may carry (part of this contract: the policy writes them, voices render them).
from antiphon.style import STYLE_TAGS, parse_style  # noqa: E402,F401


@dataclass
class Question:
    """A verifiable question the user asks at ``turn`` (0-based user turn), with its reference answer."""

    turn: int
    text: str
    answer: str


@dataclass
class Scenario:
    scenario_id: str
    persona: str = ""
    goal: str = ""
    emotion_arc: List[str] = field(default_factory=lambda: ["neutral"])  # the user's emotion per user turn
    questions: List[Question] = field(default_factory=list)
    disclosures: List[str] = field(default_factory=list)  # facts the user reveals, one per turn, in order
    max_turns: int = 3  # agent turns
    meta: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return {"scenario_id": self.scenario_id, "persona": self.persona, "goal": self.goal,
                "emotion_arc": list(self.emotion_arc), "disclosures": list(self.disclosures),
                "questions": [{"turn": q.turn, "text": q.text, "answer": q.answer} for q in self.questions],
                "max_turns": self.max_turns, "meta": dict(self.meta)}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Scenario":
        return cls(scenario_id=str(d["scenario_id"]), persona=d.get("persona", ""), goal=d.get("goal", ""),
                   emotion_arc=list(d.get("emotion_arc") or ["neutral"]),
                   questions=[Question(int(q["turn"]), q["text"], str(q["answer"])) for q in d.get("questions", [])],
                   disclosures=list(d.get("disclosures", [])), max_turns=int(d.get("max_turns", 3)),
                   meta=dict(d.get("meta", {})))


@dataclass
class UserTurn:
    text: str
    audio: np.ndarray  # float32 mono in [-1, 1]
    sample_rate: int
    emotion: Optional[str] = None  # the emotion it was spoken with
    feedback: Optional[float] = None  # the user's score of the previous agent turn, in [0, 1]
    done: bool = False  # the user ends the dialogue; no agent turn follows
    question: Optional[Question] = None  # set when this turn asks a verifiable question


@dataclass
class AgentTurn:
    reasoning: str  # the <think> part
    reply: str  # what was said, style tags removed
    style: Optional[str]  # the style tag the reply carried, if any (see STYLE_TAGS)
    audio: Optional[np.ndarray]  # the voiced reply (float32), None when the reply was empty
    sample_rate: int
    token_ids: List[int]
    finish_reason: str


class UserSimulator(abc.ABC):
    """The user side of one dialogue. Create one instance per dialogue; keep dialogue state on ``self``.

    Parameters come from the config as ``+simulator.<name>=value`` (plus the schema's ``voice``, ``seed``
    and ``sample_rate`` when the class takes them). A class may declare them as a dataclass,
    ``Params = MyParams``: the values are then checked and typed against it when the config is composed
    (``simulator.turns='x': ...`` before anything starts), a field marked ``metadata={"path": True}`` must
    name an existing file, and the class is constructed with every field of it as a keyword argument (the
    dataclass's defaults are the defaults). Without ``Params`` the values must bind to the constructor.
    """

    Params: Optional[type] = None

    @abc.abstractmethod
    async def start(self, scenario: Scenario) -> UserTurn:
        """The user's opening turn."""

    @abc.abstractmethod
    async def react(self, agent: AgentTurn) -> UserTurn:
        """The user's answer to the agent's turn (``done=True`` ends the dialogue)."""

    async def close(self) -> None:
        """Called once when the dialogue ends, for whatever reason (release per-dialogue resources)."""


class Voice(abc.ABC):
    """Text to speech. ``synthesize`` is blocking and thread-safe; callers run it off the event loop."""

    sample_rate: int = 16000

    @abc.abstractmethod
    def synthesize(self, text: str, emotion: Optional[str] = None, prosody: Optional[Prosody] = None) -> np.ndarray:
        """A float32 mono waveform in [-1, 1] at ``self.sample_rate``."""


# Schema keys offered to a simulator class only if its constructor (or Params) takes them.
_OPTIONAL_KEYS = ("voice", "seed", "sample_rate")


def simulator_factory(sim_cfg: SimulatorConfig, sample_rate: int):
    """A zero-argument callable making one simulator per dialogue from the ``simulator`` config.

    The class gets its own parameters (``+simulator.<key>``, in ``sim_cfg.params``) and those of the
    schema's optional keys (``voice``, ``seed``, ``sample_rate`` = the policy's rate) that it takes
    (``sim_cfg``: the schema's dataclass, or a mapping read through it). With a
    ``Params`` dataclass the values are checked and typed against it, and the class receives every field;
    otherwise they must bind to its constructor. Raises ValueError naming ``simulator.<key>``.
    """
    import functools
    import inspect

    from hydra.utils import get_class

    from antiphon.config import check_params, declared_params, to_dataclass
    from antiphon.config.schema import SimulatorConfig

    sim_cfg = to_dataclass(sim_cfg, SimulatorConfig)
    cls = get_class(sim_cfg._target_)
    if not (isinstance(cls, type) and issubclass(cls, UserSimulator)):
        raise ValueError(f"simulator._target_: {cls!r} is not a UserSimulator subclass")
    offered = {"voice": str(sim_cfg.voice), "seed": sim_cfg.seed, "sample_rate": sample_rate}
    given = dict(sim_cfg.params)
    schema = declared_params(cls)
    if schema is not None:
        fields = {f.name for f in dataclasses.fields(schema)}
        values, errors = check_params(cls, {**{k: v for k, v in offered.items() if k in fields}, **given},
                                      "simulator")
        if errors:
            raise ValueError("\n  ".join(errors))
        return functools.partial(cls, **values)
    params = inspect.signature(cls).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = {k: v for k, v in offered.items() if k in params or takes_any}
    for k, v in given.items():
        if k not in params and not takes_any:
            raise ValueError(f"simulator.{k}={v!r}: {cls.__name__} takes no parameter {k!r}")
        kwargs[k] = v
    for name, p in params.items():
        if p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) \
                and name not in kwargs:
            raise ValueError(f"simulator.{name}: required by {cls.__name__}; add +simulator.{name}=...")
    return functools.partial(cls, **kwargs)
