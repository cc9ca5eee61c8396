import json

import cv2
import numpy as np
import pytest

from pipeline.tools.clips import View, clip_frames, frame_truth, make_clip, map_box, parse_size, read_truth, render_view
from pipeline.vision.detection_eval import ImageTruth, load_annotations


def square_photo() -> tuple[np.ndarray, list[int]]:
    photo = np.zeros((600, 800, 3), np.uint8)
    box = [300, 200, 80, 80]
    photo[200:280, 300:380] = 255
    return photo, box


@pytest.mark.parametrize("size", [(1280, 720), (320, 180)])
def test_boxes_follow_the_photo_through_pan_and_zoom(size):
    photo, box = square_photo()
    rng = np.random.default_rng(3)
    seen = 0
    for frame, truth in clip_frames(photo, ImageTruth([box]), size, 40, rng):
        gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        for x, y, w, h in truth.faces:
            inner = gray[y + 2 : y + h - 2, x + 2 : x + w - 2]
            assert inner.mean() > 240  # the white square is where the box says
            ring = gray[max(0, y - 6) : y + h + 6, max(0, x - 6) : x + w + 6]
            assert ring.sum() - gray[y : y + h, x : x + w].sum() < 0.1 * 255 * (ring.size - w * h)  # and not beyond
            seen += 1
    assert seen > 0


def test_a_centred_view_maps_the_photo_centre_to_the_frame_centre():
    photo, _ = square_photo()
    _, transform = render_view(photo, View(400, 300, 400), (1280, 720))
    x, y, w, h = map_box([390, 290, 20, 20], transform)
    assert (x + w / 2, y + h / 2) == pytest.approx((640, 360)) and w == pytest.approx(64)


def test_small_and_cut_faces_become_dont_care_regions():
    transform = (1.0, 1.0, 0.0, 0.0)
    truth = frame_truth(
        ImageTruth([[10, 10, 40, 40], [5, 5, 15, 15], [300, 10, 40, 40]], [[50, 50, 30, 30]]), transform, (320, 180)
    )
    assert truth.faces == [[10, 10, 40, 40]]
    assert truth.ignores == [[5, 5, 15, 15], [300, 10, 20, 40], [50, 50, 30, 30]]


def test_boxes_follow_a_real_photo(wider_dir):
    name, truth = next((n, t) for n, t in load_annotations(wider_dir).items() if t.faces and t.faces[0][2] >= 60)
    photo = cv2.imread(str(wider_dir / name), cv2.IMREAD_GRAYSCALE)
    x, y, w, h = truth.faces[0]
    face = photo[y : y + h, x : x + w].astype(np.float32)
    start = View(x + w / 2, y + h / 2, min(photo.shape[1], photo.shape[0] * 16 / 9) * 0.6)
    for step in (0, 15, 30):
        view = View(start.cx + step, start.cy - step / 2, start.width * (1 - step / 100))
        frame, transform = render_view(photo, view, (640, 360))
        fx, fy, fw, fh = (round(v) for v in map_box(truth.faces[0], transform))
        seen = cv2.resize(frame[fy : fy + fh, fx : fx + fw], (w, h)).astype(np.float32)
        assert np.corrcoef(seen.ravel(), face.ravel())[0, 1] > 0.9


def test_make_clip_writes_video_boxes_and_a_record(wider_dir, tmp_path):
    video, boxes = make_clip(wider_dir, tmp_path / "c", (320, 180), photos=2, seconds=0.4, fps=10, seed=5)
    cap = cv2.VideoCapture(str(video))
    assert cap.get(cv2.CAP_PROP_FRAME_COUNT) == 8 and (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (
        320,
        180,
    )
    truth = read_truth(boxes)
    assert set(truth) <= set(range(8))
    record = json.loads((tmp_path / "c.json").read_text())
    assert record["frames"] == 8 and len(record["photos"]) == 2


def test_parse_size():
    assert parse_size("1280x720") == (1280, 720)
    with pytest.raises(ValueError, match="WIDTHxHEIGHT"):
        parse_size("1280")
