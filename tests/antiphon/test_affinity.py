"""Pinning a process to cores: every thread moves, bad cores are named."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest


def test_pin_process_moves_every_thread_and_new_threads_inherit():
    code = (
        "import os, threading, time\n"
        "from antiphon.affinity import pin_process\n"
        "ev = threading.Event(); t = threading.Thread(target=ev.wait); t.start()\n"
        "pin_process([0])\n"
        "seen = {}\n"
        "t2 = threading.Thread(target=lambda: seen.update(a=os.sched_getaffinity(0))); t2.start(); t2.join()\n"
        "tids = os.listdir('/proc/self/task')\n"
        "print(all(os.sched_getaffinity(int(x)) == {0} for x in tids), seen['a'] == {0})\n"
        "ev.set()\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["True", "True"], out.stderr


def test_unknown_cores_are_named():
    from antiphon.affinity import pin_process

    with pytest.raises(ValueError, match=r"learner.cpu_affinity: cores \[4096\]"):
        pin_process([4096], "learner.cpu_affinity")
    pin_process(None)  # nothing asked, nothing done
    assert os.sched_getaffinity(0)
