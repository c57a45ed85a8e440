"""The learner's copy of the policy: transformers Qwen2-Audio, per-token log-probs, weights to broadcast.

Log-probs are those of the *sampling* distribution the rollout engine used: logits scaled by the
temperature with the structural tokens masked out (the engine reports ``processed_logprobs`` under
the same mask), so behaviour and learner policies are the same distribution.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from antiphon.model.chat import expand_audio_placeholders
from antiphon.model.tokens import structural_token_ids
from antiphon.model.weights import to_checkpoint_state_dict

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Sample:
    """One sequence to score: prompt ids (one ``<|AUDIO|>`` per clip), its clips, and the tokens to score."""

    prompt_ids: List[int]
    completion_ids: List[int]
    audio: List[np.ndarray] = field(default_factory=list)  # float32 mono at the policy's sample rate


class PolicyModel:
    def __init__(self, path: str | Path, device: str = "cpu", dtype: str = "float32", temperature: float = 1.0):
        from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

        self.path = Path(path)
        self.device = torch.device(device)
        self.autocast_dtype = _DTYPES[dtype]
        # Master weights stay fp32; lower precision is applied through autocast on accelerators.
        self.model = Qwen2AudioForConditionalGeneration.from_pretrained(
            self.path, dtype=torch.float32).to(self.device)
        self.processor = AutoProcessor.from_pretrained(self.path)
        self.tokenizer = self.processor.tokenizer
        self.feature_extractor = self.processor.feature_extractor
        self.sample_rate = self.feature_extractor.sampling_rate
        self.audio_token_id = self.model.config.audio_token_id
        self.temperature = float(temperature)
        self.vocab_size = self.model.config.text_config.vocab_size
        banned = torch.zeros(self.vocab_size, dtype=torch.bool)
        banned[structural_token_ids(self.tokenizer)] = True
        banned[len(self.tokenizer):] = True  # spare embedding rows no token maps to
        self.banned = banned.to(self.device)

    # -- inputs ---------------------------------------------------------------------------------
    def _features(self, clips: Sequence[np.ndarray]):
        feats = self.feature_extractor(list(clips), sampling_rate=self.sample_rate, return_attention_mask=True,
                                       padding="max_length", return_tensors="pt")
        mask = feats["attention_mask"]
        lengths = mask.sum(-1)
        counts = ((((lengths - 1) // 2 + 1) - 2) // 2 + 1).tolist()
        return feats["input_features"], mask, counts

    def build_batch(self, samples: Sequence[Sample]) -> Dict[str, torch.Tensor]:
        """Right-padded expanded ids, attention mask, audio features, and where each completion sits."""
        clips = [c for s in samples for c in s.audio]
        counts: List[int] = []
        feats = fmask = None
        if clips:
            feats, fmask, counts = self._features(clips)
        seqs, starts = [], []
        k = 0
        for s in samples:
            n = len(s.audio)
            prompt = expand_audio_placeholders(s.prompt_ids, self.audio_token_id, counts[k:k + n])
            k += n
            starts.append(len(prompt))
            seqs.append(prompt + list(s.completion_ids))
        width = max(len(x) for x in seqs)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        attn = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, x in enumerate(seqs):
            input_ids[i, :len(x)] = torch.tensor(x)
            attn[i, :len(x)] = 1
        batch = {"input_ids": input_ids, "attention_mask": attn,
                 "completion_start": torch.tensor(starts), "completion_len": torch.tensor(
                     [len(s.completion_ids) for s in samples])}
        if feats is not None:
            batch["input_features"], batch["feature_attention_mask"] = feats, fmask
        return batch

    # -- forward --------------------------------------------------------------------------------
    def forward_logprobs(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Log-prob of every next token [B, T-1] under the sampling distribution (differentiable)."""
        inputs = {k: v.to(self.device) for k, v in batch.items()
                  if k in ("input_ids", "attention_mask", "input_features", "feature_attention_mask")}
        with torch.autocast(self.device.type, dtype=self.autocast_dtype,
                            enabled=self.autocast_dtype != torch.float32):
            logits = self.model(**inputs, use_cache=False).logits[:, :-1]
        logits = logits.float() / self.temperature
        logits = logits.masked_fill(self.banned, float("-inf"))
        logp = torch.log_softmax(logits, dim=-1)
        targets = inputs["input_ids"][:, 1:]
        # Targets that are banned (e.g. a pad or placeholder position) would give -inf; zero them here
        # so masks downstream decide what counts, and no NaN reaches a gradient.
        out = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        return out.masked_fill(self.banned[targets], 0.0)

    @torch.no_grad()
    def completion_logprobs(self, samples: Sequence[Sample]) -> List[np.ndarray]:
        """Per-token log-probs of each sample's completion tokens (what the rollout engine reports)."""
        self.model.eval()
        batch = self.build_batch(samples)
        logp = self.forward_logprobs(batch).cpu()
        out = []
        for i, (start, n) in enumerate(zip(batch["completion_start"].tolist(), batch["completion_len"].tolist())):
            out.append(logp[i, start - 1:start - 1 + n].numpy().astype(np.float64))
        return out

    # -- weights --------------------------------------------------------------------------------
    def state_dict_for_rollout(self) -> Dict[str, torch.Tensor]:
        """Weights in checkpoint naming: what rollout engines (vLLM) and ``from_pretrained`` load."""
        sd = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in self.model.state_dict().items()}
        return to_checkpoint_state_dict(sd)

    def save_pretrained(self, out_dir: str | Path) -> Path:
        """A directory that transformers and vLLM load directly (config, weights, tokenizer, processor)."""
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.model.config.save_pretrained(out)
        self.model.generation_config.save_pretrained(out)
        save_file(self.state_dict_for_rollout(), str(out / "model.safetensors"), metadata={"format": "pt"})
        self.processor.save_pretrained(out)
        return out
