"""The repository stands alone: no file in it (tracked, or new and not ignored) points at a path outside it.

Background a user of the repository does not have (notes kept beside a checkout, a sibling folder, a
machine's own paths) must not be cited; what the code relies on is explained in ``docs/``.
"""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Built from pieces so this file does not match itself.
OUTSIDE = re.compile("|".join([
    r"(?<![\w.-])" + "shared" + r"/",  # a sibling notes folder
    "STACK" + "-NOTES",
    r"(?<![\w.])/" + "work" + r"/",  # this machine's checkout root
]))
PARENT = re.compile(r"(?:\.\./)+[\w.\-/]*")


def _repo_text_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO, capture_output=True, check=True).stdout
        names = [n for n in out.decode().split("\0") if n]
    except (OSError, subprocess.CalledProcessError):  # a source tree without git: every file, as a fallback
        names = [str(Path(r, n).relative_to(REPO)) for r, ds, ns in os.walk(REPO)
                 for n in ns if not any(p.startswith(".") for p in Path(r).relative_to(REPO).parts)]
    files = []
    for name in names:
        path = REPO / name
        if path.is_file() and b"\0" not in path.read_bytes()[:8192]:
            files.append(path)
    return files


def test_no_tracked_file_references_a_path_outside_the_repository():
    problems = []
    for path in _repo_text_files():
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        rel = path.relative_to(REPO)
        for n, line in enumerate(text.splitlines(), 1):
            if OUTSIDE.search(line):
                problems.append(f"{rel}:{n}: {line.strip()[:120]}")
            for m in PARENT.finditer(line):
                target = os.path.normpath(path.parent / m.group(0))
                if not target.startswith(str(REPO) + os.sep):
                    problems.append(f"{rel}:{n}: {m.group(0)} leaves the repository")
    assert not problems, "paths outside the repository (explain it in docs/ instead):\n" + "\n".join(problems)


def _slugs(markdown: str) -> set:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    heads = re.findall(r"^#+\s+(.*?)\s*$", markdown, re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in heads}


def test_links_and_docs_pointers_resolve():
    """Markdown links to repo files, and every ``docs/<page>.md#anchor`` a comment points at, exist."""
    problems = []
    files = _repo_text_files()
    for path in files:
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        rel = path.relative_to(REPO)
        targets = [(REPO / m.group(1), m.group(2)) for m in re.finditer(r"(docs/[\w.-]+\.md)(?:#([\w-]+))?", text)]
        if path.suffix == ".md":
            for m in re.finditer(r"\]\(([^)\s]+)\)", text):
                link = m.group(1)
                if re.match(r"[a-z]+:", link):
                    continue  # a URL
                file, _, anchor = link.partition("#")
                targets.append(((path.parent / file) if file else path, anchor or None))
        for target, anchor in targets:
            if not target.exists():
                problems.append(f"{rel}: {target.relative_to(REPO) if REPO in target.parents else target} does not exist")
            elif anchor and target.suffix == ".md" and anchor not in _slugs(target.read_text()):
                problems.append(f"{rel}: {target.name} has no heading #{anchor}")
    assert not problems, "\n".join(sorted(set(problems)))
