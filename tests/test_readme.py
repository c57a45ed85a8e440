"""Every command in the README runs as written, from the repository root, with a tiny budget.

How a README line becomes a run -- mechanical, so a new line is covered without editing this file unless it
needs a rule of its own:

- Each line of a fenced ``bash`` block is one command; a trailing ``# comment`` is dropped; leading
  ``VAR=value`` words are its environment, as in a shell.
- The commands run in README order in one scratch folder that stands in for the repository root: it holds a
  link to ``.venv`` (so ``.venv/bin/...`` resolves), ``runs/`` (``ANTIPHON_RUNS``), and the files the README
  asks the user to bring -- ``my_sims.py`` (the README's own python block) and ``my_pairs.jsonl`` (the
  example pair of ``reward_service/rm/PAIRS_FORMAT.md``). Later lines find what earlier ones wrote (the
  scenario set, the replay example, the RM checkpoint). ``make`` lines run in the repository itself (they
  need its Makefile), with ``ANTIPHON_RUNS`` in the scratch folder.
- Launcher lines (``antiphon``, ``antiphon-rollout``, ``make demo``) get ``experiment.dry_run=true``: the real
  entry point composes and validates the config -- every key, ``_target_`` and file it names -- prints its
  run plan and starts nothing. The runs themselves are tested end to end in ``tests/e2e/`` (learning,
  sync mode, resume, sweeps, the custom simulator, rollouts then dump). ``make test`` only collects this file.
- Budgets: flags in BUDGET get a small value (``--n 500`` -> ``--n 4``), flags in EXTRA are appended per
  module; an absolute ``/tmp/...`` output moves into the scratch folder. What ``--out`` or ``--make-example``
  names must exist afterwards.
- Placeholders: ``<exp>`` -> tiny_cpu, ``<time>`` -> readme. The run folder such a line names is prepared:
  for ``antiphon-dump`` a stopped run's Valkey data holding one dialogue, for ``resume=`` the checkpoint
  folder.
- NOT_RUN lines change the machine itself; EXPECT_REJECTED lines name files no test machine has, so they
  run up to validation, which must reject that file and nothing else.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
VENV = Path(sys.executable).parent.parent

BUDGET = {"--n": "4", "--synthetic": "16"}
EXTRA = {
    "reward_service.rm.train": ["--steps", "1", "--batch-size", "4"],
    "learner.cold_start": ["--dialogues", "2", "--epochs", "1"],
}
OUTPUTS = {"--out", "--make-example"}  # a tool that exits 0 must have written what these name
PLACEHOLDERS = {"<exp>": "tiny_cpu", "<time>": "readme"}
LAUNCHERS = {".venv/bin/antiphon", ".venv/bin/antiphon-rollout"}
DRY_RUN = "experiment.dry_run=true"
MAKE_ARGS = {"demo": DRY_RUN, "test": "--collect-only -q tests/test_readme.py",
             "test-fast": "--collect-only -q tests/test_readme.py"}
NOT_RUN = {
    "ANTIPHON_DEVICE=gpu make venv": "installs CUDA vLLM over this machine's CPU environment",
    ".venv/bin/ray start --head": "starts a Ray head node that would outlive the test and capture other tests' Ray",
}
EXPECT_REJECTED = {"model.path=/data/ckpt/Qwen2-Audio-7B-Instruct": "model.path='/data/ckpt/Qwen2-Audio-7B-Instruct'"}


def readme_commands() -> list[tuple[int, str]]:
    """(line number, command) for every command line of the README's bash blocks, in order."""
    out, in_bash = [], False
    for n, line in enumerate(README.read_text().splitlines(), 1):
        if line.startswith("```"):
            in_bash = line.strip() == "```bash" if not in_bash else False
            continue
        words = shlex.split(line, comments=True) if in_bash else []
        if words:
            out.append((n, line))
    return out


