"""GPU path (not built yet): the learner's rank 0 broadcasts each tensor over an NCCL group that the
rollout engines join (vLLM's ``collective_rpc`` + a ``StatelessProcessGroup``), so weights go GPU to GPU
without touching host memory or the object store.

The interface is the one ``object_store`` implements; the handle would carry the version and the tensor
manifest (names, shapes, dtypes) so receivers can allocate before the broadcast. Until it is built and
tested on a GPU cluster, selecting it fails at config validation with this message.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping

from antiphon.weight_sync.base import WeightHandle, WeightSender, WeightSyncUnavailable

UNAVAILABLE = ("learner.weight_sync=nccl is not implemented in this build (no GPU machine was available to test "
               "it); use learner.weight_sync=object_store, which works on CPU and GPU clusters")


class NcclSender(WeightSender):
    kind = "nccl"

    def __init__(self):
        raise WeightSyncUnavailable(UNAVAILABLE)

    def publish(self, state_dict: Mapping[str, Any], version: int) -> WeightHandle:
        raise WeightSyncUnavailable(UNAVAILABLE)


def receive_nccl(handle: WeightHandle) -> Dict[str, Any]:
    raise WeightSyncUnavailable(UNAVAILABLE)
