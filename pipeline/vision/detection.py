"""Face detection with OpenCV's Haar cascades, as pure functions on gray arrays.

``detect_faces`` is the one-call detector (the whole frame, one image pyramid).
``detect_region`` looks for faces of a given size range in one part of a frame; the scan
plans of ``pipeline.vision.scan`` are made of such calls. ``verify_faces`` is the second look
that keeps a candidate only when a different cascade also sees a face there, and
``plausible_boxes`` drops boxes whose shape or size cannot be a face in this frame.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from pipeline.errors import ModelError
from pipeline.vision.detection_eval import iou

Box = list[int]  # [x, y, w, h] in frame pixels
DEFAULT_CASCADE = "haarcascade_frontalface_default.xml"
VERIFY_CASCADE = "haarcascade_frontalface_alt2.xml"


def resolve_cascade(cascade: str) -> Path:
    """A cascade file by path, or by name among OpenCV's bundled cascades."""
    path = Path(cascade)
    if path.is_file():
        return path
    bundled = Path(cv2.data.haarcascades) / cascade
    if bundled.is_file():
        return bundled
    raise ValueError(f"cascade {cascade!r} is neither a file nor one of OpenCV's in {cv2.data.haarcascades}")


def load_cascade(cascade: str) -> cv2.CascadeClassifier:
    """Load a cascade by name or path; ``ModelError`` when the file is not a cascade."""
    path = resolve_cascade(cascade)
    classifier = cv2.CascadeClassifier(str(path))
    if classifier.empty():
        raise ModelError(f"{path}: not a valid Haar cascade")
    return classifier


def window_size(classifier: cv2.CascadeClassifier) -> int:
    """The side of the cascade's detection window (24 px for the default cascade, 20 for alt2)."""
    w, h = classifier.getOriginalWindowSize()
    return max(int(w), int(h))


def detect_faces(
    gray: np.ndarray,
    classifier: cv2.CascadeClassifier,
    scale_factor: float = 1.1,
    min_neighbors: int = 5,
    min_size: int = 30,
    detect_width: int | None = 320,
    equalize: bool = True,
) -> list[Box]:
    """Face boxes ``[x, y, w, h]`` in ``gray``'s coordinates, largest first.

    Detection runs on a copy scaled to ``detect_width`` (Haar cost grows with the pixel
    count); boxes are scaled back to the original frame.
    """
    scale = 1.0
    small = gray
    if detect_width and gray.shape[1] > detect_width:
        scale = gray.shape[1] / detect_width
        small = cv2.resize(gray, (detect_width, round(gray.shape[0] / scale)), interpolation=cv2.INTER_AREA)
    if equalize:
        small = cv2.equalizeHist(small)
    side = max(8, round(min_size / scale))
    found = classifier.detectMultiScale(small, scaleFactor=scale_factor, minNeighbors=min_neighbors, minSize=(side, side))
    boxes = [[round(v * scale) for v in box] for box in (found if len(found) else [])]
    return sorted(boxes, key=lambda b: b[2] * b[3], reverse=True)


def detect_region(
    gray: np.ndarray,
    classifier: cv2.CascadeClassifier,
    region: Sequence[int],
    scale: float,
    sides: tuple[float, float],
    scale_factor: float = 1.2,
    min_neighbors: int = 2,
) -> list[Box]:
    """Faces whose side lies in ``sides`` (frame px, upper bound may be ``inf``) inside ``region``.

    The region ``[x0, y0, x1, y1]`` is cut out and shrunk by ``scale`` (frame px per searched
    px; below 1 it is enlarged) so that the smallest wanted face spans about the cascade's
    window: every face size costs about the same to search, whatever the frame resolution.

    Returns:
        Boxes in frame coordinates.
    """
    return [box for box, _ in scored_region(gray, classifier, region, scale, sides, scale_factor, min_neighbors)]


def scored_region(
    gray: np.ndarray,
    classifier: cv2.CascadeClassifier,
    region: Sequence[int],
    scale: float,
    sides: tuple[float, float],
    scale_factor: float = 1.2,
    min_neighbors: int = 2,
    blank: Sequence[Sequence[float]] = (),
) -> list[tuple[Box, int]]:
    """``detect_region`` with each box's neighbour count (the raw windows Haar grouped into it: its score).

    ``blank``: boxes (frame px) filled flat with their mean before searching: faces already
    known there. Windows on a face pass most of a cascade's stages, so a face costs Haar many
    times what background of its size does; a flat patch fails at the first stage.
    """
    x0, y0, x1, y1 = (int(v) for v in region)
    x0, y0 = max(0, x0), max(0, y0)
    crop = gray[y0:y1, x0:x1]
    if crop.shape[0] < 8 or crop.shape[1] < 8:
        return []
    size = (max(1, round(crop.shape[1] / scale)), max(1, round(crop.shape[0] / scale)))
    if size != (crop.shape[1], crop.shape[0]):
        crop = cv2.resize(crop, size, interpolation=cv2.INTER_AREA if scale > 1 else cv2.INTER_LINEAR)
    sx, sy = (x1 - x0) / size[0], (y1 - y0) / size[1]
    crop = _blanked(crop, [((b[0] - x0) / sx, (b[1] - y0) / sy, b[2] / sx, b[3] / sy) for b in blank])
    low = max(window_size(classifier), math.floor(sides[0] / scale))
    high = 0 if math.isinf(sides[1]) else math.ceil(sides[1] / scale)  # 0: no upper bound
    if high and high < low or min(size) < low:
        return []
    found, neighbours = classifier.detectMultiScale2(
        crop, scaleFactor=scale_factor, minNeighbors=min_neighbors, minSize=(low, low), maxSize=(high, high)
    )
    return [
        ([round(x0 + x * sx), round(y0 + y * sy), round(w * sx), round(h * sy)], int(n))
        for (x, y, w, h), n in zip(found, np.ravel(neighbours))
    ]


