"""`make test` runs two pytest-xdist workers, and the tests that use the session's Ray instance and rollout
engines must all run on one of them, in order (tests/conftest.py groups them). If the grouping stopped working -- e.g. a pytest
release that pytest-xdist's groups do not follow -- they would spread silently over both workers, start
two Ray instances and fight over the session's fixtures. This runs the real hook on a tiny suite."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CONFTEST = Path(__file__).resolve().parent / "conftest.py"


def test_engine_tests_run_on_one_worker_in_order_and_the_rest_beside_them(tmp_path):
    (tmp_path / "conftest.py").write_text(
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('antiphon_tests_conftest', {str(CONFTEST)!r})\n"
        "mod = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(mod)\n"
        "pytest_collection_modifyitems = mod.pytest_collection_modifyitems\n"
        "import pytest\n"
        "@pytest.fixture\n"
        "def ray_local():\n"
        "    return None\n")
    log = tmp_path / "ran.txt"
    body = ["import os, time", "import pytest", "", "def _ran(name):",
            f"    with open({str(log)!r}, 'a') as f:",
            "        f.write(name + ' ' + os.environ['PYTEST_XDIST_WORKER'] + '\\n')", ""]
    for i in range(4):
        body += [f"def test_engine_{i}(ray_local):\n    _ran('engine_{i}')\n    time.sleep(0.3)\n",
                 f"def test_plain_{i}():\n    _ran('plain_{i}')\n    time.sleep(0.3)\n"]
    (tmp_path / "test_tiny.py").write_text("\n".join(body))
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2",
                          "--dist", "loadgroup", str(tmp_path)], capture_output=True, text=True, cwd=tmp_path,
                         timeout=120)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    ran = [line.split() for line in log.read_text().splitlines()]
    engines = [(name, worker) for name, worker in ran if name.startswith("engine")]
    assert len(ran) == 8 and len({w for _, w in engines}) == 1, ran  # one worker ran every engine test
    assert [n for n, _ in engines] == [f"engine_{i}" for i in range(4)]  # in file order
    assert {w for n, w in ran if n.startswith("plain")} - {engines[0][1]}, ran  # the other worker was used
