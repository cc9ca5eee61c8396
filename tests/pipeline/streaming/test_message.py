import msgpack
import numpy as np
import pytest

from pipeline.errors import MessageError
from pipeline.streaming.message import Message, decode, encode, register_field
from tests.faults.messages import header as a_header


class MarksCodec:
    """A field of this test only: a label map and a list of scores (the framework knows no field itself)."""

    def to_wire(self, value, add_array):
        return {"map": add_array(value["map"]), "scores": value["scores"]}

    def from_wire(self, data, read_array, where):
        if not isinstance(data.get("scores"), list):
            raise ValueError("scores must be a list")
        return {"map": read_array(data["map"], f"{where}.map"), "scores": data["scores"]}


register_field("test_marks", MarksCodec())


def frame_message() -> Message:
    image = np.random.default_rng(0).integers(0, 255, (36, 64, 3), dtype=np.uint8)
    seg = np.arange(48 * 48, dtype=np.uint8).reshape(48, 48) % 4
    return Message(
        stream="cam",
        seq=7,
        ts=12.5,
        media_ts=0.2336,
        stamps={"capture": 12.6},
        image=image,
        fields={"test_marks": {"map": seg, "scores": [0.5, 0.5]}},
        meta={"fps": 25.0},
    )


def as_bytes(frames) -> list[bytes]:
    return [bytes(f) for f in frames]


def test_raw_round_trip_keeps_every_field():
    msg = frame_message()
    out = decode(as_bytes(encode(msg)))
    assert (out.kind, out.stream, out.seq, out.ts, out.media_ts, out.stamps, out.meta) == (
        "frame",
        "cam",
        7,
        12.5,
        0.2336,
        {"capture": 12.6},
        {"fps": 25.0},
    )
    np.testing.assert_array_equal(out.image, msg.image)
    np.testing.assert_array_equal(out.fields["test_marks"]["map"], msg.fields["test_marks"]["map"])
    assert out.fields["test_marks"]["scores"] == [0.5, 0.5]


def test_raw_image_is_not_copied_into_the_header():
    frames = encode(frame_message())
    assert len(frames[0]) < 500  # the image travels as its own buffer
    assert frames[1].nbytes == 36 * 64 * 3


def test_jpeg_round_trip_is_close():
    msg = frame_message()
    msg.image = np.full((64, 64, 3), 120, np.uint8)
    out = decode(as_bytes(encode(msg, image_codec="jpeg")))
    assert out.image.shape == (64, 64, 3)
    assert np.abs(out.image.astype(int) - 120).max() <= 3


def test_end_of_stream_round_trip():
    out = decode(as_bytes(encode(Message.eos("cam", 464, "capture:0"))))
    assert out.is_eos and out.stream == "cam" and out.seq == 464 and out.image is None and out.sender == "capture:0"


def header(**changes) -> bytes:
    return msgpack.packb(a_header(**{"stream": "s", "ts": 0.0, **changes}))


@pytest.mark.parametrize(
    ("frames", "fragment"),
    [
        ([], "empty"),
        ([b"\xc1\xc1garbage"], "not valid msgpack"),
        ([msgpack.packb([1, 2])], "must be a map"),
        ([header(v=99)], "format version 99"),
        ([header(kind="video")], "kind 'video'"),
        ([header(seq="x")], "seq: expected an integer"),
        ([header(seq=float("inf"))], "seq: expected an integer"),
        ([header(seq=-1)], "seq: expected an integer"),
        ([header(ts=float("nan"))], "ts: expected a finite number"),
        ([header(media_ts=float("inf"))], "media_ts: expected a finite number"),
        ([header(media_ts="1.5")], "media_ts: expected a finite number"),
        ([header(media_ts=None)], "media_ts: expected a finite number"),
        ([header(stamps={"x": "y"})], "stamps['x']: expected a finite number"),
        ([header(stamps=[1])], "stamps: expected a map"),
        ([header(stream=5)], "stream: expected a string"),
        ([header(fields={"nobody": 1})], "unknown field 'nobody'"),
        ([header(fields={"test_marks": {"scores": 3}})], "test_marks: scores must be a list"),
        ([header(fields={"test_marks": []})], "malformed message"),
        ([header(image={"buf": 1, "shape": [float("inf"), 2, 3], "dtype": "uint8"}), b""], "shape: expected an integer"),
        ([header(image={"buf": 1, "shape": [2**32, 2**32, 3], "dtype": "uint8"}), b""], "shape: expected an integer"),
        ([header(image={"buf": 1, "shape": [2, 2, 3], "dtype": "uint8", "codec": "jpeg"}), b""], "JPEG does not decode"),
        ([header(image={"buf": 1, "shape": [2, 2, 3], "dtype": "uint8", "codec": "jpeg"}), b"\xff\xd8junk"], "JPEG"),
        ([header(image={"buf": 1, "shape": [2, 2, 3], "dtype": "uint8"})], "buffer 1 missing"),
        ([header(image={"buf": 1, "shape": [2, 2, 3], "dtype": "uint8"}), b"short"], "needs 12"),
        ([header(image={"buf": 1, "shape": [1, 1, 3], "dtype": "object"}), b"abc"], "dtype 'object' not allowed"),
        ([header(image={"buf": 1, "shape": [1, 3], "dtype": "uint8"}), b"abc"], "expected uint8 (H, W, 3)"),
        ([b"\x00" * (2 << 20)], "exceeds"),
    ],
)
def test_malformed_messages_raise_a_message_error_naming_the_problem(frames, fragment):
    with pytest.raises(MessageError) as err:
        decode(frames)
    assert fragment in str(err.value)
