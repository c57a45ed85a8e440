"""Every command the installed distribution declares runs: ``<command> --help`` exits 0 and prints its usage.

The commands come from the INSTALLED distribution's metadata (what `make` put in ``.venv/bin``), so an entry
point naming a module that does not exist fails here, and an install older than pyproject.toml is named.
"""
from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _installed_commands() -> dict[str, str]:
    dist = importlib.metadata.distribution("antiphon")
    return {ep.name: ep.value for ep in dist.entry_points if ep.group == "console_scripts"}


def test_installed_commands_are_the_declared_ones():
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert _installed_commands() == declared, "the install is older than pyproject.toml: run `make venv`"


@pytest.mark.parametrize("name", sorted(_installed_commands()))
def test_installed_command_prints_its_help(name):
    exe = Path(sys.executable).parent / name  # the console script pip wrote next to this interpreter
    assert exe.is_file(), f"{name}: not installed in {exe.parent}"
    res = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=180,
                         env=dict(os.environ, HYDRA_FULL_ERROR="1"))
    assert res.returncode == 0, f"{name} --help exited {res.returncode}:\n{res.stderr[-3000:]}"
    # argparse commands print "usage:", Hydra apps their config groups and overridable config.
    assert "usage:" in res.stdout or "== Configuration groups ==" in res.stdout, res.stdout[:2000]


@pytest.mark.parametrize("name", ["antiphon", "antiphon-rollout"])
def test_dry_run_validates_prints_the_plan_and_leaves_nothing(name, tmp_path):
    exe = Path(sys.executable).parent / name
    runs = tmp_path / "runs"
    res = subprocess.run([str(exe), "experiment.dry_run=true", "rollout.num_workers=3"], capture_output=True,
                         text=True, timeout=180, cwd=tmp_path, env=dict(os.environ, ANTIPHON_RUNS=str(runs)))
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"[{name}] dry run: the config is valid; nothing was started." in res.stdout
    assert "3 vLLM worker(s) on cpu" in res.stdout and "run dir" in res.stdout
    assert not any(p.is_file() for p in tmp_path.rglob("*")), sorted(tmp_path.rglob("*"))  # no run folder, no log
    bad = subprocess.run([str(exe), "experiment.dry_run=true", "rollout.num_workers=0"], capture_output=True,
                         text=True, timeout=180, cwd=tmp_path, env=dict(os.environ, ANTIPHON_RUNS=str(runs)))
    assert bad.returncode == 2 and "rollout.num_workers=0" in bad.stderr  # a dry run validates like a run
