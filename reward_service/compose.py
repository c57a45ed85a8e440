"""Composition: run every configured component on a batch, normalise, weight, and place the rewards.

Per-turn components give one value per agent turn; dialogue components one value per trajectory. The
scored record keeps every component's raw and normalised values and its status (ok, timeout, error,
fallback), so dashboards can show ``reward/<component>`` apart and nothing is silently zero. A component
that times out or fails decides by its ``on_error`` policy: ``drop`` the trajectory (counted, with the
reason) or use its ``fallback`` value (recorded as such).
"""
from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from antiphon.config.schema import Normalize, OnError, RewardComponentConfig
from antiphon.protocol import Rewards, Trajectory
from reward_service.component import SCOPES, RewardComponent, Score


@dataclass
class RunningNorm:
    """Running mean/std (Welford) of a component's applicable values, for ``normalize: running``."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def update(self, xs: Sequence[float]) -> None:
        for x in xs:
            self.n += 1
            d = x - self.mean
            self.mean += d / self.n
            self.m2 += d * (x - self.mean)

    def apply(self, x: float) -> float:
        std = math.sqrt(self.m2 / (self.n - 1)) if self.n > 1 else 1.0
        return (x - self.mean) / max(std, 1e-6)


@dataclass
class ComponentSpec:
    """A built component with its entry's settings (their defaults live in ``RewardComponentConfig``)."""

    component: RewardComponent
    weight: float
    timeout_s: float
    normalize: Normalize
    on_error: OnError
    fallback: float
    norm: RunningNorm = field(default_factory=RunningNorm)

    @property
    def name(self) -> str:
        return self.component.name


def _check(spec: ComponentSpec, traj: Trajectory, result: Any) -> List[Score]:
    """The result as a list of Scores (one per agent turn, or one), or ValueError saying what is wrong."""
    scope = spec.component.scope
    if scope == "turn":
        if not isinstance(result, list) or len(result) != traj.num_agent_turns:
            got = len(result) if isinstance(result, list) else type(result).__name__
            raise ValueError(f"returned {got} scores for {traj.num_agent_turns} agent turns")
        scores = result
    else:
        scores = [result]
    for s in scores:
        if not isinstance(s, Score):
            raise ValueError(f"returned {type(s).__name__}, not Score")
        if not isinstance(s.value, (int, float)) or not math.isfinite(s.value):
            raise ValueError(f"non-finite value {s.value!r}")
    return scores


async def _run(spec: ComponentSpec, trajs: Sequence[Trajectory]) -> Tuple[str, Any, float]:
    t0 = time.perf_counter()
    try:
        res = await asyncio.wait_for(spec.component.score_batch(list(trajs)), timeout=spec.timeout_s)
        if not isinstance(res, list) or len(res) != len(trajs):
            return "error", f"score_batch returned {type(res).__name__} for {len(trajs)} trajectories", 0.0
        return "ok", res, time.perf_counter() - t0
    except asyncio.TimeoutError:
        return "timeout", f"exceeded timeout_s={spec.timeout_s}", time.perf_counter() - t0
    except Exception as e:  # a component may raise anything; it costs only its own values
        return "error", f"{type(e).__name__}: {e}"[:300], time.perf_counter() - t0


async def score(trajs: Sequence[Trajectory], specs: Sequence[ComponentSpec]
                ) -> List[Tuple[Trajectory, Optional[Rewards], Optional[str]]]:
    """For each trajectory: (trajectory, rewards, None) or (trajectory, None, drop reason)."""
    runs = await asyncio.gather(*(_run(s, trajs) for s in specs))
    out = []
    for i, traj in enumerate(trajs):
        n_turns = traj.num_agent_turns
        turn = [0.0] * n_turns
        dialogue = 0.0
        components: Dict[str, Dict[str, Any]] = {}
        drop: Optional[str] = None
        for spec, (status, res, secs) in zip(specs, runs):
            scope = spec.component.scope
            n = n_turns if scope == "turn" else 1
            why = None
            if status == "ok":
                try:
                    scores = _check(spec, traj, res[i])
                except ValueError as e:
                    status, why = "error", str(e)
            else:
                why = res
            if status != "ok":
                if spec.on_error is OnError.drop:
                    drop = drop or f"{spec.name}:{status}"
                scores = [Score(float(spec.fallback), {"fallback_for": why})] * n
                status = f"fallback({status})" if spec.on_error is OnError.fallback else status
            raw = [float(s.value) for s in scores]
            applicable = [s.details.get("applicable", True) is not False for s in scores]
            if spec.normalize is Normalize.running and status == "ok":
                spec.norm.update([x for x, a in zip(raw, applicable) if a])
                norm = [spec.norm.apply(x) if a else 0.0 for x, a in zip(raw, applicable)]
            else:
                norm = [x if a else 0.0 for x, a in zip(raw, applicable)]
            if scope == "turn":
                turn = [t + spec.weight * x for t, x in zip(turn, norm)]
            else:
                dialogue += spec.weight * norm[0]
            components[spec.name] = {"scope": scope, "weight": spec.weight, "status": status, "reason": why,
                                     "raw": raw, "norm": norm, "applicable": applicable,
                                     "details": [s.details for s in scores], "seconds": secs}
        if drop:
            out.append((traj, None, drop))
        else:
            out.append((traj, Rewards(turn=turn, dialogue=dialogue, components=components), None))
    return out


def build_specs(component_cfgs: Sequence[RewardComponentConfig]) -> List[ComponentSpec]:
    """From the ``reward.components`` config (the schema's dataclasses, or mappings read through it). A class that declares a ``Params`` dataclass is built with its
    fields, checked and typed (``antiphon.config.check_params``); any other with ``params`` as keyword
    arguments. Raises ValueError naming the entry."""
    from hydra.utils import get_class

    from antiphon.config import check_params, declared_params, to_dataclass

    specs, names = [], set()
    for k, c in enumerate(component_cfgs):
        where = f"reward.components[{k}]"
        c = to_dataclass(c, RewardComponentConfig)  # a mapping given by hand goes through the schema too
        cls = get_class(c._target_)
        if not (isinstance(cls, type) and issubclass(cls, RewardComponent)):
            raise ValueError(f"{where}._target_={c._target_!r}: not a RewardComponent")
        params = dict(c.params)
        if declared_params(cls) is not None:
            params, errors = check_params(cls, params, f"{where}.params")
            if errors:
                raise ValueError("\n  ".join(errors))
        comp = cls(**params)
        if c.name:
            comp.name = c.name
        if comp.scope not in SCOPES:
            raise ValueError(f"{where}: scope {comp.scope!r} is not one of {SCOPES}")
        if c.scope is not None and c.scope != comp.scope:
            raise ValueError(f"{where}.scope={c.scope.value!r}: {cls.__name__} scores per {comp.scope}")
        if comp.name in names:
            raise ValueError(f"{where}.name={comp.name!r}: two components with one name")
        names.add(comp.name)
        specs.append(ComponentSpec(comp, weight=c.weight, timeout_s=c.timeout_s, normalize=c.normalize,
                                   on_error=c.on_error, fallback=c.fallback))
    return specs
