"""`pip install .` (not only the editable install) carries every package and the whole config tree, and
building it prints no setuptools warnings.

The package list is derived from the tree, not written by hand: every top-level folder that holds Python
files is one of the system's parts and installs as a regular package (``__init__.py`` in it and in every
sub-folder that holds Python files), except the folders that are run in place and never installed.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Run in place, never installed: pytest collects tests/ by path (importlib mode); benchmarks/ are scripts.
NOT_INSTALLED = {"tests", "benchmarks"}
# configs/ installs as antiphon.configs (pyproject's package-dir), so Hydra finds it from any directory.
INSTALLED_AS = {"configs": "antiphon/configs"}


def _skipped(name: str) -> bool:
    """Hidden folders (.venv, .git), build output and caches: not source."""
    return name.startswith(".") or name in {"build", "dist", "runs", "__pycache__"} or name.endswith(".egg-info")


def _source_files() -> list[Path]:
    files = []
    for root, dirs, names in os.walk(REPO):
        dirs[:] = [d for d in dirs if not _skipped(d)]
        files += [Path(root, n).relative_to(REPO) for n in names]
    return files


def _python_dirs() -> list[Path]:
    """Every folder under the repo holding .py files, except the NOT_INSTALLED ones."""
    dirs = {f.parent for f in _source_files() if f.suffix == ".py"}
    return sorted(d for d in dirs if d.parts and d.parts[0] not in NOT_INSTALLED)


def _wheel_path(rel: Path) -> str:
    top, rest = rel.parts[0], rel.parts[1:]
    return "/".join([INSTALLED_AS.get(top, top), *rest])


def test_every_folder_of_python_files_is_a_regular_package():
    dirs = _python_dirs()
    assert {d.parts[0] for d in dirs} >= {"antiphon", "actors", "learner", "reward_service", "simulator", "configs"}
    missing = [d.as_posix() for d in dirs if not (REPO / d / "__init__.py").is_file()]
    assert not missing, f"folders with .py files but no __init__.py (a namespace package by accident): {missing}"


def test_wheel_has_every_package_and_config_and_builds_without_warnings(tmp_path):
    # Built from a copy of the source: setuptools builds in place (build/), where files of an earlier build
    # would end up in the wheel, and the checkout is left as it was.
    src = tmp_path / "src"
    for f in _source_files():
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, src / f)
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                          "--disable-pip-version-check", "-w", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout + res.stderr
    warnings = [line.strip() for line in out.splitlines() if "Warning" in line or "is absent from the `packages`" in line]
    assert not warnings, "the build warns (see pyproject's [tool.setuptools]):\n" + "\n".join(warnings[:20])
    (wheel,) = tmp_path.glob("antiphon-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for d in _python_dirs():
        for py in sorted((REPO / d).glob("*.py")):
            assert f"{_wheel_path(d)}/{py.name}" in names, f"{d / py.name} is not in the wheel (pyproject packages)"
    for yaml in (REPO / "configs").rglob("*.yaml"):
        assert f"antiphon/configs/{yaml.relative_to(REPO / 'configs').as_posix()}" in names, yaml
