"""Config schema, registration with Hydra's ConfigStore, composition and validation.

Importable without torch, vLLM or Ray.
"""
from __future__ import annotations

import importlib.resources
from typing import Any, Dict, Iterable, List, Optional, Tuple

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, ListConfig, OmegaConf

from antiphon.config.schema import (GROUP_SCHEMAS, Algo, AntiphonConfig, Device, Estimator, Mode, OffPolicy,
                                    SimulatorConfig, WeightSync)

__all__ = ["ConfigError", "AntiphonConfig", "register", "config_dir", "compose", "validate", "to_dataclass",
           "check_params", "declared_params", "discard_hydra_run_dir"]


class ConfigError(ValueError):
    """An invalid config. The message names the key path and the offending value."""


_registered = False


def register() -> None:
    """Register the root schema and one schema per group in Hydra's ConfigStore (idempotent).

    ``antiphon_schema`` types the whole tree; ``<group>/schema`` lets a user's own primary config
    type a single group (``defaults: [schema]`` in their group file).
    """
    global _registered
    if _registered:
        return
    if not OmegaConf.has_resolver("policy_dir"):
        OmegaConf.register_new_resolver("policy_dir", _policy_dir)
    cs = ConfigStore.instance()
    cs.store(name="antiphon_schema", node=AntiphonConfig)
    for group, schema in GROUP_SCHEMAS.items():
        cs.store(group=group, name="schema", node=schema)
    _registered = True


def _policy_dir(*, _root_) -> str:
    """``${policy_dir:}``: the policy checkpoint directory -- ``model.path``, or where the tiny policy is
    built (computed, not built: the config stays importable without torch)."""
    import os

    from antiphon.model.tiny import tiny_key

    m = _root_.model
    if m.path:
        return str(m.path)
    tiny = OmegaConf.to_container(m.tiny, resolve=True)
    return os.path.join(os.path.expanduser(str(m.cache_dir)), f"tiny-qwen2-audio-{tiny_key(tiny)}")


def config_dir() -> str:
    """Absolute path of the packaged Hydra config tree (works for editable and regular installs)."""
    return str(importlib.resources.files("antiphon.configs"))


