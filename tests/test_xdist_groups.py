"""`make test` runs two pytest-xdist workers, and the tests that use a session Ray instance and rollout engines
run in two lanes, one per worker, each lane in order on its worker (tests/conftest.py groups them and queues
the lanes first). If the grouping stopped working -- e.g. a pytest release that pytest-xdist's groups do not
follow -- they would spread silently over both workers and fight over the session's fixtures, or a lane would
wait behind the quick modules and run alone at the end. This runs the real hooks on a tiny suite."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CONFTEST = Path(__file__).resolve().parent / "conftest.py"


def test_engine_lanes_start_first_on_their_own_workers_in_order_and_the_rest_fill_in(tmp_path):
    (tmp_path / "conftest.py").write_text(
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('antiphon_tests_conftest', {str(CONFTEST)!r})\n"
        "mod = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(mod)\n"
        "mod.SECOND_LANE = ('test_tiny_b.py::',)\n"
        "pytest_collection_modifyitems = mod.pytest_collection_modifyitems\n"
        "import pytest\n"
        "@pytest.fixture\n"
        "def ray_local():\n"
        "    return None\n")
    log = tmp_path / "ran.txt"
    head = ["import os, time", "import pytest", "", "def _ran(name):",
            f"    with open({str(log)!r}, 'a') as f:",
            "        f.write(name + ' ' + os.environ['PYTEST_XDIST_WORKER'] + '\\n')", ""]
    plain = [f"def test_plain_{i}():\n    _ran('plain_{i}')\n    time.sleep(0.2)\n" for i in range(6)]
    for lane in "ab":
        engines = [f"def test_engine_{lane}{i}(ray_local):\n    _ran('engine_{lane}{i}')\n    time.sleep(0.3)\n"
                   for i in range(3)]
        # Plain tests first in the file: the lanes must still be queued before them.
        (tmp_path / f"test_tiny_{lane}.py").write_text("\n".join(head + plain[:3] + engines))
        plain = plain[3:]
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2",
                          "--dist", "loadgroup", "--no-loadscope-reorder", str(tmp_path)], capture_output=True,
                         text=True, cwd=tmp_path, timeout=120)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    ran = [line.split() for line in log.read_text().splitlines()]
    assert len(ran) == 12, ran
    workers = {}
    for lane in "ab":
        mine = [(n, w) for n, w in ran if n.startswith(f"engine_{lane}")]
        assert [n for n, _ in mine] == [f"engine_{lane}{i}" for i in range(3)], ran  # in file order
        assert len({w for _, w in mine}) == 1, ran  # on one worker
        workers[lane] = mine[0][1]
        first = [n for n, w in ran if w == workers[lane]][0]
        assert first == f"engine_{lane}0", ran  # the lane is what its worker ran first
    assert workers["a"] != workers["b"], ran  # the two lanes side by side
