"""The learner part: async PPO on scored dialogues (``learner.actor.Learner`` is the process role).

What other parts may use: :func:`read_checkpoint_state` and :func:`policy_dir` (the launcher resumes a
run from a checkpoint through them).
"""
from learner.checkpoint import policy_dir, read_checkpoint_state

__all__ = ["policy_dir", "read_checkpoint_state"]
