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
    errors += _check_learner(cfg.learner, r)
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


def _check_learner(lr: DictConfig, rollout: DictConfig) -> List[str]:
    errors: List[str] = []
    choices = {"mode": ("async", "sync"), "weight_sync": ("object_store", "nccl"), "algo": ("ppo", "appo"),
               "estimator": ("gae", "group"), "group_scale": ("none", "std"), "group_credit": ("turn", "dialogue"),
               "reward_norm": ("none", "batch"),
               "off_policy": ("decoupled", "none"), "behav_mode": ("truncate", "mask"), "kl_estimator": ("k1", "k3"),
               "loss_agg": ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum")}
    for key, allowed in choices.items():
        _require(errors, lr[key] in allowed, f"learner.{key}", lr[key], f"must be one of {', '.join(allowed)}")
    for key in ("steps", "batch_size", "group_size", "ppo_epochs", "minibatches", "broadcast_every",
                "checkpoint_every", "log_samples_every", "num_threads", "warmup_steps"):
        _require(errors, lr[key] >= 1, f"learner.{key}", lr[key], "must be >= 1")
    _require(errors, lr.max_staleness >= 0, "learner.max_staleness", lr.max_staleness, "must be >= 0")
    _require(errors, lr.batch_size % lr.group_size == 0, "learner.batch_size", lr.batch_size,
             f"must be a multiple of learner.group_size={lr.group_size} (a batch holds whole groups)")
    _require(errors, lr.batch_size % lr.minibatches == 0, "learner.minibatches", lr.minibatches,
             f"must divide learner.batch_size={lr.batch_size}")
    _require(errors, lr.estimator != "group" or lr.group_size >= 2, "learner.group_size", lr.group_size,
             "must be >= 2 with learner.estimator=group (a lone rollout has no baseline)")
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
    _require(errors, lr.mode == "sync" or lr.max_staleness == 0 or lr.off_policy != "none" or lr.algo == "appo",
             "learner.off_policy", lr.off_policy,
             f"learner.max_staleness={lr.max_staleness} trains on stale tokens and needs an off-policy correction "
             "(learner.off_policy=decoupled or learner.algo=appo), or set learner.max_staleness=0")
    if lr.weight_sync == "nccl":
        from antiphon.weight_sync.nccl import UNAVAILABLE

        errors.append(f"learner.weight_sync='nccl': {UNAVAILABLE.split(' is ', 1)[1]}")
    _require(errors, lr.device.value == "cuda" or lr.num_gpus == 0, "learner.num_gpus", lr.num_gpus,
             "must be 0 when learner.device=cpu")
    cs = lr.cold_start
    for key in ("dialogues", "epochs", "batch_size"):
        _require(errors, cs[key] >= 1, f"learner.cold_start.{key}", cs[key], "must be >= 1")
    _require(errors, cs.lr > 0, "learner.cold_start.lr", cs.lr, "must be > 0")
    return errors


def to_plain(node: Any) -> Any:
    """A resolved config node as plain dicts/lists/strings (enums by name): what crosses to actors."""
    return OmegaConf.to_container(node, resolve=True, enum_to_str=True)
