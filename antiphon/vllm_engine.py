"""One vLLM engine bring-up for every part that runs an engine: the rollout workers (``actors/engine.py``)
and the LLM user simulator's local backend (``simulator/llm.py``).

Two things are shared: the process environment vLLM reads at import and at engine construction (on CPU:
the single-process engine core, no thread pinning, the KV-cache size; see docs/cpu-stack.md, "vLLM on
CPU"), and the engine arguments every engine here uses (prefix caching on, whole prompts in one
scheduler step, the uniprocess executor unless tensor-parallel on GPUs). What one use adds (audio
limits, the log-prob mode, text only) is passed as ``extra_args``.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional

DEVICES = ("cpu", "cuda")

# On CPU the default thread binding ("auto") pins vLLM to one core and reserves another (20-70x slower on
# small machines), and the multiprocessing engine core only adds start-up for a model this size.
CPU_ENV_DEFAULTS = {
    "VLLM_TARGET_DEVICE": "cpu",
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
}

_ENV_LOCK = threading.Lock()  # one engine start at a time changes os.environ


def vllm_env(device: str, kv_cache_gib: float = 1.0, log_level: str = "ERROR",
             extra: Optional[Mapping[str, Any]] = None) -> Dict[str, str]:
    """The environment variables an engine on ``device`` needs, ``extra`` (the user's) merged last."""
    if str(device) not in DEVICES:
        raise ValueError(f"device={device!r}: expected one of {list(DEVICES)}")
    env: Dict[str, str] = {"VLLM_LOGGING_LEVEL": str(log_level).upper()}
    if str(device) == "cpu":
        env.update(CPU_ENV_DEFAULTS)
        env["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, int(round(float(kv_cache_gib)))))  # whole GiB
    env.update({str(k): str(v) for k, v in (extra or {}).items()})
    return env


@dataclass
class EngineSpec:
    """What an engine is built from. ``env`` and ``extra_args`` are the user's / the use's additions."""

    model_path: str
    device: str  # "cpu" | "cuda"
    dtype: str  # "float32", "bfloat16", "float16" or "auto"
    max_model_len: int
    seed: int
    max_num_seqs: int = 32
    enforce_eager: bool = True
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.85
    kv_cache_gib: float = 1.0  # CPU only
    log_level: str = "ERROR"
    env: Dict[str, str] = field(default_factory=dict)
    extra_args: Dict[str, Any] = field(default_factory=dict)

    @property
    def on_cpu(self) -> bool:
        return str(self.device) == "cpu"

    def environment(self) -> Dict[str, str]:
        return vllm_env(self.device, self.kv_cache_gib, self.log_level, self.env)

    def engine_args(self) -> Dict[str, Any]:
        """Keyword arguments of vLLM's ``AsyncEngineArgs``."""
        max_len, tp = int(self.max_model_len), int(self.tensor_parallel_size)
        return dict(
            model=str(self.model_path),
            dtype=str(self.dtype),
            max_model_len=max_len,
            max_num_seqs=int(self.max_num_seqs),
            # Whole prompts in one scheduler step; on CPU also avoids a sampler bug with split prompts.
            max_num_batched_tokens=max(max_len, 2048) * (4 if self.on_cpu else 1),
            enforce_eager=bool(self.enforce_eager),
            seed=int(self.seed),
            tensor_parallel_size=tp,
            gpu_memory_utilization=float(self.gpu_memory_utilization),
            distributed_executor_backend="uni" if self.on_cpu or tp == 1 else None,
            enable_prefix_caching=True,
            disable_log_stats=True,
            **self.extra_args,
        )


def start_engine(spec: EngineSpec, keep_env: bool = False):
    """Builds vLLM's ``AsyncLLM`` for ``spec`` (blocking: call it off the event loop, or before serving).

    The environment is set while vLLM is imported and the engine built (the engine reads it then).
    ``keep_env=True`` leaves it set, for a process that exists for this engine (a rollout worker);
    ``False`` restores the previous values afterwards, for an engine started inside a process that does
    other work (the LLM user inside a rollout worker keeps the worker's settings intact).
    """
    env = spec.environment()
    with _ENV_LOCK:
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            from vllm.engine.arg_utils import AsyncEngineArgs
            from vllm.v1.engine.async_llm import AsyncLLM

            return AsyncLLM.from_engine_args(AsyncEngineArgs(**spec.engine_args()))
        finally:
            if not keep_env:
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
