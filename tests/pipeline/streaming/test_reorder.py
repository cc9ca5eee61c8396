import time

from pipeline.streaming import reorder
from pipeline.streaming.message import Message
from pipeline.streaming.reorder import ReorderBuffer


def msg(seq: int, stream: str = "s") -> Message:
    return Message(stream=stream, seq=seq)


def seqs(messages) -> list[int]:
    return [m.seq for m in messages]


def test_out_of_order_frames_come_out_in_order():
    buf = ReorderBuffer()
    out = []
    for seq in [1, 0, 3, 2, 5, 4]:
        ready, late = buf.push(msg(seq))
        out += ready
        assert late == 0
    assert seqs(out) == [0, 1, 2, 3, 4, 5]


def test_streams_are_independent():
    buf = ReorderBuffer()
    assert seqs(buf.push(msg(1, "a"))[0]) == []
    assert seqs(buf.push(msg(0, "b"))[0]) == [0]
    assert seqs(buf.push(msg(0, "a"))[0]) == [0, 1]


def test_a_gap_is_skipped_when_the_buffer_is_full_and_late_frames_are_dropped():
    buf = ReorderBuffer(capacity=3)
    out = []
    for seq in [1, 2, 3]:
        out += buf.push(msg(seq))[0]
    assert out == []
    out += buf.push(msg(4))[0]  # four held > capacity: frame 0 is given up
    assert seqs(out) == [1, 2, 3, 4]
    assert buf.push(msg(0)) == ([], 1)


def test_a_gap_is_skipped_after_the_wait_limit():
    buf = ReorderBuffer(max_wait_s=0.05)
    buf.push(msg(1))
    assert buf.expired() == []
    time.sleep(0.08)
    assert seqs(buf.expired()) == [1]


def test_flush_releases_everything_held_in_order():
    buf = ReorderBuffer()
    for seq in [4, 2, 3]:
        buf.push(msg(seq))
    assert seqs(buf.flush("s")) == [2, 3, 4]


def test_a_stream_joined_mid_way_starts_at_its_lowest_frame(monkeypatch):
    monkeypatch.setattr(reorder, "START_WAIT_S", 0.05)
    buf = ReorderBuffer(max_wait_s=10.0)  # lossless links: a gap is waited for long, a start is not
    assert buf.push(msg(501))[0] == [] and buf.push(msg(502))[0] == []
    assert buf.expired() == []
    assert seqs(buf.push(msg(500))[0]) == []  # a lower frame within the start wait still counts
    time.sleep(0.08)
    assert seqs(buf.expired()) == [500, 501, 502]
    assert buf.push(msg(499)) == ([], 1)  # after the start: late
    assert seqs(buf.push(msg(503))[0]) == [503]


def test_a_stream_whose_frame_0_arrives_starts_at_once():
    buf = ReorderBuffer(max_wait_s=10.0)
    assert seqs(buf.push(msg(0))[0]) == [0]
    assert seqs(buf.push(msg(2))[0]) == []
    assert seqs(buf.push(msg(1))[0]) == [1, 2]
