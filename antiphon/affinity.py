"""Pin a process to CPU cores: dedicated cores per role on one machine.

On a GPU cluster the rollout engines and the learner own separate devices. On a single CPU machine they
share cores, so one role's idle time is simply used by the other and an async/sync comparison measures
nothing; giving each role its own cores (``rollout.cpu_affinity``, ``reward.cpu_affinity``,
``learner.cpu_affinity``) reproduces the separation. Every existing thread of the process is pinned,
and threads started later inherit it.
"""
from __future__ import annotations

import os
from typing import Iterable, Optional


def pin_process(cpus: Optional[Iterable[int]], what: str = "cpu_affinity") -> None:
    if not cpus:
        return
    want = {int(c) for c in cpus}
    have = os.sched_getaffinity(0) | set(range(os.cpu_count() or 1))
    if not want <= have:
        raise ValueError(f"{what}: cores {sorted(want - have)} do not exist on this node ({sorted(have)})")
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), want)
        except (ProcessLookupError, PermissionError):  # a thread that just ended
            pass
