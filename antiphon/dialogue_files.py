"""Dialogues written out for a person to listen to: one folder per dialogue, a transcript and a wav per turn.

Folder names come from a running index (``dialogue_00000``, ``dialogue_00001``, ...), never from the
dialogue's data: a trajectory id arrives over the wire and is not trusted as a path component. The
transcript's first line names the trajectory id, so a dialogue can be found by its id with grep.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, Iterable, Optional

from antiphon.protocol import Trajectory
from antiphon.wav import write_wav

FOLDER_PREFIX = "dialogue_"
_FOLDER = re.compile(rf"^{FOLDER_PREFIX}(\d+)$")
_NEXT: Dict[str, int] = {}  # per output folder: the index this process claims next (saves a scan per dialogue)


def next_index(out_dir: Path) -> int:
    """The first index after every ``dialogue_N`` folder already in ``out_dir`` (0 for an empty or new folder)."""
    used = [int(m.group(1)) for p in Path(out_dir).glob(f"{FOLDER_PREFIX}*") if (m := _FOLDER.match(p.name))]
    return max(used, default=-1) + 1


def _claim_folder(out_dir: Path) -> Path:
    """Creates and returns the next free ``dialogue_N`` folder; a folder made meanwhile by another writer
    is skipped, never shared."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    key = str(out.resolve())
    i = _NEXT.get(key)
    if i is None or (i > 0 and not (out / f"{FOLDER_PREFIX}{i - 1:05d}").is_dir()):  # new, or emptied since
        i = next_index(out)
    while True:
        d = out / f"{FOLDER_PREFIX}{i:05d}"
        try:
            d.mkdir()
            break
        except FileExistsError:
            i += 1
    _NEXT[key] = i + 1
    return d


def transcript(traj: Trajectory, tokenizer=None) -> str:
    """The dialogue as text: who spoke, with what emotion or style, the reasoning, and (with a tokenizer)
    the raw tokens of every agent turn."""
    sc = traj.scenario
    lines = [f"dialogue {traj.trajectory_id}  scenario {sc.get('scenario_id')}  end: {traj.end_reason}",
             f"persona: {sc.get('persona', '')}  goal: {sc.get('goal', '')}", ""]
    for i, t in enumerate(traj.turns):
        who = "USER " if t.role == "user" else "AGENT"
        extra = []
        if t.emotion:
            extra.append(("emotion " if t.role == "user" else "style ") + t.emotion)
        if t.feedback is not None:
            extra.append(f"feedback on previous agent turn {t.feedback:.2f}")
        if t.role == "assistant":
            extra.append(f"weights v{t.weight_version}, {t.finish_reason}")
        lines.append(f"[{i:02d}] {who} ({'; '.join(extra)})")
        if t.reasoning:
            lines.append(f"      <think> {t.reasoning}")
        lines.append(f"      {t.text}")
        if tokenizer is not None and t.role == "assistant":
            lines.append(f"      raw: {tokenizer.decode(traj.token_ids[t.start:t.end].tolist())!r}")
    return "\n".join(lines) + "\n"


def write_dialogue(traj: Trajectory, out_dir: Path, tokenizer=None, index: Optional[int] = None) -> Path:
    """``out_dir/dialogue_<index>/``: ``transcript.txt`` and ``NN_user.wav`` / ``NN_agent.wav``.

    ``index=None`` takes the next free index in ``out_dir``, so dumps into one folder add, never overwrite;
    an explicit ``index`` writes into that folder whatever is there.
    """
    if index is None:
        d = _claim_folder(out_dir)
    elif isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ValueError(f"index must be a non-negative int, got {index!r}")
    else:
        d = Path(out_dir) / f"{FOLDER_PREFIX}{index:05d}"
        d.mkdir(parents=True, exist_ok=True)
    for i, t in enumerate(traj.turns):
        if t.audio is not None:
            write_wav(d / f"{i:02d}_{'user' if t.role == 'user' else 'agent'}.wav", t.audio.pcm, t.audio.sample_rate)
    (d / "transcript.txt").write_text(transcript(traj, tokenizer))
    return d


def write_dialogues(trajs: Iterable[Trajectory], out_dir: Path, tokenizer=None) -> Path:
    """Every dialogue of ``trajs`` into ``out_dir``, numbered on from the folders already there."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for t in trajs:
        write_dialogue(t, out, tokenizer)
    return out
