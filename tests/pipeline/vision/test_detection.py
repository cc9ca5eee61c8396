import cv2
import numpy as np
import pytest

from pipeline.vision.detection import (
    DEFAULT_CASCADE,
    VERIFY_CASCADE,
    detect_faces,
    detect_region,
    load_cascade,
    plausible_boxes,
    scored_region,
    suppress_duplicates,
    verify_faces,
    window_size,
)
from pipeline.vision.detection_eval import load_annotations, match
from tests.pipeline.vision.face_patch import background, face_patch, paste


@pytest.fixture(scope="module")
def cascade():
    return load_cascade(DEFAULT_CASCADE)


@pytest.fixture(scope="module")
def alt2():
    return load_cascade(VERIFY_CASCADE)


def test_window_sizes_of_the_bundled_cascades(cascade, alt2):
    assert (window_size(cascade), window_size(alt2)) == (24, 20)


def test_detect_region_finds_a_face_and_returns_frame_coordinates(faces_dir, cascade):
    patch, (fx, fy, fw, _) = face_patch(faces_dir, 80)
    frame = paste(background(360, 640), patch, (400, 150))
    found = detect_region(frame, cascade, (300, 50, 640, 360), scale=2.0, sides=(48, 96), min_neighbors=3)
    assert len(found) == 1
    x, y, w, h = found[0]
    assert abs(x - (400 + fx)) < 0.2 * fw and abs(y - (150 + fy)) < 0.2 * fw and 0.8 * fw < w < 1.25 * fw


def test_detect_region_ignores_faces_outside_its_size_band(faces_dir, cascade):
    patch, _ = face_patch(faces_dir, 80)
    frame = paste(background(360, 640), patch, (400, 150))
    assert detect_region(frame, cascade, (0, 0, 640, 360), scale=1.0, sides=(24, 48), min_neighbors=3) == []
    assert detect_region(frame, cascade, (0, 0, 640, 360), scale=6.0, sides=(144, np.inf), min_neighbors=3) == []


def test_a_blanked_known_face_is_not_searched_and_the_frame_is_untouched(faces_dir, cascade):
    patch, _ = face_patch(faces_dir, 80)
    frame = paste(paste(background(360, 640), patch, (60, 150)), patch, (400, 150))
    before = frame.copy()
    both = [b for b, _ in scored_region(frame, cascade, (0, 0, 640, 360), 2.0, (48, 96), min_neighbors=3)]
    assert len(both) == 2
    known = max(both, key=lambda b: b[0])
    rest = [b for b, _ in scored_region(frame, cascade, (0, 0, 640, 360), 2.0, (48, 96), 1.2, 3, blank=[known])]
    assert rest == [min(both, key=lambda b: b[0])]  # the other face is still found
    assert np.array_equal(frame, before)  # blanking works on a copy
    # A region searched at scale 1 is a view of the frame: still untouched.
    scored_region(frame, cascade, (300, 100, 560, 300), 1.0, (48, 96), 1.2, 3, blank=[known])
    assert np.array_equal(frame, before)


def test_verify_keeps_a_real_face_and_drops_a_box_on_texture(faces_dir, alt2):
    patch, (fx, fy, fw, fh) = face_patch(faces_dir, 60)
    frame = paste(background(360, 640), patch, (100, 100))
    face, texture = [100 + fx, 100 + fy, fw, fh], [400, 200, 60, 60]
    assert verify_faces(frame, [face, texture], alt2) == [face]
    assert verify_faces(frame, [], alt2) == []


def test_verify_handles_boxes_at_the_frame_edge(faces_dir, alt2):
    patch, (fx, fy, fw, fh) = face_patch(faces_dir, 60)
    frame = paste(background(200, 300), patch, (0, 0))
    assert verify_faces(frame, [[fx, fy, fw, fh], [280, 180, 40, 40]], alt2) == [[fx, fy, fw, fh]]


def test_the_second_look_raises_precision_on_wider_photos_and_keeps_most_faces(wider_dir, cascade, alt2):
    """A permissive scan (min_neighbors 2) on 12 WIDER photos, before and after verify_faces."""
    hits, false = np.zeros(2, int), np.zeros(2, int)  # [before, after]
    for name, truth in list(load_annotations(wider_dir).items())[:12]:
        gray = cv2.equalizeHist(cv2.imread(str(wider_dir / name), cv2.IMREAD_GRAYSCALE))
        candidates = detect_faces(gray, cascade, 1.2, 2, 24, None, equalize=False)
        for i, boxes in enumerate((candidates, verify_faces(gray, candidates, alt2))):
            result = match(boxes, truth.faces, truth.ignores)
            hits[i] += result.hits
            false[i] += result.false_positives
    assert false[1] <= false[0] / 3, (hits, false)
    assert hits[1] >= 0.85 * hits[0], (hits, false)


def test_plausible_boxes_drop_impossible_geometry():
    shape = (360, 640)
    good = [100, 100, 40, 40]
    elongated, too_big, mostly_outside = [10, 10, 40, 100], [0, 0, 380, 380], [620, 100, 60, 60]
    assert plausible_boxes([good, elongated, too_big, mostly_outside], shape) == [good]


def test_suppress_duplicates_keeps_the_largest_of_overlapping_boxes():
    big, small, apart = [100, 100, 48, 48], [104, 104, 40, 40], [300, 100, 40, 40]
    assert suppress_duplicates([small, apart, big]) == [big, apart]


def test_a_false_box_covering_a_small_face_does_not_hide_it():
    loose, face = [0, 0, 200, 200], [80, 80, 30, 30]
    assert suppress_duplicates([face, loose]) == [loose, face]
