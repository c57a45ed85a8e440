"""``experiment.dry_run=true``: compose and validate the config, print what the run would start, start nothing.

A dry run answers "is this command line right, and what will it do?" in seconds, without Ray, vLLM, a
server or a model build: every check of ``antiphon.config.validate`` has run by then (unknown keys,
ranges, importable ``_target_``s, files the config names), so a dry run that passes means the run gets
past validation. It leaves nothing behind: the run folder Hydra made for the job is discarded, as for a
rejected config.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, List
from urllib.parse import urlsplit

from omegaconf import DictConfig, OmegaConf

from antiphon.config import discard_hydra_run_dir


def _get(cfg: DictConfig, key: str) -> Any:
    value = OmegaConf.select(cfg, key, default=None)
    return getattr(value, "value", value)  # an Enum choice prints as its value


def _where(url: str) -> str:
    """scheme://host:port of a server URL -- never its password."""
    u = urlsplit(url)
    return f"{u.scheme}://{u.hostname or ''}{f':{u.port}' if u.port else ''}{u.path if u.scheme == 'unix' else ''}"


def _job_suffix() -> str:
    """In a Hydra multirun each job streams under ``<namespace>.job<N>`` (antiphon.run_setup)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return f".job{HydraConfig.get().job.num}"
    return ""


def plan(cfg: DictConfig, run_dir: Path, prog: str) -> List[str]:
    """One line per part of the run: what would start, where, and with which budget."""
    lines = []
    path = _get(cfg, "model.path")
    lines.append(f"model      {path if path else 'the tiny policy, built once into ' + str(_get(cfg, 'model.cache_dir'))}")
    if prog == "antiphon" and _get(cfg, "learner.cold_start.enabled") and not _get(cfg, "resume"):
        lines.append(f"cold start {_get(cfg, 'learner.cold_start.dialogues')} synthetic dialogues x "
                     f"{_get(cfg, 'learner.cold_start.epochs')} epochs (once, cached)")
    lines.append(f"rollout    {_get(cfg, 'rollout.num_workers')} vLLM worker(s) on {_get(cfg, 'rollout.device')}, "
                 f"up to {_get(cfg, 'rollout.max_new_tokens')} new tokens per request; users: "
                 f"{_get(cfg, 'simulator._target_')}")
    if prog == "antiphon":
        names = [str(c.get("name") or str(c["_target_"]).rsplit(".", 1)[-1]) for c in cfg.reward.components]
        lines.append(f"rewards    {_get(cfg, 'reward.replicas')} replica(s): {', '.join(names) or 'none'}")
        mode = _get(cfg, "learner.mode")
        lines.append(f"learner    {mode} PPO on {_get(cfg, 'learner.device')}, {_get(cfg, 'learner.steps')} steps x "
                     f"{_get(cfg, 'learner.batch_size')} dialogues, estimator {_get(cfg, 'learner.estimator')}, "
                     f"max_staleness {_get(cfg, 'learner.max_staleness')}")
        if _get(cfg, "resume"):
            lines.append(f"resume     from {_get(cfg, 'resume')}")
    else:
        lines.append(f"dialogues  {_get(cfg, 'experiment.rounds')} round(s) x {_get(cfg, 'experiment.dialogues_per_round')}, "
                     "appended to the trajectory stream; nothing trains")
    url = _get(cfg, "transport.url")
    namespace = f"{_get(cfg, 'transport.namespace')}{_job_suffix()}"
    data_dir = _get(cfg, "transport.data_dir") or run_dir / "valkey"
    lines.append(f"transport  {_where(url) if url else f'an embedded Valkey, data in {data_dir}'}, "
                 f"namespace {namespace}")
    address = _get(cfg, "cluster.address")
    lines.append(f"cluster    {'Ray at ' + str(address) if address else 'a local Ray instance'}")
    lines.append(f"run dir    {run_dir}")
    return lines


def dry_run(cfg: DictConfig, run_dir: Path, prog: str) -> bool:
    """With ``experiment.dry_run=true``: print the plan, remove the job folder Hydra made, return True (the
    caller then returns without starting anything). Otherwise return False."""
    if not _get(cfg, "experiment.dry_run"):
        return False
    print(f"[{prog}] dry run: the config is valid; nothing was started.", flush=True)
    for line in plan(cfg, run_dir, prog):
        print(f"  {line}", flush=True)
    discard_hydra_run_dir()
    return True