def _readme_simulator() -> str:
    section = README.read_text().split("## Write your own simulator", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def _example_pair() -> dict:
    text = (REPO / "reward_service/rm/PAIRS_FORMAT.md").read_text()
    return json.loads(re.search(r"```json\n(.*?)```", text, re.S).group(1))


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("repo-root")
    (root / ".venv").symlink_to(VENV)
    (root / "my_sims.py").write_text(_readme_simulator())
    pair = _example_pair()
    with open(root / "my_pairs.jsonl", "w") as f:
        for i in range(10):  # one example is too few to hold some out; vary it so no two lines are equal
            f.write(json.dumps(dict(pair, source=f"readme-test-{i}")) + "\n")
    return root


def _prepare(words: list[str], root: Path) -> None:
    """Make the run folders a command's placeholders named."""
    for i, w in enumerate(words):
        if w == "--data-dir" and words[0].endswith("antiphon-dump"):
            _stopped_run_with_one_dialogue(root / words[i + 1], words[words.index("--namespace") + 1])
        if w.startswith("resume="):
            (root / w.split("=", 1)[1]).mkdir(parents=True, exist_ok=True)


def _stopped_run_with_one_dialogue(data_dir: Path, namespace: str) -> None:
    """A run's persisted Valkey data as a stopped run leaves it, holding one two-turn dialogue."""
    from support import make_trajectory

    from antiphon.protocol import encode
    from antiphon.transport import BlockingTransport, EmbeddedValkey, from_config

    with EmbeddedValkey(data_dir) as server:
        transport = BlockingTransport(from_config({"url": server.url, "namespace": namespace}))
        try:
            transport.publish(transport.stream("trajectories"), encode(make_trajectory("readme-0")))
        finally:
            transport.close()


def to_run(line: str, root: Path) -> tuple[list[str], dict, Path]:
    """The README line as argv, environment and working directory, with the rules of the module docstring."""
    for k, v in PLACEHOLDERS.items():
        line = line.replace(k, v)
    words = shlex.split(line, comments=True)
    env = dict(os.environ, ANTIPHON_RUNS=str(root / "runs"))
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
        k, v = words.pop(0).split("=", 1)
        env[k] = v
    for i in range(len(words) - 1):
        if words[i] in BUDGET:
            words[i + 1] = BUDGET[words[i]]
    words = [str(root) + w if w.startswith("/tmp/") else w for w in words]
    cwd = root
    if words[0] == "make":
        target = next(w for w in words[1:] if not w.startswith("-") and "=" not in w)
        words.append(f"ARGS={MAKE_ARGS[target]}")
        cwd = REPO
    elif words[0] in LAUNCHERS and DRY_RUN not in words and not any(w.startswith("--cfg") for w in words):
        words.append(DRY_RUN)
    elif words[:2] == [".venv/bin/python", "-m"]:
        words += EXTRA.get(words[2], [])
    return words, env, cwd


COMMANDS = readme_commands()


def test_the_readme_has_commands_and_this_file_knows_its_special_lines():
    lines = [c for _, c in COMMANDS]
    assert len(lines) >= 20
    for special in [*NOT_RUN, *EXPECT_REJECTED]:
        assert any(special in c for c in lines), f"{special!r} is no longer in the README: drop its rule"


@pytest.mark.parametrize("n,line", COMMANDS, ids=[f"L{n}" for n, _ in COMMANDS])
def test_readme_command_runs_as_written(n, line, root):
    skip = next((why for k, why in NOT_RUN.items() if k in line), None)
    if skip:
        pytest.skip(f"README.md:{n} is not run: {skip}")
    words, env, cwd = to_run(line, root)
    _prepare(words, root)
    if words[0] == "make":
        check = subprocess.run(["bash", "deploy/install.sh", "--check"], cwd=REPO, capture_output=True, text=True)
        if check.returncode != 0:
            pytest.skip(f"README.md:{n}: {check.stderr.strip()} (make would rebuild the venv first)")
    res = subprocess.run(words, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    said = f"README.md:{n}: {line.strip()}\nran: {shlex.join(words)}\n{res.stdout[-2500:]}\n{res.stderr[-2500:]}"
    rejected = next((why for k, why in EXPECT_REJECTED.items() if k in line), None)
    if rejected:
        assert res.returncode == 2 and rejected in res.stderr, said
        problems = [x for x in res.stderr.splitlines() if x.startswith("  ")]
        assert problems and all(rejected in x for x in problems), said
        return
    assert res.returncode == 0, said
    if DRY_RUN in words or any(DRY_RUN in w for w in words):
        assert "dry run: the config is valid" in res.stdout, said
    for flag, value in zip(words, words[1:]):
        if flag in OUTPUTS:
            assert (cwd / value).exists(), f"{said}\n{flag} {value}: nothing was written there"
