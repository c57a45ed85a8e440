"""The learner's checkpoint on disk, written and read in one place.

    <checkpoint>/policy/      the policy, loadable as it is by transformers and vLLM
    <checkpoint>/learner.pt   the critic, the optimiser and torch's RNG (tensors only: read with weights_only)
    <checkpoint>/state.json   the learner step, the reference policy's path, Python's and numpy's RNGs, and
                              what the learner process adds (version, trained trajectory ids, counters, config)

A checkpoint is written to ``<checkpoint>.tmp`` and renamed into place, so a crash mid-save leaves the
previous one intact.
"""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch


def policy_dir(ckpt: str | Path) -> Path:
    """Where a checkpoint keeps its policy (what rollout workers and a resumed learner load)."""
    return Path(ckpt) / "policy"


def read_checkpoint_state(ckpt: str | Path) -> Dict[str, Any]:
    """A checkpoint's ``state.json``: ``step``, ``reference_path``, and what the learner process added
    (``version``, ``trained_ids``, ``counts``, ...)."""
    return json.loads((Path(ckpt) / "state.json").read_text())


def save_checkpoint(out_dir: str | Path, policy, value_head: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    step: int, reference_path: str | Path, extra: Optional[Dict[str, Any]] = None) -> Path:
    """Writes the whole learner state (see the module docstring); returns the checkpoint directory."""
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    policy.save_pretrained(policy_dir(tmp))
    torch.save({"value_head": value_head.state_dict(), "optimizer": optimizer.state_dict(),
                "torch_rng": torch.get_rng_state()}, tmp / "learner.pt")
    np_state = np.random.get_state()
    state = {"step": int(step), "reference_path": str(reference_path),
             "python_rng": _jsonable(random.getstate()),
             "numpy_rng": [np_state[0], np_state[1].tolist(), *np_state[2:]], **(extra or {})}
    (tmp / "state.json").write_text(json.dumps(state))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def load_learner_state(ckpt: str | Path, value_head: torch.nn.Module, optimizer: torch.optim.Optimizer,
                       device: torch.device) -> int:
    """Restores the critic, the optimiser and every RNG from a checkpoint (the policy is loaded from
    :func:`policy_dir` by whoever builds it); returns the learner step it was saved at."""
    ckpt = Path(ckpt)
    blob = torch.load(ckpt / "learner.pt", map_location=device, weights_only=True)
    value_head.load_state_dict(blob["value_head"])
    optimizer.load_state_dict(blob["optimizer"])
    torch.set_rng_state(blob["torch_rng"])
    state = read_checkpoint_state(ckpt)
    random.setstate(_tupled(state["python_rng"]))
    n = state["numpy_rng"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), *n[2:]))
    return int(state["step"])


def _jsonable(x):
    return [_jsonable(v) for v in x] if isinstance(x, (tuple, list)) else x


def _tupled(x):
    return tuple(_tupled(v) for v in x) if isinstance(x, list) else x