def compose(overrides: Iterable[str] = (), config_name: str = "config") -> DictConfig:
    """Compose the config as the CLI would (without a Hydra run directory), then validate it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import ConfigCompositionException
    from omegaconf.errors import OmegaConfBaseException

    register()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        try:
            cfg = hydra_compose(config_name=config_name, overrides=list(overrides))
        except ConfigCompositionException as e:
            cause = e.__cause__
            if not (isinstance(cause, OmegaConfBaseException) and cause.full_key):
                raise
            # A wrong type, a value outside a choice field's members, or a key the schema lacks, as
            # ``key=value: why`` (Hydra's own message would suggest ``+key=...``, which validate rejects).
            why = str(cause.msg).splitlines()[0]
            where = cause.full_key if cause.value is None else f"{cause.full_key}={cause.value!r}"
            raise ConfigError(f"invalid config:\n  {where}: {why}") from e
    validate(cfg)
    return cfg


def _walk(node: Any, path: str) -> Iterable[tuple[str, Any]]:
    yield path, node
    if isinstance(node, DictConfig):
        for key in node.keys():
            child = node._get_node(key)
            child_path = f"{path}.{key}" if path else str(key)
            if OmegaConf.is_missing(node, key):
                continue
            yield from _walk(node[key] if not OmegaConf.is_interpolation(node, key) else child, child_path)
    elif isinstance(node, ListConfig):
        for i in range(len(node)):
            yield from _walk(node[i], f"{path}[{i}]")


def _check_targets(cfg: DictConfig) -> List[str]:
    from hydra.utils import get_object

    errors = []
    for path, node in _walk(cfg, ""):
        if isinstance(node, DictConfig) and "_target_" in node and not OmegaConf.is_missing(node, "_target_"):
            target = node["_target_"]
            key = f"{path}._target_" if path else "_target_"
            try:
                get_object(str(target))
            except Exception as e:  # ImportError, AttributeError, ... with Hydra's wrapping
                cause = e.__cause__ or e
                errors.append(f"{key}={target!r}: cannot import it ({type(cause).__name__}: {cause})")
    return errors


def _check_component_params(cfg: DictConfig) -> List[str]:
    """Each reward component's ``params`` must fit its ``Params`` dataclass when the class declares one,
    else bind to its constructor (caught here, not in a replica)."""
    import inspect

    from hydra.utils import get_class
    from omegaconf.errors import OmegaConfBaseException

    errors = []
    for k, c in enumerate(cfg.reward.components):
        where = f"reward.components[{k}].params"
        try:
            params = OmegaConf.to_container(c.params, resolve=True)
        except OmegaConfBaseException as e:  # e.g. ${oc.env:ANTIPHON_RM} with the variable unset
            errors.append(f"{where}: {str(e).splitlines()[0]}")
            continue
        cls = get_class(c._target_)
        if declared_params(cls) is not None:
            errors += check_params(cls, params, where)[1]
            continue
        try:
            inspect.signature(cls).bind(**params)
        except TypeError as e:
            errors.append(f"{where}={params!r}: {c._target_} {e}")
    return errors


def declared_params(cls: Any) -> Any:
    """The parameters dataclass a reward component or simulator class declares (``Params = ...``), or None."""
    import dataclasses

    p = getattr(cls, "Params", None)
    return p if isinstance(p, type) and dataclasses.is_dataclass(p) else None


def check_params(cls: Any, given: Dict[str, Any], where: str) -> Tuple[Dict[str, Any], List[str]]:
    """``given`` checked against ``cls.Params``: unknown keys, wrong types and missing required fields
    are errors named ``<where>.<key>=<value>: why`` (``where`` is the config path, e.g.
    ``reward.components[2].params`` or ``simulator``). Returns (every field's typed value, errors); the
    values are the Params instance's fields, so its defaults are the only defaults."""
    import dataclasses

    from omegaconf.errors import OmegaConfBaseException

    schema = declared_params(cls)
    fields = {f.name for f in dataclasses.fields(schema)}
    errors = []
    for k, v in given.items():
        if k not in fields:
            errors.append(f"{where}.{k}={v!r}: {cls.__name__}.Params has no field {k!r}"
                          f"{_did_you_mean(k, fields)} (fields: {', '.join(sorted(fields)) or 'none'})")
    if errors:
        return {}, errors
    try:
        node = OmegaConf.merge(OmegaConf.structured(schema), given)
        obj = OmegaConf.to_object(node)
    except OmegaConfBaseException as e:
        key = e.full_key or "?"
        value = given.get(key.split(".")[0], "???")
        return {}, [f"{where}.{key}={value!r}: {str(e.msg).splitlines()[0]} ({cls.__name__}.Params)"]
    except (TypeError, ValueError) as e:  # a range check in Params.__post_init__
        return {}, [f"{where}={given!r}: {e} ({cls.__name__}.Params)"]
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(schema)}, []


