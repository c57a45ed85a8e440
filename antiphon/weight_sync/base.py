"""The weight-sync interface and the registry of transports (``learner.weight_sync``)."""
from __future__ import annotations

import abc
from typing import Any, Dict, Mapping

WeightHandle = Dict[str, Any]  # {"kind": ..., "version": int, ...transport fields}


class WeightSyncUnavailable(RuntimeError):
    """The configured transport cannot run here; the message names the setting and what it needs."""


class WeightSender(abc.ABC):
    """Learner side. ``publish`` must not block on the receivers."""

    kind: str

    @abc.abstractmethod
    def publish(self, state_dict: Mapping[str, Any], version: int) -> WeightHandle:
        """Makes ``state_dict`` available to every receiver; returns the handle they read it with."""

    def close(self) -> None:
        """Frees what the last publish holds."""


def sender(kind: str) -> WeightSender:
    if kind == "object_store":
        from antiphon.weight_sync.object_store import ObjectStoreSender

        return ObjectStoreSender()
    if kind == "nccl":
        from antiphon.weight_sync.nccl import NcclSender

        return NcclSender()
    raise ValueError(f"learner.weight_sync: {kind!r} is not a weight transport (object_store, nccl)")


def receive(handle: WeightHandle) -> Dict[str, Any]:
    """Worker side: the state dict a handle points at."""
    kind = handle.get("kind") if isinstance(handle, dict) else None
    if kind == "object_store":
        from antiphon.weight_sync.object_store import receive_object_store

        return receive_object_store(handle)
    if kind == "nccl":
        from antiphon.weight_sync.nccl import receive_nccl

        return receive_nccl(handle)
    raise ValueError(f"weight handle: unknown kind {kind!r}")
