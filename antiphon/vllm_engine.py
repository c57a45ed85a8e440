"""One vLLM engine bring-up for every part that runs an engine: the rollout workers (``actors/engine.py``)
and the LLM user simulator's local backend (``simulator/llm.py``).

Two things are shared: the process environment vLLM reads at import and at engine construction (on CPU:
the single-process engine core, no thread pinning, the KV-cache size; see docs/cpu-stack.md, "vLLM on
CPU"), and the engine arguments every engine here uses (prefix caching on, whole prompts in one
scheduler step, the uniprocess executor unless tensor-parallel on GPUs). What one use adds (audio
limits, the log-prob mode, text only) is passed as ``extra_args``.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import os
import queue
import threading
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Dict, Mapping, Optional

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


def start_engine(spec: EngineSpec, keep_env: bool = False, in_process: bool = False):
    """Builds the engine for ``spec`` (blocking: call it off the event loop, or before serving).

    ``in_process=False``: vLLM's ``AsyncLLM``, whose engine core runs in a process of its own (the LLM
    user simulator: it may share a process with a rollout engine, and two engine cores in one process
    would share vLLM's process-wide state). ``True``: an ``InProcessEngine`` -- vLLM's ``LLMEngine``
    stepped on a thread of this process, with the same async surface; a rollout worker's engine, saving
    the engine-core process's start-up (it imports vLLM, torch and transformers again: ~17 s of CPU
    per engine start on 2 cores, measured) and the hand-off of every request and output between processes.

    The environment is set while vLLM is imported and the engine built (the engine reads it then).
    ``keep_env=True`` leaves it set, for a process that exists for this engine (a rollout worker);
    ``False`` restores the previous values afterwards, for an engine started inside a process that does
    other work (the LLM user inside a rollout worker keeps the worker's settings intact).
    """
    env = spec.environment()
    with _ENV_LOCK:
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        if in_process:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # LLMEngine's core in this process
        try:
            if in_process:
                from vllm.engine.arg_utils import EngineArgs
                from vllm.v1.engine.llm_engine import LLMEngine

                return InProcessEngine(LLMEngine.from_engine_args(EngineArgs(**spec.engine_args())))
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


class EngineDead(RuntimeError):
    """The in-process engine stopped (shut down, or a step raised): nothing more is served."""


class InProcessEngine:
    """vLLM's ``LLMEngine`` on one thread of this process, with the part of ``AsyncLLM``'s surface the
    rollout uses: ``generate`` (yields the finished output), ``collective_rpc``, ``reset_prefix_cache``,
    ``reset_encoder_cache``, ``model_config``, ``shutdown``.

    ``LLMEngine`` is not thread-safe, so every call on it -- adding and aborting requests, RPCs, cache
    resets, steps -- runs on the engine thread: callers queue a function and await its result. The thread
    steps while requests are unfinished and otherwise sleeps until something is queued. A step that raises
    fails every waiting request and every later call with ``EngineDead`` naming the error."""

    def __init__(self, engine: Any):
        self._engine = engine
        self.model_config = engine.model_config
        self._calls: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        self._waiting: Dict[str, concurrent.futures.Future] = {}  # request id -> its final output
        self._dead: Optional[BaseException] = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="vllm-engine", daemon=True)
        self._thread.start()

    # -- the engine thread ---------------------------------------------------------------------------
    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                self._run_calls(block=not self._engine.has_unfinished_requests())
                if self._engine.has_unfinished_requests():
                    for out in self._engine.step():
                        if out.finished:
                            fut = self._waiting.pop(out.request_id, None)
                            if fut is not None and not fut.done():
                                fut.set_result(out)
        except BaseException as e:  # noqa: BLE001 -- every waiter hears about it
            self._dead = e
        finally:
            err = self._dead_error()
            for fut in list(self._waiting.values()):
                if not fut.done():
                    fut.set_exception(err)
            self._waiting.clear()
            self._fail_queued()

    def _run_calls(self, block: bool) -> None:
        try:
            item = self._calls.get(timeout=0.5) if block else self._calls.get_nowait()
        except queue.Empty:
            return
        while item is not None:
            fn, fut = item
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn())
                except BaseException as e:  # noqa: BLE001 -- the caller gets it
                    fut.set_exception(e)
            try:
                item = self._calls.get_nowait()
            except queue.Empty:
                item = None

    # -- callers (any thread, any event loop) --------------------------------------------------------
    def _submit(self, fn: Callable[[], Any]) -> concurrent.futures.Future:
        fut: concurrent.futures.Future = concurrent.futures.Future()
        if self._dead is not None or self._stop.is_set() or not self._thread.is_alive():
            fut.set_exception(self._dead_error())
            return fut
        self._calls.put((fn, fut))
        if not self._thread.is_alive():  # it ended between the check and the put: nobody will run this
            self._fail_queued()
        return fut

    def _dead_error(self) -> EngineDead:
        if self._dead is None:
            return EngineDead("vLLM engine shut down")
        return EngineDead(f"vLLM engine stopped: {type(self._dead).__name__}: {self._dead}")

    def _fail_queued(self) -> None:
        err = self._dead_error()
        while True:
            try:
                _, fut = self._calls.get_nowait()
            except queue.Empty:
                return
            if not fut.done():
                fut.set_exception(err)

    async def _call(self, fn: Callable[[], Any]) -> Any:
        return await asyncio.wrap_future(self._submit(fn))

    async def generate(self, prompt: Any, params: Any, request_id: str) -> AsyncIterator[Any]:
        done: concurrent.futures.Future = concurrent.futures.Future()

        def add() -> None:
            if request_id in self._waiting:
                raise ValueError(f"request id {request_id!r} is already running")
            self._engine.add_request(request_id, prompt, params)
            self._waiting[request_id] = done

        await self._call(add)
        try:
            out = await asyncio.wrap_future(done)
        except asyncio.CancelledError:
            def abort() -> None:
                if self._waiting.pop(request_id, None) is not None:
                    self._engine.abort_request([request_id])

            self._submit(abort)
            raise
        yield out

    async def collective_rpc(self, method: str, timeout: Optional[float] = None, args: tuple = (),
                             kwargs: Optional[Dict[str, Any]] = None) -> Any:
        return await self._call(lambda: self._engine.collective_rpc(method, timeout, args, kwargs))

    async def reset_prefix_cache(self) -> bool:
        return await self._call(self._engine.reset_prefix_cache)

    async def reset_encoder_cache(self) -> None:
        return await self._call(self._engine.reset_encoder_cache)

    def shutdown(self, timeout_s: float = 60.0) -> None:
        """Stops the thread after its current step (failing waiting requests), then the engine core."""
        self._stop.set()
        self._calls.put((lambda: None, concurrent.futures.Future()))  # wakes a sleeping loop
        self._thread.join(timeout=timeout_s)
        if self._thread.is_alive():
            raise TimeoutError(f"vLLM engine thread still stepping after {timeout_s}s")
        self._engine.engine_core.shutdown()