def _blanked(image: np.ndarray, boxes: Sequence[Sequence[float]]) -> np.ndarray:
    """``image`` with each box (its pixels) set to the box's mean; a copy if any box overlaps it."""
    height, width = image.shape[:2]
    spans = []
    for x, y, w, h in boxes:
        left, top = max(0, math.floor(x)), max(0, math.floor(y))
        right, bottom = min(width, math.ceil(x + w)), min(height, math.ceil(y + h))
        if right > left and bottom > top:
            spans.append((top, bottom, left, right))
    if not spans:
        return image
    image = image.copy()
    for top, bottom, left, right in spans:
        patch = image[top:bottom, left:right]
        patch[:] = int(patch.mean())
    return image


def padded_region(box: Sequence[float], pad: float, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """``box`` grown by ``pad`` times its width on each side, clipped to a frame of ``shape``."""
    x, y, w, h = box
    return (
        max(0, math.floor(x - pad * w)),
        max(0, math.floor(y - pad * h)),
        min(shape[1], math.ceil(x + w + pad * w)),
        min(shape[0], math.ceil(y + h + pad * h)),
    )


def verify_faces(
    gray: np.ndarray,
    boxes: Sequence[Box],
    classifier: cv2.CascadeClassifier,
    width: int = 48,
    pad: float = 0.3,
    scale_factor: float = 1.05,
    min_neighbors: int = 7,
    iou_min: float = 0.3,
) -> list[Box]:
    """The boxes that a second cascade also finds: a precision filter for a permissive detector.

    Each box is cut out with ``pad`` of its width around it, scaled so the box is ``width``
    px wide (every candidate is judged at the same resolution, cheap whatever its size), and
    searched with ``classifier`` (OpenCV's ``alt2`` cascade by default: trained differently
    from the default one, so the two rarely fire on the same background). A box is kept
    when some box found there overlaps it at IoU >= ``iou_min``.
    """
    kept = []
    for box in boxes:
        x0, y0, x1, y1 = padded_region(box, pad, gray.shape)
        scale = box[2] / width
        crop = gray[y0:y1, x0:x1]
        size = (max(1, round(crop.shape[1] / scale)), max(1, round(crop.shape[0] / scale)))
        crop = cv2.resize(crop, size, interpolation=cv2.INTER_AREA if scale > 1 else cv2.INTER_LINEAR)
        target = [(box[0] - x0) / scale, (box[1] - y0) / scale, box[2] / scale, box[3] / scale]
        # Only sizes that can overlap the box at iou_min (a square inside another: side ratio
        # >= iou_min ** 0.5): the smallest levels, the costliest, could never confirm it.
        low = max(window_size(classifier), math.floor(width * math.sqrt(iou_min)))
        found = classifier.detectMultiScale(crop, scaleFactor=scale_factor, minNeighbors=min_neighbors, minSize=(low, low))
        if any(iou(f, target) >= iou_min for f in found):
            kept.append(list(box))
    return kept


def plausible(
    box: Sequence[float], shape: tuple[int, ...], max_aspect: float = 1.5, max_side: float = 1.0, min_inside: float = 0.7
) -> bool:
    """Whether a box's geometry can be a face in a frame of ``shape``.

    False for boxes more elongated than ``max_aspect`` (height / width or its inverse), with
    a side above ``max_side`` times the frame's shorter side, or with less than
    ``min_inside`` of their area inside the frame. Haar's own boxes are square and inside
    the frame, so for them this only bounds the size; it guards boxes from other
    detectors and positions predicted by tracking.
    """
    height, width = shape[:2]
    x, y, w, h = box
    if w <= 0 or h <= 0 or max(w / h, h / w) > max_aspect or max(w, h) > max_side * min(width, height):
        return False
    inside = max(0, min(x + w, width) - max(x, 0)) * max(0, min(y + h, height) - max(y, 0))
    return inside >= min_inside * w * h


def plausible_boxes(boxes: Sequence[Box], shape: tuple[int, ...]) -> list[Box]:
    """The boxes that pass ``plausible``."""
    return [list(b) for b in boxes if plausible(b, shape)]


def suppress_duplicates(boxes: Sequence[Box], scores: Sequence[float] | None = None, iou_max: float = 0.3) -> list[Box]:
    """One box per face: of boxes overlapping more than ``iou_max``, keep the best scored (then the largest).

    Overlapping tiles and neighbouring size bands find the same face more than once. The
    score is Haar's neighbour count: a face gets most in the band of its own size, where its
    box is also the best placed. Overlap alone decides (not "centre inside"), so a loose
    false box never hides a small real face it happens to cover.
    """
    scores = scores if scores is not None else [0] * len(boxes)
    ranked = sorted(zip(boxes, scores), key=lambda p: (p[1], p[0][2] * p[0][3]), reverse=True)
    kept: list[Box] = []
    for box, _ in ranked:
        if all(iou(box, k) <= iou_max for k in kept):
            kept.append(list(box))
    return kept
