"""Weight broadcast from the learner to the rollout engines, as plug-ins.

The learner ``publish``es a state dict (checkpoint naming) under a version and gets a small *handle*;
whoever orchestrates hands the handle to every rollout worker, and each worker ``receive``s the state
dict from it and loads it in place. Only the handle travels through Ray calls, so a transport may move
the tensors any way it likes (the object store on CPU, NCCL between GPUs).
"""
from __future__ import annotations

from antiphon.weight_sync.base import WeightHandle, WeightSender, WeightSyncUnavailable, receive, sender

__all__ = ["WeightHandle", "WeightSender", "WeightSyncUnavailable", "receive", "sender"]
