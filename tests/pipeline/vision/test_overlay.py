"""The overlay reads on any background, scales with the face, and explains its colours; videos play in browsers."""

import cv2
import numpy as np
import pytest

from pipeline.vision.emotions import EMOTIONS, bgr
from pipeline.vision.overlay import draw_faces, ink
from pipeline.vision.record import Face
from pipeline.vision.video import H264Writer, open_video, video_codec

PROBS = [0.05, 0.05, 0.05, 0.6, 0.1, 0.05, 0.1]


def face(size: int, x: int = 40, y: int = 60) -> Face:
    return Face(box=[x, y, size, size], emotion="happy", confidence=0.6, track=3, probs=PROBS)


def changed(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    return np.abs(after.astype(int) - before.astype(int)).sum(axis=2) > 0


@pytest.mark.parametrize("level", [0, 255])
def test_label_and_bars_sit_on_filled_boxes_on_black_and_white(level):
    image = np.full((360, 640, 3), level, np.uint8)
    out = draw_faces(image, [face(120)], list(EMOTIONS), legend=False)
    # The label box above the face is filled with the label's colour (not drawn as bare text).
    label_area = out[40:58, 42:120].reshape(-1, 3)
    assert (np.abs(label_area.astype(int) - bgr("happy")).sum(axis=1) < 30).mean() > 0.5
    # The bar panel right of the face is dark on a white frame too, so its white names read.
    panel = out[60:180, 165:175]
    assert np.median(panel) < 120


def test_ink_contrasts_with_its_fill():
    assert ink(bgr("happy")) == (0, 0, 0) and ink(bgr("sad")) == (255, 255, 255)


def test_bars_scale_with_the_face():
    image = np.full((720, 1280, 3), 128, np.uint8)
    small = changed(image, draw_faces(image, [face(60)], list(EMOTIONS), legend=False)).sum()
    large = changed(image, draw_faces(image, [face(240)], list(EMOTIONS), legend=False)).sum()
    assert large > 4 * small


def test_bars_flip_left_at_the_right_edge():
    image = np.full((360, 640, 3), 128, np.uint8)
    out = draw_faces(image, [face(120, x=500)], list(EMOTIONS), legend=False)
    assert changed(image, out)[60:180, 380:495].any() and not changed(image, out)[200:, :].any()


def test_legend_shows_every_class_colour():
    image = np.full((336, 596, 3), 255, np.uint8)
    out = draw_faces(image, [], list(EMOTIONS))
    bottom = out[-60:].reshape(-1, 3).astype(int)
    for name in EMOTIONS:
        assert (np.abs(bottom - bgr(name)).sum(axis=1) < 10).sum() > 20, name


def test_h264_file_is_read_back_frame_for_frame(tmp_path):
    writer = open_video(tmp_path / "clip.mp4", 30.0, (65, 49))  # odd sides: cropped to even ones for yuv420p
    assert isinstance(writer, H264Writer)
    for i in range(20):
        writer.write(np.full((49, 65, 3), i * 10, np.uint8))
    writer.release()
    writer.release()  # twice is harmless (on_stop after a flush)
    assert video_codec(tmp_path / "clip.mp4") == "h264"
    cap = cv2.VideoCapture(str(tmp_path / "clip.mp4"))
    frames = []
    while (read := cap.read())[0]:
        frames.append(read[1])
    assert len(frames) == 20 and frames[0].shape == (48, 64, 3)
    assert [round(frames[i].mean() / 10) for i in (0, 5, 10)] == [0, 5, 10]  # in order (give or take YUV)
