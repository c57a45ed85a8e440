"""A generation engine over the learner's transformers policy, for the dialogue loop.

``antiphon/dialogue_loop.py`` talks to its engine through ``engine.generate(GenerationRequest) ->
GenerationResult``; the rollout workers answer with vLLM. This engine answers with the learner's own
``PolicyModel``, so the learner can hold real dialogues with the weights it trains (the cold start's
format check, evaluation) without a rollout worker.

It samples the distribution the rollout engine samples and the learner scores: logits over the
temperature with the structural tokens and the spare vocabulary rows never drawn
(``PolicyModel.banned``), audio through the front end the policy trains through
(``PolicyModel.frontend``). Requests that arrive together (many dialogues in flight) are generated as
one batch: one left-padded prefill, then one token per step for every row over the KV cache. Each
dialogue may sample with a random generator of its own (``session``), so what it draws does not depend
on which dialogues run beside it (up to float rounding across batch shapes).
"""
from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import List, Sequence, Tuple

import numpy as np
import torch

from antiphon.generation import GenerationRequest, GenerationResult
from antiphon.model.audio import clip_key
from antiphon.model.chat import expand_with_positions
from learner.policy import PolicyModel


class HFEngine:
    """``generate`` over ``policy``; ``max_new_tokens``: a request's limit when it names none.

    ``version`` is reported as every result's weight version. Clip embeddings are cached by content (the
    dialogue loop resends every earlier clip with each request): call ``set_version`` after the weights
    change, which also empties that cache. At most ``max_batch`` requests are generated together.
    """

    def __init__(self, policy: PolicyModel, max_new_tokens: int, seed: int = 0, version: int = 0,
                 max_batch: int = 32, max_cached_clips: int = 4096):
        self.policy = policy
        self.max_new_tokens = int(max_new_tokens)
        self.version = int(version)
        self.generator = torch.Generator().manual_seed(int(seed))
        self.max_batch = max(1, int(max_batch))
        self.max_cached_clips = int(max_cached_clips)
        self._clips: "OrderedDict[bytes, torch.Tensor]" = OrderedDict()
        eos = policy.model.generation_config.eos_token_id  # ends every request, as in the rollout engine
        self._eos = {eos} if isinstance(eos, int) else set(eos or [])
        self._queue: List[Tuple[GenerationRequest, torch.Generator, asyncio.Future]] = []
        self._runner = None

    def session(self, seed: int) -> "_Session":
        """The same engine with its own random generator (one per dialogue: reproducible in any order)."""
        return _Session(self, torch.Generator().manual_seed(int(seed)))

    def set_version(self, version: int) -> None:
        self.version = int(version)
        self._clips.clear()

    async def generate(self, req: GenerationRequest) -> GenerationResult:
        return await self._submit(req, self.generator)

    # -- batching -----------------------------------------------------------------------------------
    async def _submit(self, req: GenerationRequest, generator: torch.Generator) -> GenerationResult:
        fut = asyncio.get_running_loop().create_future()
        self._queue.append((req, generator, fut))
        if self._runner is None or self._runner.done():
            self._runner = asyncio.ensure_future(self._run())
        return await fut

    async def _run(self) -> None:
        while self._queue:
            await asyncio.sleep(0)  # every dialogue ready to ask joins this batch
            wave, self._queue = self._queue[:self.max_batch], self._queue[self.max_batch:]
            try:
                # In a thread: simulators and voices keep working while the policy generates.
                results = await asyncio.to_thread(self.sample_batch, [w[0] for w in wave], [w[1] for w in wave])
            except Exception as e:  # every request of the batch fails with the cause
                for _, _, fut in wave:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            for (_, _, fut), res in zip(wave, results):
                if not fut.done():
                    fut.set_result(res)

    # -- the work -----------------------------------------------------------------------------------
    def _embed_clips(self, clips: List[np.ndarray]) -> List[torch.Tensor]:
        keys = [clip_key(c) for c in clips]
        uniq = list(dict.fromkeys(keys))
        todo = [k for k in uniq if k not in self._clips]
        if todo:
            first = {k: clips[keys.index(k)] for k in todo}
            for k, e in zip(todo, self.policy.frontend([first[k] for k in todo])):
                self._clips[k] = e.detach()
        out = []
        for k in keys:
            self._clips.move_to_end(k)
            out.append(self._clips[k])
        while len(self._clips) > self.max_cached_clips:
            self._clips.popitem(last=False)
        return out

    def _prompt_embeds(self, req: GenerationRequest) -> torch.Tensor:
        """[tokens, hidden] input embeddings of one prompt, audio placeholders expanded and filled."""
        p = self.policy
        n_ph = sum(1 for t in req.prompt_ids if t == p.audio_token_id)
        if n_ph != len(req.audio):
            raise ValueError(f"request {req.request_id}: prompt_ids hold {n_ph} <|AUDIO|> placeholders but "
                             f"audio has {len(req.audio)} clips")
        counts = [p.frontend.num_embeddings(len(c)) for c in req.audio]
        ids, _ = expand_with_positions(list(req.prompt_ids), p.audio_token_id, counts)
        ids_t = torch.tensor(ids, dtype=torch.long, device=p.device)
        embeds = p.model.get_input_embeddings()(ids_t)
        if req.audio:
            audio = torch.cat(self._embed_clips(list(req.audio)), dim=0).to(embeds.dtype)
            embeds = embeds.masked_scatter((ids_t == p.audio_token_id).unsqueeze(-1), audio)
        return embeds

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The sampling distribution's logits, as ``PolicyModel.forward`` computes them."""
        p = self.policy
        return (p.model.lm_head(hidden).float() / p.temperature).masked_fill(p.banned, float("-inf"))

    @torch.no_grad()
    def sample_batch(self, reqs: Sequence[GenerationRequest],
                     generators: Sequence[torch.Generator]) -> List[GenerationResult]:
        """Generates every request to its stop token or its limit, together (synchronous)."""
        p = self.policy
        lm = p.model.model.language_model
        limits = [self.max_new_tokens if r.max_new_tokens is None else int(r.max_new_tokens) for r in reqs]
        stops = [self._eos | {int(t) for t in r.stop_token_ids} for r in reqs]
        tokens: List[List[int]] = [[] for _ in reqs]
        logprobs: List[List[float]] = [[] for _ in reqs]
        finish = ["length"] * len(reqs)
        live = [n > 0 for n in limits]
        was_training = p.model.training
        p.model.eval()
        try:
            with torch.autocast(p.device.type, dtype=p.autocast_dtype, enabled=p.autocast_dtype != torch.float32):
                embeds = [self._prompt_embeds(r) for r in reqs]
                n_prompt = [e.shape[0] for e in embeds]
                width = max(n_prompt)
                # Left padding: every row's next token sits in the last column.
                x = embeds[0].new_zeros((len(reqs), width, embeds[0].shape[1]))
                attn = torch.zeros((len(reqs), width), dtype=torch.long, device=p.device)
                for i, e in enumerate(embeds):
                    x[i, width - e.shape[0]:] = e
                    attn[i, width - e.shape[0]:] = 1
                pos = (attn.cumsum(-1) - 1).clamp_min(0)
                out = lm(inputs_embeds=x, attention_mask=attn, position_ids=pos, use_cache=True)
                nxt_pos = pos[:, -1:] + 1
                while any(live):
                    logp = torch.log_softmax(self._logits(out.last_hidden_state[:, -1]), dim=-1).cpu()
                    nxt = torch.full((len(reqs), 1), p.tokenizer.pad_token_id, dtype=torch.long)
                    for i in range(len(reqs)):
                        if not live[i]:
                            continue
                        t = int(torch.multinomial(logp[i].exp(), 1, generator=generators[i]))
                        tokens[i].append(t)
                        logprobs[i].append(float(logp[i, t]))
                        nxt[i, 0] = t
                        if t in stops[i]:
                            finish[i], live[i] = "stop", False
                        elif len(tokens[i]) >= limits[i]:
                            live[i] = False
                    if not any(live):
                        break
                    # Finished rows ride along (their outputs are ignored) so the cache stays one batch.
                    attn = torch.cat([attn, attn.new_ones((len(reqs), 1))], dim=1)
                    out = lm(input_ids=nxt.to(p.device), attention_mask=attn, position_ids=nxt_pos,
                             past_key_values=out.past_key_values, use_cache=True)
                    nxt_pos = nxt_pos + 1
        finally:
            p.model.train(was_training)
        return [GenerationResult(r.request_id, tokens[i], logprobs[i], self.version, finish[i], n_prompt[i])
                for i, r in enumerate(reqs)]


class _Session:
    """``HFEngine.session``: the engine's batches, with a random generator of its own."""

    def __init__(self, engine: HFEngine, generator: torch.Generator):
        self.engine, self.generator = engine, generator

    async def generate(self, req: GenerationRequest) -> GenerationResult:
        return await self.engine._submit(req, self.generator)
