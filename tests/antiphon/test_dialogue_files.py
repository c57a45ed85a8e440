"""Dialogues written out for listening: folders numbered by index, never named from a dialogue's data."""
from __future__ import annotations

import wave

import numpy as np
import pytest

from antiphon.dialogue_files import transcript, write_dialogue, write_dialogues
from antiphon.wav import read_wav
from support import make_trajectory


def test_folders_are_numbered_and_hold_a_transcript_and_a_wav_per_spoken_turn(tmp_path):
    trajs = [make_trajectory("a"), make_trajectory("b")]
    write_dialogues(trajs, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dialogue_00000", "dialogue_00001"]
    d = tmp_path / "dialogue_00001"
    assert sorted(p.name for p in d.iterdir()) == ["00_user.wav", "02_user.wav", "transcript.txt"]
    assert (d / "transcript.txt").read_text() == transcript(trajs[1])
    assert (d / "transcript.txt").read_text().startswith("dialogue b ")
    with wave.open(str(d / "00_user.wav")) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 16000)
    # The wav holds exactly the clip's samples.
    assert np.array_equal(np.round(read_wav(d / "00_user.wav") * 32767).astype(np.int16), trajs[1].turns[0].audio.pcm)


@pytest.mark.parametrize("tid", ["../../escape", "/etc/passwd", "a/b", "..", ""])
def test_a_trajectory_id_never_becomes_a_path(tmp_path, tid):
    out = tmp_path / "out"
    d = write_dialogue(make_trajectory(tid), out)
    assert d == out / "dialogue_00000"
    assert [p.relative_to(tmp_path).as_posix() for p in sorted(tmp_path.rglob("*")) if p.is_dir()] == \
        ["out", "out/dialogue_00000"]


def test_a_second_dump_into_the_same_folder_adds(tmp_path):
    (tmp_path / "dialogue_00007").mkdir()  # left by an earlier dump: never written into again
    write_dialogues([make_trajectory("a")], tmp_path)
    write_dialogues([make_trajectory("b"), make_trajectory("c")], tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["dialogue_00007", "dialogue_00008", "dialogue_00009", "dialogue_00010"]
    assert not any((tmp_path / "dialogue_00007").iterdir())
    assert (tmp_path / "dialogue_00010" / "transcript.txt").read_text().startswith("dialogue c ")
    assert write_dialogue(make_trajectory("d"), tmp_path, index=3) == tmp_path / "dialogue_00003"
    with pytest.raises(ValueError, match="index"):
        write_dialogue(make_trajectory("e"), tmp_path, index=-1)
