"""The shared JSONL reader (errors name file:line: field) and the PCM16 wav reader/writer."""
from __future__ import annotations

import numpy as np
import pytest

from antiphon.jsonl import JsonlError, read_jsonl, write_jsonl
from antiphon.protocol import AudioClip
from antiphon.wav import read_wav, resample, wav_header, write_wav


def test_jsonl_round_trip_skips_blank_lines_and_counts_them(tmp_path):
    p = write_jsonl([{"a": 1}, {"b": "é"}], tmp_path / "sub" / "x.jsonl")
    p.write_text(p.read_text() + "\n\n" + '{"c": 3}\n')
    assert list(read_jsonl(p)) == [(1, {"a": 1}), (2, {"b": "é"}), (5, {"c": 3})]


@pytest.mark.parametrize("body, line, why", [
    (b'{"a": 1}\n{oops\n{"b": 2}\n', 2, "not JSON"),
    (b'{"a": 1}\n[1, 2]\n', 2, "expected a JSON object, got list"),
    (b'{"a": 1}\n{"b": "\xff"}\n{"c": 1}\n', 2, "not UTF-8"),
])
def test_a_bad_line_names_file_line_and_field(tmp_path, body, line, why):
    p = tmp_path / "x.jsonl"
    p.write_bytes(body)
    with pytest.raises(JsonlError) as e:
        list(read_jsonl(p))
    assert (e.value.file, e.value.line, e.value.field) == (str(p), line, "record")
    assert str(e.value).startswith(f"{p}:{line}: record: ") and why in str(e.value)


def test_a_truncated_last_line_is_skipped_only_when_asked(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"a": 1}\n{"b": 2, "c\n\n')
    assert list(read_jsonl(p, skip_truncated_last=True)) == [(1, {"a": 1})]
    with pytest.raises(JsonlError, match=r"x\.jsonl:2: record: not JSON"):
        list(read_jsonl(p))


def test_a_format_error_class_is_raised_through_the_factory(tmp_path):
    class MyError(ValueError):
        def __init__(self, file, line, field, why):
            super().__init__(f"mine {file}:{line}: {field}: {why}")

    p = tmp_path / "x.jsonl"
    p.write_text("1\n")
    with pytest.raises(MyError, match="mine .*x.jsonl:1: record: expected a JSON object"):
        list(read_jsonl(p, error=MyError))


def test_wav_round_trip_matches_the_wire_format(tmp_path):
    rng = np.random.default_rng(0)
    audio = np.concatenate([rng.uniform(-1.2, 1.2, 1000), [1.0, -1.0, 0.0]]).astype(np.float32)
    p = write_wav(tmp_path / "a" / "x.wav", audio, 8000)
    assert wav_header(p) == (8000, len(audio))
    clip = AudioClip.from_float(audio, 8000)
    assert np.array_equal(read_wav(p), np.clip(clip.to_float(), -1.0, 1.0))
    write_wav(tmp_path / "pcm.wav", clip.pcm, 8000)  # int16 samples are written as they are
    assert (tmp_path / "pcm.wav").read_bytes() == p.read_bytes()


def test_wav_header_says_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match="file not found"):
        wav_header(tmp_path / "none.wav")
    (tmp_path / "bad.wav").write_bytes(b"RIFF....")
    with pytest.raises(ValueError, match="not a PCM wav"):
        wav_header(tmp_path / "bad.wav")
    write_wav(tmp_path / "empty.wav", np.zeros(0, np.float32), 16000)
    with pytest.raises(ValueError, match="no audio frames"):
        wav_header(tmp_path / "empty.wav")


def test_resample_keeps_a_tone_and_reads_resampled(tmp_path):
    sr, f = 22050, 440.0
    tone = 0.5 * np.sin(2 * np.pi * f * np.arange(sr) / sr)
    out = resample(tone, sr, 16000)
    assert len(out) == 16000 and out.dtype == np.float32
    assert abs(np.argmax(np.abs(np.fft.rfft(out))) - f) <= 1
    write_wav(tmp_path / "t.wav", tone, sr)
    assert len(read_wav(tmp_path / "t.wav", 16000)) == 16000
    assert np.array_equal(resample(out, 16000, 16000), out)
