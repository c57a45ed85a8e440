"""Config schema, registration with Hydra's ConfigStore, composition and validation.

Importable without torch, vLLM or Ray.
"""
from __future__ import annotations

import importlib.resources
from typing import Any, Iterable, List

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, ListConfig, OmegaConf

from antiphon.config.schema import GROUP_SCHEMAS, AntiphonConfig

__all__ = ["ConfigError", "AntiphonConfig", "register", "config_dir", "compose", "validate"]


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

    register()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = hydra_compose(config_name=config_name, overrides=list(overrides))
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
    """Each reward component's ``params`` must bind to its constructor (caught here, not in a replica)."""
    import inspect

    from hydra.utils import get_class

    errors = []
    for k, c in enumerate(cfg.reward.components):
        params = OmegaConf.to_container(c.params, resolve=True)
        try:
            inspect.signature(get_class(c._target_)).bind(**params)
        except TypeError as e:
            errors.append(f"reward.components[{k}].params={params!r}: {c._target_} {e}")
    return errors


def _require(errors: List[str], ok: bool, key: str, value: Any, why: str) -> None:
    if not ok:
        errors.append(f"{key}={value!r}: {why}")


def validate(cfg: DictConfig) -> None:
    """Checks a composed config beyond types: ranges, cross-field rules, importable ``_target_``s.

    Raises ConfigError listing every problem, each as ``key=value: why``.
    """
    errors: List[str] = []
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
    _require(errors, r.device.value == "cuda" or r.num_gpus_per_worker == 0, "rollout.num_gpus_per_worker",
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
    rw = cfg.reward
    _require(errors, rw.replicas >= 1, "reward.replicas", rw.replicas, "must be >= 1")
    _require(errors, rw.batch_size >= 1, "reward.batch_size", rw.batch_size, "must be >= 1")
    for k, c in enumerate(rw.components):
        _require(errors, c.timeout_s > 0, f"reward.components[{k}].timeout_s", c.timeout_s, "must be > 0")
        _require(errors, c.scope in (None, "turn", "dialogue"), f"reward.components[{k}].scope", c.scope,
                 "must be turn or dialogue")
    target_errors = _check_targets(cfg)
    errors += target_errors
    if not any(e.startswith("simulator._target_") for e in target_errors):
        try:
            from antiphon.dialogue import simulator_factory

            simulator_factory(OmegaConf.to_container(cfg.simulator, resolve=True, enum_to_str=True), m.sample_rate)
        except ValueError as e:
            errors.append(str(e))
    if not target_errors:
        errors += _check_component_params(cfg)
    if errors:
        raise ConfigError("invalid config:\n  " + "\n  ".join(errors))


def to_plain(node: Any) -> Any:
    """A resolved config node as plain dicts/lists/strings (enums by name): what crosses to actors."""
    return OmegaConf.to_container(node, resolve=True, enum_to_str=True)
