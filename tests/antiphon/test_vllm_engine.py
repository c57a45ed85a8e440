"""The one vLLM bring-up: environment and engine arguments for the rollout engine and the LLM user."""
from __future__ import annotations

import os

import pytest

from actors.engine import engine_env, engine_spec
from antiphon.config import compose
from antiphon.vllm_engine import CPU_ENV_DEFAULTS, EngineSpec, vllm_env


def test_cpu_environment_and_user_additions():
    env = vllm_env("cpu", kv_cache_gib=2.4, log_level="info", extra={"OMP_NUM_THREADS": 2})
    assert env == {**CPU_ENV_DEFAULTS, "VLLM_LOGGING_LEVEL": "INFO", "VLLM_CPU_KVCACHE_SPACE": "2",
                   "OMP_NUM_THREADS": "2"}
    assert vllm_env("cpu", kv_cache_gib=0.2)["VLLM_CPU_KVCACHE_SPACE"] == "1"  # whole GiB, at least one
    assert vllm_env("cuda") == {"VLLM_LOGGING_LEVEL": "ERROR"}
    assert vllm_env("cpu", extra={"VLLM_CPU_OMP_THREADS_BIND": "0-1"})["VLLM_CPU_OMP_THREADS_BIND"] == "0-1"
    with pytest.raises(ValueError, match="device='tpu'"):
        vllm_env("tpu")


def test_engine_arguments_shared_by_every_engine():
    cpu = EngineSpec("/m", "cpu", "float32", max_model_len=1024, seed=3, extra_args={"language_model_only": True})
    args = cpu.engine_args()
    assert args["max_num_batched_tokens"] == 2048 * 4 and args["distributed_executor_backend"] == "uni"
    assert args["enable_prefix_caching"] and args["disable_log_stats"] and args["language_model_only"]
    gpu = EngineSpec("/m", "cuda", "bfloat16", max_model_len=4096, seed=0, tensor_parallel_size=2)
    assert gpu.engine_args()["max_num_batched_tokens"] == 4096
    assert gpu.engine_args()["distributed_executor_backend"] is None  # tensor-parallel: vLLM picks


def test_the_rollout_engine_is_built_from_config():
    cfg = compose(["rollout.kv_cache_gib=2", "+rollout.env.OMP_NUM_THREADS=1"])
    rollout, model = cfg.rollout, cfg.model
    from omegaconf import OmegaConf

    r, m = OmegaConf.to_container(rollout, resolve=True), OmegaConf.to_container(model, resolve=True)
    spec = engine_spec("/tiny", r, m, seed=5)
    assert spec.environment() == engine_env(r)
    assert engine_env(r)["VLLM_CPU_KVCACHE_SPACE"] == "2" and engine_env(r)["OMP_NUM_THREADS"] == "1"
    args = spec.engine_args()
    assert (args["model"], args["seed"], args["max_model_len"]) == ("/tiny", 5, m["max_model_len"])
    assert args["logprobs_mode"] == "processed_logprobs"
    assert args["limit_mm_per_prompt"] == {"audio": r["max_audio_clips_per_prompt"]}
    assert args["enable_mm_embeds"] == (r["audio_input"] == "embeddings")


def test_building_the_spec_and_environment_does_not_touch_the_process():
    before = dict(os.environ)
    EngineSpec("/m", "cpu", "float32", 512, 0).environment()
    engine_env({"device": "cpu", "kv_cache_gib": 1})
    assert dict(os.environ) == before


def test_the_rollout_engine_takes_the_schema_dataclasses_or_mappings():
    import dataclasses

    from actors.engine import RolloutEngine
    from antiphon.config import to_dataclass

    cfg = compose(["rollout.audio_input=waveform"])
    rollout, model = to_dataclass(cfg.rollout), to_dataclass(cfg.model)
    for r, m in [(rollout, model), (dataclasses.asdict(rollout), dataclasses.asdict(model))]:
        engine = RolloutEngine("/tiny", r, m, seed=1)  # not started: no vLLM here
        try:
            assert engine.sample_rate == model.sample_rate and not engine._embed_audio
            spec = engine_spec("/tiny", r, m, seed=1)
            assert spec.device == "cpu" and spec.dtype == str(model.dtype) and spec.environment() == engine_env(r)
            assert spec.engine_args()["enable_mm_embeds"] is False
        finally:
            engine.shutdown()
