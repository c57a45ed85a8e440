"""`pip install .` (not only the editable install) carries every package and the whole config tree."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PARTS = ["antiphon", "actors", "learner", "reward_service", "simulator"]


def test_wheel_has_every_package_and_config(tmp_path):
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation",
                          "-q", "-w", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    (wheel,) = tmp_path.glob("antiphon-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = [p.parent.relative_to(REPO) for part in PARTS for p in (REPO / part).rglob("__init__.py")]
    for pkg in packages:
        assert f"{pkg.as_posix()}/__init__.py" in names, pkg
    for yaml in (REPO / "configs").rglob("*.yaml"):
        assert f"antiphon/configs/{yaml.relative_to(REPO / 'configs').as_posix()}" in names, yaml
