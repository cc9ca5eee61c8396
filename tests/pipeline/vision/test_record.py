import msgpack
import numpy as np
import pytest

from pipeline.errors import MessageError
from pipeline.streaming.message import FORMAT_VERSION, Message, decode, encode
from pipeline.vision.record import FACE_FIELDS, FACES, Face, faces_in_budget, faces_of


def as_bytes(frames) -> list[bytes]:
    return [bytes(f) for f in frames]


def test_faces_round_trip_with_every_field():
    seg = (np.arange(48 * 48, dtype=np.uint8).reshape(48, 48) % 4).copy()
    face = Face(
        box=[1, 2, 30, 30], seg=seg, probs=[0.25, 0.75], emotion="happy", confidence=0.75, track=3,
        smoothed=[0.4, 0.6], emotion_raw="sad",
    )  # fmt: skip
    out = faces_of(decode(as_bytes(encode(Message(fields={FACES: [face, Face(box=[5, 5, 9, 9])]})))))
    assert len(out) == 2 and out[1] == Face(box=[5, 5, 9, 9])
    np.testing.assert_array_equal(out[0].seg, seg)
    assert (out[0].box, out[0].probs, out[0].emotion, out[0].confidence, out[0].track) == (
        [1, 2, 30, 30],
        [0.25, 0.75],
        "happy",
        0.75,
        3,
    )
    assert (out[0].smoothed, out[0].emotion_raw) == ([0.4, 0.6], "sad")


def test_a_frame_without_a_detector_has_no_faces():
    assert faces_of(Message()) == []


def test_contract_names_are_the_record_fields():
    from stages.classify import Classify
    from stages.detect import Detect
    from stages.segment import Segment
    from stages.track import Track

    for cls in (Detect, Segment, Classify, Track):
        assert cls.provides <= FACE_FIELDS, cls


def header(faces) -> bytes:
    return msgpack.packb(
        {"v": FORMAT_VERSION, "kind": "frame", "stream": "s", "seq": 0, "ts": 0.0, "media_ts": 0.0, "fields": {FACES: faces}}
    )


@pytest.mark.parametrize(
    ("faces", "fragment"),
    [
        ([{"box": [1, 2]}], "faces[0]: needs a box"),
        ([{"box": [0, 0, 0, 5]}], "has no area"),
        ([{"box": [0, 0, 2**63, 5]}], "needs a box"),
        ([{"box": [0, 0, 1, 1]}] * 300, "at most 256"),
        ([{"box": [0, 0, 1, 1], "colour": 1}], "unknown keys ['colour']"),
        ([{"box": [0, 0, 1, 1], "probs": [float("nan")]}], "probs: expected 1..64 probabilities"),
        ([{"box": [0, 0, 1, 1], "probs": [0.5] * 65}], "probs: expected 1..64 probabilities"),
        ([{"box": [0, 0, 1, 1], "confidence": 2.0}], "confidence: expected a number in 0..1"),
        ([{"box": [0, 0, 1, 1], "track": -1}], "track: expected a non-negative integer"),
        ([{"box": [0, 0, 1, 1], "emotion": ""}], "emotion: expected a label"),
        ([{"box": [0, 0, 1, 1], "seg": {"buf": 1, "shape": [48, 48], "dtype": "uint8"}}], "buffer 1 missing"),
        (["box"], "faces[0]: expected a map"),
        ({"box": 1}, "expected a list"),
    ],
)
def test_malformed_faces_raise_a_message_error_naming_the_problem(faces, fragment):
    with pytest.raises(MessageError) as err:
        decode([header(faces)])
    assert fragment in str(err.value)


def test_a_face_budget_takes_every_face_in_turn():
    faces = [Face(box=[i, 0, 10, 10]) for i in range(7)]
    taken: dict[int, int] = {}
    for seq in range(70):
        chosen = faces_in_budget(Message(seq=seq, fields={FACES: faces}), 3)
        assert len(chosen) == 3 and len({id(f) for f in chosen}) == 3
        for f in chosen:
            taken[f.box[0]] = taken.get(f.box[0], 0) + 1
    assert sorted(taken) == list(range(7)) and max(taken.values()) - min(taken.values()) <= 1  # 30 each
    assert faces_in_budget(Message(seq=5, fields={FACES: faces}), None) == faces
    assert faces_in_budget(Message(seq=5, fields={FACES: faces[:2]}), 3) == faces[:2]
