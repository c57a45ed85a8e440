"""Rollout side: vLLM engines inside Ray actors. Public entry points: ``launch_workers``, ``broadcast_weights``."""
from actors.worker import RolloutWorker, broadcast_weights, launch_workers

__all__ = ["RolloutWorker", "broadcast_weights", "launch_workers"]
