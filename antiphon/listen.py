"""Write dialogues out so a person can listen: one folder per dialogue, a transcript and a wav per turn."""
from __future__ import annotations

import wave
from pathlib import Path
from typing import Iterable

from antiphon.protocol import AudioClip, Trajectory


def write_wav(path: Path, clip: AudioClip) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(clip.sample_rate)
        w.writeframes(clip.pcm.astype("<i2").tobytes())


def write_dialogue(traj: Trajectory, out_dir: Path, tokenizer=None) -> Path:
    """``out_dir/<trajectory_id>/``: ``transcript.txt`` and ``NN_user.wav`` / ``NN_agent.wav``."""
    d = Path(out_dir) / traj.trajectory_id
    d.mkdir(parents=True, exist_ok=True)
    sc = traj.scenario
    lines = [f"dialogue {traj.trajectory_id}  scenario {sc.get('scenario_id')}  end: {traj.end_reason}",
             f"persona: {sc.get('persona', '')}  goal: {sc.get('goal', '')}", ""]
    for i, t in enumerate(traj.turns):
        who = "USER " if t.role == "user" else "AGENT"
        if t.audio is not None:
            write_wav(d / f"{i:02d}_{'user' if t.role == 'user' else 'agent'}.wav", t.audio)
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
    (d / "transcript.txt").write_text("\n".join(lines) + "\n")
    return d


def write_dialogues(trajs: Iterable[Trajectory], out_dir: Path, tokenizer=None) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for t in trajs:
        write_dialogue(t, out, tokenizer)
    return out
