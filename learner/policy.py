"""The learner's copy of the policy: transformers Qwen2-Audio, per-token log-probs, weights to broadcast.

Log-probs are those of the *sampling* distribution the rollout engine used: logits scaled by the
temperature with the structural tokens masked out (the engine reports ``processed_logprobs`` under
the same mask), so behaviour and learner policies are the same distribution.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from antiphon.config.schema import DType
from antiphon.model.audio import AudioFrontend
from antiphon.model.chat import expand_with_positions
from antiphon.model.tokens import structural_token_ids
from antiphon.model.weights import to_checkpoint_state_dict
from learner.masks import spread

_DTYPES = {DType.float32: torch.float32, DType.bfloat16: torch.bfloat16, DType.float16: torch.float16}


@dataclass
class Sample:
    """One sequence to score: prompt ids (one ``<|AUDIO|>`` per clip), its clips, and the tokens to score."""

    prompt_ids: List[int]
    completion_ids: List[int]
    audio: List[np.ndarray] = field(default_factory=list)  # float32 mono at the policy's sample rate


class PolicyModel:
    def __init__(self, path: str | Path, device: str = "cpu", dtype: DType | str = DType.float32,
                 temperature: float = 1.0):
        from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

        self.path = Path(path)
        self.device = torch.device(device)
        self.autocast_dtype = _DTYPES[DType(dtype)]
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
        self.frontend = AudioFrontend(self.model.model.audio_tower, self.model.model.multi_modal_projector,
                                      self.feature_extractor)

    # -- inputs ---------------------------------------------------------------------------------
    def build_batch(self, samples: Sequence[Sample]) -> Dict[str, Any]:
        """Right-padded expanded ids, attention mask, the clips in order, and where each completion token sits.

        Audio placeholders may appear anywhere (a dialogue's later user turns are in the completion);
        ``completion_pos[i]`` holds the expanded position of each completion token of sample i.
        """
        seqs, comp_pos, clips = [], [], []
        for s in samples:
            counts = [self.frontend.num_embeddings(len(c)) for c in s.audio]
            full, pos = expand_with_positions(list(s.prompt_ids) + list(s.completion_ids), self.audio_token_id,
                                              counts)
            seqs.append(full)
            comp_pos.append(pos[len(s.prompt_ids):])
            clips.extend(s.audio)
        width = max(len(x) for x in seqs)
        input_ids = torch.full((len(seqs), width), self.tokenizer.pad_token_id, dtype=torch.long)
        attn = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, x in enumerate(seqs):
            input_ids[i, :len(x)] = torch.tensor(x)
            attn[i, :len(x)] = 1
        return {"input_ids": input_ids, "attention_mask": attn, "clips": clips, "completion_pos": comp_pos}

    # -- forward --------------------------------------------------------------------------------
    def forward_logits(self, batch: Dict[str, Any]) -> torch.Tensor:
        """Next-token logits [B, T-1, V] of the sampling distribution: temperature applied, structural tokens -inf."""
        return self.forward(batch)[0]

    def forward(self, batch: Dict[str, Any], where: Optional[torch.Tensor] = None):
        """(logits [B, T-1, V] as in ``forward_logits``, hidden states [B, T-1, H] that predict them).

        ``where`` ([B, T-1] bool): logits only at those positions, ``[N, V]`` in row-major order. The
        losses read only policy tokens -- a small share of a spoken dialogue's positions -- and on a real
        vocabulary (~150k) the full logits tensor would dominate the learner's memory."""
        input_ids = batch["input_ids"].to(self.device)
        attn = batch["attention_mask"].to(self.device)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype,
                            enabled=self.autocast_dtype != torch.float32):
            embeds = self.model.get_input_embeddings()(input_ids)
            if batch["clips"]:
                # Audio embeddings over each clip's own frames (see antiphon.model.audio), in prompt order;
                # a learner Batch brings the clips' log-mel features, computed once for all its passes.
                audio = self.frontend(batch["clips"], batch.get("audio_features"))
                audio = torch.cat(audio, dim=0).to(embeds.dtype)
                slots = (input_ids == self.audio_token_id).unsqueeze(-1)
                if int(slots.sum()) != audio.shape[0]:
                    raise ValueError(f"{int(slots.sum())} audio placeholders for {audio.shape[0]} audio embeddings")
                embeds = embeds.masked_scatter(slots, audio)
            # Rows are right-padded (build_batch): under the causal mask no real position sees a pad, so the
            # padding mask changes nothing we read -- and without it attention takes its fused causal path.
            right_padded = bool((attn[:, :-1] >= attn[:, 1:]).all())
            hidden = self.model.model.language_model(inputs_embeds=embeds,
                                                     attention_mask=None if right_padded else attn,
                                                     use_cache=False).last_hidden_state
            hidden = hidden[:, :-1]
            logits = self.model.lm_head(hidden if where is None else hidden[where.to(hidden.device)])
        logits = logits.float() / self.temperature
        return logits.masked_fill(self.banned, float("-inf")), hidden.float()

    def token_logprobs(self, logits: torch.Tensor, batch: Dict[str, Any],
                       where: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Log-prob [B, T-1] of each next token given ``forward`` logits (banned targets read 0); with the
        ``where`` that ``forward`` was given, positions outside it read 0."""
        logp = torch.log_softmax(logits, dim=-1)
        targets = batch["input_ids"][:, 1:].to(self.device)
        if where is not None:
            targets = targets[where.to(self.device)]
        out = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1).masked_fill(self.banned[targets], 0.0)
        return out if where is None else spread(out, where)

    def forward_logprobs(self, batch: Dict[str, Any]) -> torch.Tensor:
        """Log-prob of every next token [B, T-1] under the sampling distribution (differentiable)."""
        # Targets that are banned (e.g. a pad or placeholder position) would give -inf; they read 0 so
        # masks downstream decide what counts, and no NaN reaches a gradient.
        return self.token_logprobs(self.forward_logits(batch), batch)

    @torch.no_grad()
    def completion_logprobs(self, samples: Sequence[Sample]) -> List[np.ndarray]:
        """Per-token log-probs of each sample's completion tokens (what the rollout engine reports)."""
        self.model.eval()
        batch = self.build_batch(samples)
        logp = self.forward_logprobs(batch).cpu()
        # logp[:, j] scores the token at expanded position j + 1.
        return [logp[i, torch.tensor(pos, dtype=torch.long) - 1].numpy().astype(np.float64)
                for i, pos in enumerate(batch["completion_pos"])]

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


def trajectory_sample(traj) -> Sample:
    """A whole dialogue (``antiphon.protocol.Trajectory``) as one scored sequence: every token after the
    first, with the clips of the user turns the policy heard, in order. Compare at ``policy_mask``."""
    ids = [int(x) for x in traj.token_ids]
    clips = [t.audio.to_float() for t in traj.turns if t.role == "user" and t.end > t.start and t.audio is not None]
    return Sample(prompt_ids=ids[:1], completion_ids=ids[1:], audio=clips)


def behaviour_gap(policy: "PolicyModel", trajs) -> float:
    """Largest |behaviour log-prob - learner log-prob| over the policy tokens of the given trajectories."""
    worst = 0.0
    for traj, lp in zip(trajs, policy.completion_logprobs([trajectory_sample(t) for t in trajs])):
        mask = traj.policy_mask[1:].astype(bool)
        if mask.any():
            worst = max(worst, float(np.abs(lp[mask] - traj.logprobs[1:][mask]).max()))
    return worst
