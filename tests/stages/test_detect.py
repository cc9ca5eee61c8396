import cv2
import numpy as np
import pytest

from pipeline.streaming.message import Message
from pipeline.vision.record import FACES
from stages.detect import DEFAULT_CASCADE, Detect, DetectParams, detect_faces, load_cascade, resolve_cascade

# Expected counts from shared/data/faces/SOURCE.md (default cascade, scaleFactor 1.1, minNeighbors 5).
EXPECTED = {
    "deepface_img5.jpg": 1,
    "deepface_img12.jpg": 1,
    "deepface_img25.jpg": 1,
    "deepface_img50.jpg": 1,
    "face_recognition_obama_small.jpg": 1,
    "face_recognition_two_people.jpg": 2,
    "fer_justin.jpg": 1,
    "NEGATIVE_fer_no-faces.jpg": 0,
}


@pytest.fixture(scope="module")
def cascade():
    return load_cascade(DEFAULT_CASCADE)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_face_counts_on_real_photos(faces_dir, cascade, name):
    gray = cv2.imread(str(faces_dir / name), cv2.IMREAD_GRAYSCALE)
    boxes = detect_faces(gray, cascade, min_size=24, detect_width=None, equalize=False)
    assert len(boxes) == EXPECTED[name]


def test_downscaled_detection_returns_boxes_in_original_coordinates(faces_dir, cascade):
    gray = cv2.imread(str(faces_dir / "face_recognition_two_people.jpg"), cv2.IMREAD_GRAYSCALE)
    full = detect_faces(gray, cascade, min_size=24, detect_width=None, equalize=False)
    small = detect_faces(gray, cascade, min_size=24, detect_width=400, equalize=False)
    assert len(small) == 2
    for a, b in zip(sorted(full), sorted(small)):
        centre_a = np.array([a[0] + a[2] / 2, a[1] + a[3] / 2])
        centre_b = np.array([b[0] + b[2] / 2, b[1] + b[3] / 2])
        assert np.linalg.norm(centre_a - centre_b) < 0.2 * a[2]


def test_blank_image_has_no_face(cascade):
    assert detect_faces(np.full((240, 320), 128, np.uint8), cascade) == []


def test_boxes_are_largest_first(faces_dir, cascade):
    gray = cv2.imread(str(faces_dir / "deepface_selfie-many-people.jpg"), cv2.IMREAD_GRAYSCALE)
    boxes = detect_faces(gray, cascade, detect_width=None)
    areas = [w * h for _, _, w, h in boxes]
    assert len(boxes) >= 3 and areas == sorted(areas, reverse=True)


def test_unknown_cascade_is_a_clear_error():
    with pytest.raises(ValueError, match="neither a file nor one of OpenCV's"):
        resolve_cascade("haarcascade_nope.xml")


# --- the stage: full scan for still images, scheduling for video ------------------------------


def started(**params) -> Detect:
    stage = Detect(DetectParams(**params), name="detect")
    stage.on_start()
    return stage


def frame_of(faces_dir, name="face_recognition_two_people.jpg", still=False) -> Message:
    image = cv2.imread(str(faces_dir / name), cv2.IMREAD_COLOR)
    return Message(image=image, stream="s", meta={"kind": "folder"} if still else {})


def test_a_still_image_gets_a_full_scan_on_its_one_frame(faces_dir):
    stage = started(min_hits=3)
    assert len(stage.process(frame_of(faces_dir, still=True)).fields[FACES]) == 2


def test_full_scans_search_a_finer_pyramid_than_video(faces_dir, monkeypatch):
    stage = started(scale_factor=1.3, full_scale_factor=1.1)
    steps = []
    real = stage.finder.search
    monkeypatch.setattr(
        stage.finder, "search", lambda gray, slices, step=None, **kw: steps.append(step) or real(gray, slices, step, **kw)
    )
    stage.process(frame_of(faces_dir, still=True))
    stage.process(frame_of(faces_dir))
    assert steps == [1.1, None]  # the still image at 1.1; the video frame at the finder's own 1.3


def test_full_mode_scans_every_frame_whole(faces_dir):
    stage = started(mode="full")
    assert len(stage.process(frame_of(faces_dir)).fields[FACES]) == 2


def test_video_mode_reports_a_face_after_min_hits_frames_of_a_cycle(faces_dir):
    stage = started(min_hits=3)
    counts = [len(stage.process(frame_of(faces_dir)).fields[FACES]) for _ in range(12)]
    cycle = stage.finder.plan(frame_of(faces_dir).image.shape).cycle
    assert counts[:2] == [0, 0] and counts[cycle + 2 :] == [2] * (12 - cycle - 2), (counts, cycle)


def test_video_state_is_kept_per_stream_and_dropped_at_end_of_stream(faces_dir):
    stage = started(min_hits=1, mode="video", scan_pixels=10_000_000)
    msg = stage.process(frame_of(faces_dir))
    assert len(msg.fields[FACES]) == 2 and set(stage._scanners) == {"s"}
    other = frame_of(faces_dir)
    other.stream = "t"
    stage.process(other)
    assert set(stage._scanners) == {"s", "t"}
    stage.on_eos(Message(stream="s"))
    assert set(stage._scanners) == {"t"}


def test_verify_none_and_bad_params_are_checked():
    assert DetectParams(verify="none").verify == "none"
    with pytest.raises(ValueError, match="verify"):
        DetectParams(verify="alt3")
    with pytest.raises(ValueError, match="mode"):
        DetectParams(mode="sometimes")