def _did_you_mean(key: str, choices: Iterable[str]) -> str:
    import difflib

    close = difflib.get_close_matches(key, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _require(errors: List[str], ok: bool, key: str, value: Any, why: str) -> None:
    if not ok:
        errors.append(f"{key}={value!r}: {why}")


def validate(cfg: DictConfig, extra_keys: Iterable[str] = ()) -> None:
    """Checks a composed config beyond types: no key the schema does not know, ranges, cross-field rules,
    importable ``_target_``s, simulator and reward component parameters, and that every file it names
    exists -- all before anything starts. ``extra_keys``: top-level keys an entry point reads itself
    (e.g. ``+replica`` for ``reward_service.serve``).

    Raises ConfigError listing every problem, each as ``key=value: why``.
    """
    errors: List[str] = _check_closed(cfg, set(extra_keys))
    if errors:  # a misspelt key: the checks below would only add noise about the value it was meant to set
        raise ConfigError("invalid config:\n  " + "\n  ".join(errors))
    r, m = cfg.rollout, cfg.model
    _require(errors, r.num_workers >= 1, "rollout.num_workers", r.num_workers, "must be >= 1")
    _require(errors, r.max_num_seqs >= 1, "rollout.max_num_seqs", r.max_num_seqs, "must be >= 1")
    _require(errors, r.max_new_tokens >= 1, "rollout.max_new_tokens", r.max_new_tokens, "must be >= 1")
    _require(errors, r.temperature > 0, "rollout.temperature", r.temperature,
             "must be > 0 (greedy decoding has no behaviour distribution to correct against)")
    _require(errors, 0 < r.top_p <= 1, "rollout.top_p", r.top_p, "must be in (0, 1]")
    _require(errors, r.top_k >= 0, "rollout.top_k", r.top_k, "must be >= 0 (0 disables it)")
    _require(errors, r.kv_cache_gib > 0, "rollout.kv_cache_gib", r.kv_cache_gib, "must be > 0")
    _require(errors, 0 < r.gpu_memory_utilization <= 1, "rollout.gpu_memory_utilization",
             r.gpu_memory_utilization, "must be in (0, 1]")
    _require(errors, r.device is Device.cuda or r.num_gpus_per_worker == 0, "rollout.num_gpus_per_worker",
             r.num_gpus_per_worker, "must be 0 when rollout.device=cpu")
    _require(errors, r.max_new_tokens < m.max_model_len, "rollout.max_new_tokens", r.max_new_tokens,
             f"must be below model.max_model_len={m.max_model_len}")
    _require(errors, m.max_model_len >= 64, "model.max_model_len", m.max_model_len, "must be >= 64")
    _require(errors, m.sample_rate in (8000, 16000, 22050, 24000, 44100, 48000), "model.sample_rate",
             m.sample_rate, "must be a standard audio rate")
    if m.path is None:
        t = m.tiny
        _require(errors, t.hidden_size % t.num_attention_heads == 0, "model.tiny.hidden_size", t.hidden_size,
                 f"must be divisible by model.tiny.num_attention_heads={t.num_attention_heads}")
        _require(errors, t.num_attention_heads % t.num_key_value_heads == 0, "model.tiny.num_key_value_heads",
                 t.num_key_value_heads,
                 f"must divide model.tiny.num_attention_heads={t.num_attention_heads}")
    _require(errors, cfg.learner.lr > 0, "learner.lr", cfg.learner.lr, "must be > 0")
    errors += _check_learner(cfg.learner)
    rw = cfg.reward
    _require(errors, rw.replicas >= 1, "reward.replicas", rw.replicas, "must be >= 1")
    _require(errors, rw.batch_size >= 1, "reward.batch_size", rw.batch_size, "must be >= 1")
    for k, c in enumerate(rw.components):
        _require(errors, c.timeout_s > 0, f"reward.components[{k}].timeout_s", c.timeout_s, "must be > 0")
    target_errors = _check_targets(cfg)
    errors += target_errors
    if not any(e.startswith("simulator._target_") for e in target_errors):
        try:
            from antiphon.dialogue import simulator_factory

            simulator_factory(to_dataclass(cfg.simulator), m.sample_rate)
        except ValueError as e:
            errors.append(str(e))
    if not target_errors:
        errors += _check_component_params(cfg)
    errors += _check_files(cfg)
    if errors:
        raise ConfigError("invalid config:\n  " + "\n  ".join(errors))


def _check_closed(cfg: DictConfig, extra_keys: set) -> List[str]:
    """Every key must be one the schema declares. Hydra lets ``+group.key=...`` add any key to a typed
    group (its own hint for a misspelt one), which would then be silently ignored; here it is an error.
    The extension points take keys the schema cannot know: ``simulator`` (the simulator class's own
    parameters, checked against it in ``simulator_factory``) and every ``params`` mapping."""
    import dataclasses

    errors: List[str] = []

    def visit(node: Any, path: str) -> None:
        if isinstance(node, ListConfig):
            for i in range(len(node)):
                visit(node._get_node(i), f"{path}[{i}]")
            return
        if not isinstance(node, DictConfig) or node._is_none() or node._is_missing():
            return
        schema = OmegaConf.get_type(node)
        if not (isinstance(schema, type) and dataclasses.is_dataclass(schema)):
            return  # a plain mapping (component params, agent_voice, env): free-form by design
        fields = {f.name for f in dataclasses.fields(schema)}
        for key in node.keys():
            child = f"{path}.{key}" if path else str(key)
            if key in fields:
                visit(node._get_node(key), child)
            elif schema is SimulatorConfig or (not path and key in extra_keys):
                continue
            else:
                value = node._get_node(key)
                shown = OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else \
                    value._value()
                errors.append(f"{child}={shown!r}: unknown key ({schema.__name__} has no field {key!r}"
                              f"{_did_you_mean(str(key), fields)})")

    visit(cfg, "")
    return errors


def _check_files(cfg: DictConfig) -> List[str]:
    """Every file or directory the config names must exist now, not after the cold start has run."""
    import os

    from hydra.utils import get_class

    named = [("resume", cfg.resume), ("model.path", cfg.model.path),
             ("simulator.scenarios", cfg.simulator.scenarios),
             ("transport.password_file", cfg.transport.password_file)]
    sim = to_dataclass(cfg.simulator)
    try:
        sim_cls = get_class(sim._target_)
    except Exception:  # reported by _check_targets
        sim_cls = None
    named += [(f"simulator.{k}", v) for k, v in sim.params.items() if _names_a_file(sim_cls, k)]
    for i, c in enumerate(cfg.reward.components):
        try:
            cls = get_class(c._target_)
            params = OmegaConf.to_container(c.params, resolve=True)
        except Exception:  # reported by _check_targets / _check_component_params
            continue
        named += [(f"reward.components[{i}].params.{k}", v) for k, v in params.items() if _names_a_file(cls, k)]
    return [f"{key}={value!r}: no such file or directory" for key, value in named
            if value is not None and not os.path.exists(os.path.expanduser(str(value)))]


# A simulator or reward component parameter with one of these names names a file or directory that must
# exist; a Params dataclass can mark any other field with ``metadata={"path": True}``.
FILE_PARAMS = ("path", "manifest")


def _names_a_file(cls: Any, key: str) -> bool:
    import dataclasses

    schema = declared_params(cls) if cls is not None else None
    if schema is not None:
        for f in dataclasses.fields(schema):
            if f.name == key and f.metadata.get("path"):
                return True
    return key in FILE_PARAMS


def _check_learner(lr: DictConfig) -> List[str]:
    errors: List[str] = []
    for key in ("steps", "batch_size", "group_size", "ppo_epochs", "minibatches", "broadcast_every",
                "checkpoint_every", "log_samples_every", "num_threads", "warmup_steps"):
        _require(errors, lr[key] >= 1, f"learner.{key}", lr[key], "must be >= 1")
    _require(errors, lr.max_staleness >= 0, "learner.max_staleness", lr.max_staleness, "must be >= 0")
    _require(errors, lr.batch_size % lr.group_size == 0, "learner.batch_size", lr.batch_size,
             f"must be a multiple of learner.group_size={lr.group_size} (a batch holds whole groups)")
    _require(errors, lr.batch_size % lr.minibatches == 0, "learner.minibatches", lr.minibatches,
             f"must divide learner.batch_size={lr.batch_size}")
    _require(errors, lr.estimator is not Estimator.group or lr.group_size >= 2, "learner.group_size",
             lr.group_size, "must be >= 2 with learner.estimator=group (a lone rollout has no baseline)")
    for key in ("batch_timeout_s", "group_wait_s"):
        _require(errors, lr[key] > 0, f"learner.{key}", lr[key], "must be > 0 (seconds)")
    _require(errors, 0 < lr.gamma <= 1, "learner.gamma", lr.gamma, "must be in (0, 1]")
    _require(errors, 0 <= lr.lam <= 1, "learner.lam", lr.lam, "must be in [0, 1]")
    _require(errors, 0 <= lr.clip_low < 1, "learner.clip_low", lr.clip_low, "must be in [0, 1)")
    _require(errors, lr.clip_high >= 0, "learner.clip_high", lr.clip_high, "must be >= 0")
    _require(errors, lr.behav_cap is None or lr.behav_cap >= 1, "learner.behav_cap", lr.behav_cap,
             "must be >= 1 (or null for no cap)")
    for key in ("value_coef", "kl_coef", "entropy_coef", "max_grad_norm", "weight_decay"):
        _require(errors, lr[key] >= 0, f"learner.{key}", lr[key], "must be >= 0")
    _require(errors, lr.value_clip is None or lr.value_clip > 0, "learner.value_clip", lr.value_clip,
             "must be > 0 (or null for no clip)")
    # Stale tokens were sampled by an older policy: without a correction the PPO ratio is against the
    # wrong distribution. Sync mode is on-policy by construction.
    _require(errors, lr.mode is Mode.sync or lr.max_staleness == 0 or lr.off_policy is not OffPolicy.none
             or lr.algo is Algo.appo, "learner.off_policy", lr.off_policy.value,
             f"learner.max_staleness={lr.max_staleness} trains on stale tokens and needs an off-policy correction "
             "(learner.off_policy=decoupled or learner.algo=appo), or set learner.max_staleness=0")
    if lr.weight_sync is WeightSync.nccl:
        from antiphon.weight_sync.nccl import UNAVAILABLE

        errors.append(f"learner.weight_sync='nccl': {UNAVAILABLE.split(' is ', 1)[1]}")
    _require(errors, lr.device is Device.cuda or lr.num_gpus == 0, "learner.num_gpus", lr.num_gpus,
             "must be 0 when learner.device=cpu")
    cs = lr.cold_start
    for key in ("dialogues", "epochs", "batch_size"):
        _require(errors, cs[key] >= 1, f"learner.cold_start.{key}", cs[key], "must be >= 1")
    _require(errors, cs.lr > 0, "learner.cold_start.lr", cs.lr, "must be > 0")
    return errors


def to_dataclass(node: Any, schema: Optional[type] = None) -> Any:
    """A config node (the root or any group) as the schema's dataclass, interpolations resolved: what the
    parts receive (``AntiphonConfig``, ``LearnerConfig``, ``RewardConfig``, ...). The simulator's
    ``+simulator.<key>`` values are gathered into ``SimulatorConfig.params``.

    A part's entry point called from code (a test, a notebook) may be handed a plain mapping instead: with
    ``schema`` it goes through the schema -- its types, Enum choices and defaults -- into the same
    dataclass (an instance of ``schema`` is returned as it is), so the parts have one typed path.
    """
    import dataclasses

    if schema is not None and isinstance(node, schema):
        return node
    if schema is not None and not isinstance(node, DictConfig):
        data = dict(node)
        if schema is SimulatorConfig:
            known = {f.name for f in dataclasses.fields(SimulatorConfig)}
            extra = {k: data.pop(k) for k in list(data) if k not in known}
            data["params"] = {**dict(data.get("params") or {}), **extra}
        node = OmegaConf.merge(OmegaConf.structured(schema), data)
    obj = OmegaConf.to_object(node)

    def gather(x: Any) -> None:
        if isinstance(x, SimulatorConfig):
            fields = {f.name for f in dataclasses.fields(x)}
            for k in [k for k in vars(x) if k not in fields]:
                x.params[k] = vars(x).pop(k)
        elif dataclasses.is_dataclass(x):
            for f in dataclasses.fields(x):
                gather(getattr(x, f.name))

    gather(obj)
    return obj


def discard_hydra_run_dir() -> None:
    """A rejected config leaves nothing behind. Hydra creates the job's output directory (``.hydra/`` and
    an empty ``<job>.log``) before the task function can validate anything; an entry point that rejects
    the config calls this to remove it -- only when it holds nothing but those files of Hydra's -- and
    the parent directories Hydra created for it that are left empty (up to the working directory)."""
    import shutil
    from pathlib import Path

    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    hc = HydraConfig.get()
    out = Path(hc.runtime.output_dir).resolve()
    own = {str(hc.output_subdir), f"{hc.job.name}.log"}
    if not out.is_dir() or any(p.name not in own for p in out.iterdir()):
        return
    log = out / f"{hc.job.name}.log"
    if log.exists() and log.stat().st_size > 0:
        return  # something was logged: it is not Hydra's empty file any more
    shutil.rmtree(out)
    stop = Path.cwd().resolve()
    parent = out.parent
    while parent != stop and stop in parent.parents and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent
