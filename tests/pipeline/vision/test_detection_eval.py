import cv2
import numpy as np
import pytest

from pipeline.vision.detection_eval import evaluate_detect, iou, load_annotations, match, size_band
from stages.detect import DEFAULT_CASCADE, detect_faces, load_cascade

FACE = [100, 100, 50, 60]


def test_iou_of_identical_disjoint_and_half_overlapping_boxes():
    assert iou(FACE, FACE) == pytest.approx(1.0)
    assert iou(FACE, [300, 300, 50, 60]) == 0.0
    assert iou([0, 0, 10, 10], [5, 0, 10, 10]) == pytest.approx(50 / 150)


def test_a_loose_box_on_the_face_is_a_hit():
    result = match([[95, 90, 60, 75]], [FACE])
    assert result.face_hit == [True]
    assert (result.hits, result.false_positives, result.ignored) == (1, 0, 0)


def test_no_detection_is_a_miss():
    result = match([], [FACE])
    assert result.face_hit == [False]
    assert (result.hits, result.false_positives) == (0, 0)


def test_a_box_off_the_face_is_a_false_positive_and_a_miss():
    result = match([[400, 400, 50, 50]], [FACE])
    assert result.face_hit == [False]
    assert result.detection_kind == ["fp"]


def test_a_box_overlapping_the_face_too_little_does_not_count():
    result = match([[125, 100, 50, 60]], [FACE])  # IoU 1/3
    assert result.detection_kind == ["fp"]
    assert result.hits == 0


def test_a_detection_on_an_ignore_region_is_neither_hit_nor_false_positive():
    small_face = [300, 300, 15, 18]
    by_centre = [296, 296, 24, 24]  # IoU about 0.47, centre inside
    centre_inside_low_iou = [290, 290, 40, 40]  # IoU 0.17, centre (310, 310) inside
    result = match([by_centre, centre_inside_low_iou, [600, 600, 30, 30]], [FACE], [small_face])
    assert result.detection_kind == ["ignored", "ignored", "fp"]
    assert (result.hits, result.false_positives, result.ignored) == (0, 1, 2)


def test_a_detection_matching_a_face_is_a_hit_even_inside_an_ignore_region():
    result = match([FACE], [FACE], [[90, 90, 80, 80]])
    assert result.detection_kind == ["hit"]


def test_two_detections_on_one_face_are_one_hit_and_one_false_positive():
    result = match([[98, 98, 54, 64], [100, 102, 50, 60]], [FACE])
    assert result.hits == 1
    assert result.false_positives == 1
    assert result.detection_kind == ["fp", "hit"]  # the better overlap wins


def test_greedy_matching_pairs_each_detection_with_its_own_face():
    faces = [[0, 0, 40, 40], [30, 0, 40, 40]]
    detections = [[28, 0, 40, 40], [2, 0, 40, 40]]
    result = match(detections, faces)
    assert result.face_hit == [True, True]
    assert result.detection_kind == ["hit", "hit"]


def test_size_bands():
    assert size_band(19) is None
    assert size_band(20) == "20-30"
    assert size_band(59.9) == "40-60"
    assert size_band(200) == ">=200"


def _write_dataset(root, faces, ignores, empty_images=()):
    (root / "images" / "ev").mkdir(parents=True)
    header = "image,img_width,img_height,x,y,w,h"
    rows, ignore_rows = [header], [header + ",reason"]
    for name in sorted({n for n, _ in faces} | {n for n, _ in ignores} | set(empty_images)):
        cv2.imwrite(str(root / name), np.zeros((200, 300), np.uint8))
    rows += [f"{n},300,200,{','.join(map(str, b))}" for n, b in faces]
    ignore_rows += [f"{n},300,200,{','.join(map(str, b))},small" for n, b in ignores]
    (root / "boxes.csv").write_text("\n".join(rows) + "\n")
    (root / "ignore_boxes.csv").write_text("\n".join(ignore_rows) + "\n")


def test_evaluate_detect_counts_hits_false_positives_and_sizes(tmp_path):
    faces = [
        ("images/ev/a.jpg", [10, 10, 25, 25]),
        ("images/ev/a.jpg", [100, 50, 120, 120]),
        ("images/ev/b.jpg", [50, 50, 45, 45]),
    ]
    ignores = [("images/ev/b.jpg", [200, 20, 12, 12])]
    _write_dataset(tmp_path, faces, ignores, empty_images=["images/ev/c.jpg"])
    answers = iter(
        [
            [[100, 50, 120, 120], [5, 150, 30, 30]],  # a: one hit, one FP, the 25-px face missed
            [[50, 50, 45, 45], [198, 18, 16, 16]],  # b: one hit, one on the ignore region
            [[0, 0, 40, 40]],  # c (no faces): one FP
        ]
    )
    result = evaluate_detect(tmp_path, lambda gray: next(answers), settings={"name": "oracle"})
    assert load_annotations(tmp_path)["images/ev/c.jpg"].faces == []
    assert result["n_images"] == 3
    assert result["n_faces"] == 3
    assert (result["hits"], result["false_positives"], result["ignored"]) == (2, 2, 1)
    assert result["recall"] == pytest.approx(2 / 3)
    assert result["precision"] == pytest.approx(0.5)
    assert result["per_size"]["20-30"] == {"n": 1, "hits": 0, "recall": 0.0}
    assert result["per_size"]["100-200"]["recall"] == 1.0
    assert result["per_size"][">=200"]["recall"] is None
    assert result["settings"] == {"name": "oracle"}
    assert result["ms_per_image"] >= 0


def test_evaluate_detect_on_the_first_wider_photos_with_the_shipped_haar_settings(wider_dir):
    """The first 3 photos hold one face each (22, 115 and >= 200 px wide); the shipped
    settings (240-px copy, min size 80) find the two large ones and nothing else."""
    classifier = load_cascade(DEFAULT_CASCADE)
    settings = {"scale_factor": 1.15, "min_neighbors": 5, "min_size": 80, "detect_width": 240}
    result = evaluate_detect(wider_dir, lambda gray: detect_faces(gray, classifier, **settings), limit=3, settings=settings)
    assert result["n_images"] == 3
    assert result["n_faces"] == 3
    assert result["hits"] == 2
    assert result["false_positives"] == 0
    assert result["per_size"]["20-30"] == {"n": 1, "hits": 0, "recall": 0.0}
    assert result["precision"] == 1.0
    assert result["settings"] == settings


def test_the_full_wider_set_has_the_documented_face_count(wider_dir):
    annotations = load_annotations(wider_dir)
    assert len(annotations) == 279
    assert sum(len(t.faces) for t in annotations.values()) == 1137
    assert sum(len(t.ignores) for t in annotations.values()) == 204
