import cv2
import numpy as np

from pipeline.vision.recording import SegmentedVideo
from pipeline.vision.video import video_codec


def frame(i: int) -> np.ndarray:
    """Frame ``i``: black with a white bar at x = 8 i."""
    image = np.zeros((48, 416, 3), np.uint8)
    image[:, 8 * i : 8 * i + 8] = 255
    return image


def read_back(path) -> list[int]:
    """The frame numbers of a video of ``frame(i)``s, read from where their bars are."""
    cap = cv2.VideoCapture(str(path))
    numbers = []
    while (read := cap.read())[0]:
        numbers.append(int(read[1].mean(axis=(0, 2)).argmax()) // 8)
    return numbers


def test_segments_of_two_starts_are_joined_in_order_without_re_encoding(tmp_path):
    path = tmp_path / "annotated.mp4"
    first = SegmentedVideo(path, "h264", 30.0, start=0, segment_frames=7)
    for i in range(20):  # three segments, the last one open when the worker is "killed"
        first.write(frame(i))
    first._close_segment()  # the killed worker's closed segments survive; here all three
    restarted = SegmentedVideo(path, "h264", 30.0, start=1, segment_frames=7)
    for i in range(20, 50):
        restarted.write(frame(i))
    (restarted.parts / "000-999999.mp4").write_bytes(b"\0\0\0\x18ftypisom")  # a segment a kill left unfinished
    assert restarted.finish() == 50
    assert video_codec(path) == "h264" and read_back(path) == list(range(50))
    assert not restarted.parts.exists()
    cap = cv2.VideoCapture(str(path))
    assert abs(cap.get(cv2.CAP_PROP_FRAME_COUNT) / cap.get(cv2.CAP_PROP_FPS) - 50 / 30) < 0.05  # timestamps continue


def test_other_codecs_are_re_encoded(tmp_path):
    video = SegmentedVideo(tmp_path / "annotated.avi", "MJPG", 30.0, segment_frames=5)
    for i in range(12):
        video.write(frame(i))
    assert video.finish() == 12 and read_back(tmp_path / "annotated.avi") == list(range(12))


def test_segments_that_are_all_unreadable_join_to_nothing(tmp_path):
    video = SegmentedVideo(tmp_path / "annotated.mp4", "h264", 30.0)
    (video.parts / "000-000000.mp4").write_bytes(b"\0\0\0\x18ftypisom")  # the only segment, unfinished
    assert video.finish() == 0 and not (tmp_path / "annotated.mp4").exists()
