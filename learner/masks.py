"""Policy-token masks over batch-major ``[B, T]`` tensors, shared by the advantage estimators and the losses.

A mask arrives as 0/1 floats, ints or bools; every reader turns it into a bool tensor on the data's device
the same way, and reads masked positions through ``torch.where`` so whatever they hold (NaN, inf) never
reaches a value or a gradient.
"""
from __future__ import annotations

import torch
from torch import Tensor


def bool_mask(mask: Tensor, like: Tensor) -> Tensor:
    """``mask != 0`` on ``like``'s device; its shape must be ``like``'s (``torch.where`` would broadcast a
    mis-shaped mask silently)."""
    if mask.shape != like.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} != tensor shape {tuple(like.shape)}")
    return mask.to(device=like.device) != 0


def masked(x: Tensor, m: Tensor) -> Tensor:
    """``x`` on policy tokens, 0 elsewhere; gradient to masked positions is exactly 0."""
    return torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device))


def spread(values: Tensor, where: Tensor) -> Tensor:
    """Values computed at the ``where`` positions only (``[N, ...]``, in row-major order) back on the
    ``where`` grid (``[B, T, ...]``), 0 elsewhere; differentiable w.r.t. ``values``."""
    out = torch.zeros(tuple(where.shape) + tuple(values.shape[1:]), dtype=values.dtype, device=values.device)
    return out.index_put((*where.to(values.device).nonzero(as_tuple=True),), values)
