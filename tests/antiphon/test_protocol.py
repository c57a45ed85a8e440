"""Wire protocol: round trip, and every malformed message refused with the field named."""
from __future__ import annotations

import msgpack
import numpy as np
import pytest

from antiphon.protocol import SCHEMA_VERSION, AudioClip, ProtocolError, Trajectory, TurnRecord, decode, encode


def _traj() -> Trajectory:
    rng = np.random.default_rng(0)
    ids = np.arange(20, dtype=np.int32)
    mask = np.zeros(20, np.uint8)
    mask[8:14] = 1
    mask[17:20] = 1
    lp = np.zeros(20, np.float32)
    lp[mask == 1] = -rng.uniform(0.1, 5, int(mask.sum()))
    ver = np.full(20, -1, np.int32)
    ver[8:14], ver[17:20] = 3, 4
    clip = AudioClip.from_float(0.3 * np.sin(np.linspace(0, 200, 16000)), 16000)
    turns = [
        TurnRecord("user", 0, 8, text="how are you?", emotion="sad", audio=clip),
        TurnRecord("assistant", 8, 14, text="I hear you.", reasoning="user sounds sad", emotion="gentle",
                   audio=clip, weight_version=3, finish_reason="stop", timing={"generate_s": 0.2}),
        TurnRecord("user", 14, 17, text="thanks", emotion="calm", feedback=0.75),
        TurnRecord("assistant", 17, 20, text="bye", weight_version=4, finish_reason="stop"),
    ]
    return Trajectory("t-1", "run-a", {"persona": "x", "refs": {"1": "7"}}, ids, mask, lp, ver, turns,
                      end_reason="user_ended", worker=2, created_at=123.5, meta={"k": 1})


def test_round_trip_keeps_every_field():
    t = _traj()
    back = decode(encode(t))
    for k in ("token_ids", "policy_mask", "logprobs", "versions"):
        np.testing.assert_array_equal(getattr(back, k), getattr(t, k))
    assert back.logprobs.dtype == np.float32 and back.token_ids.dtype == np.int32
    assert [x.role for x in back.turns] == ["user", "assistant", "user", "assistant"]
    assert back.turns[0].audio.sample_rate == 16000
    np.testing.assert_array_equal(back.turns[0].audio.pcm, t.turns[0].audio.pcm)
    assert back.turns[2].feedback == 0.75 and back.turns[1].timing == {"generate_s": 0.2}
    assert (back.scenario, back.end_reason, back.worker, back.meta) == (t.scenario, t.end_reason, 2, {"k": 1})
    assert back.num_agent_turns == 2


def test_audio_is_int16_pcm_within_one_step():
    wave = np.random.default_rng(1).uniform(-1, 1, 1000).astype(np.float32)
    clip = AudioClip.from_float(wave, 22050)
    assert clip.pcm.dtype == np.int16
    assert np.abs(clip.to_float() - wave).max() <= 1 / 32767 + 1e-7


def _tamper(fn):
    m = msgpack.unpackb(encode(_traj()), raw=False)
    fn(m)
    return msgpack.packb(m, use_bin_type=True)


def _arr(m, k, a):
    m[k] = np.asarray(a).tobytes()


@pytest.mark.parametrize("data, field", [
    (b"\xc1garbage", "message"),
    (msgpack.packb([1, 2, 3]), "message"),
    (_tamper(lambda m: m.update(v=SCHEMA_VERSION + 1)), "v"),
    (_tamper(lambda m: m.pop("v")), "v"),
    (_tamper(lambda m: m.pop("id")), "id"),
    (_tamper(lambda m: m.update(run=5)), "run"),
    (_tamper(lambda m: m.update(token_ids=b"\x00" * 7)), "token_ids"),
    (_tamper(lambda m: _arr(m, "logprobs", np.zeros(19, "<f4"))), "logprobs"),
    (_tamper(lambda m: _arr(m, "logprobs", np.full(20, np.nan, "<f4"))), "logprobs"),
    (_tamper(lambda m: _arr(m, "logprobs", np.full(20, np.inf, "<f4"))), "logprobs"),
    (_tamper(lambda m: _arr(m, "policy_mask", np.full(20, 2, "|u1"))), "policy_mask"),
    (_tamper(lambda m: _arr(m, "versions", np.full(20, -1, "<i4"))), "versions"),
    (_tamper(lambda m: m["turns"][1].update(start=9)), "turns[1].start"),
    (_tamper(lambda m: m["turns"][0].update(role="narrator")), "turns[0].role"),
    (_tamper(lambda m: m["turns"][0].update(end=10, start=0) or m["turns"][1].update(start=10)), "turns[0].start"),
    (_tamper(lambda m: m["turns"][2].update(feedback=float("nan"))), "turns[2].feedback"),
    (_tamper(lambda m: m["turns"][0]["audio"].update(sr=0)), "turns[0].audio.sr"),
    (_tamper(lambda m: m["turns"][0]["audio"].update(pcm=b"\x00\x01\x02")), "turns[0].audio.pcm"),
    (_tamper(lambda m: m["turns"].pop()), "turns"),
])
def test_malformed_messages_are_refused_naming_the_field(data, field):
    with pytest.raises(ProtocolError) as e:
        decode(data)
    assert e.value.field == field, str(e.value)


def test_no_pickle_on_the_wire():
    data = encode(_traj())
    assert b"\x80\x04" not in data[:2] and b"numpy" not in data and b"pickle" not in data


def _scored(**changes) -> bytes:
    from antiphon.protocol import Rewards, ScoredTrajectory, encode_scored

    m = msgpack.unpackb(encode_scored(ScoredTrajectory(_traj(), Rewards([0.5, 1.0], 0.25, {}))), raw=False)
    m.update(changes)
    return msgpack.packb(m, use_bin_type=True)


def test_scored_round_trip_and_its_envelope_is_checked_like_a_trajectory():
    from antiphon.protocol import MAX_MESSAGE_BYTES, SCORED_SCHEMA_VERSION, decode_scored

    s = decode_scored(_scored())
    assert s.rewards.turn == [0.5, 1.0] and s.rewards.total == 1.75 and s.trajectory.trajectory_id == "t-1"
    for data, field, why in [(b"\xc1garbage", "message", "not msgpack"), (msgpack.packb(7), "message", "a map"),
                             (_scored(v=SCORED_SCHEMA_VERSION + 1), "v", "scored schema version"),
                             (b"\x00" * (MAX_MESSAGE_BYTES + 1), "message", "exceeds"),
                             (_scored(trajectory=encode(_traj())[:-3]), "message", "not msgpack")]:
        with pytest.raises(ProtocolError) as e:
            decode_scored(data)
        assert e.value.field == field and why in str(e.value), str(e.value)
