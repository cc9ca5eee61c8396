"""Face preprocessing shared by training, evaluation and the serving stages.

Training and serving must see the same pixels, so every path from an image to the CNN's
input goes through the functions here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

FACE_SIZE = 48  # FER2013 resolution; the CNN's input is FACE_SIZE x FACE_SIZE
SEGMENTATION_VERSION = 3  # bump when segment_face changes: cached channels and models depend on it


# K-means stops after 30 iterations or once no centre moves more than 1e-4 (features are in 0..1).
_KMEANS_STOP = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_MAX_ITER, 30, 1e-4)
_GRID_Y, _GRID_X = (g.ravel() / (FACE_SIZE - 1) for g in np.mgrid[0:FACE_SIZE, 0:FACE_SIZE].astype(np.float32))


def to_gray(image: np.ndarray) -> np.ndarray:
    """Return a single-channel uint8 view of a BGR or gray image."""
    if image.ndim == 2:
        return image
    return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)


@dataclass(frozen=True)
class Framing:
    """Where a model's training crop lies relative to a detector box, in units of the box.

    The crop is a square of side ``scale * w`` centred ``dx * w`` right of and ``dy * h`` below
    the box's centre. ``Framing()`` is the box as is.
    """

    scale: float = 1.0
    dx: float = 0.0
    dy: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {"scale": self.scale, "dx": self.dx, "dy": self.dy}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Framing:
        framing = cls(float(raw["scale"]), float(raw.get("dx", 0.0)), float(raw.get("dy", 0.0)))
        if not 0.25 <= framing.scale <= 4.0 or abs(framing.dx) > 1.0 or abs(framing.dy) > 1.0:
            raise ValueError(f"crop {raw} out of range (scale 0.25..4, |dx|, |dy| <= 1)")
        return framing


HAAR_BOX = Framing()  # the detector's box as is: what crop_face did before the framing was recorded
# FER2013's framing relative to a box of the detect stage (Haar; the figures below are from the
# single-pyramid detector before the still-image scan; README "Faces as the pipeline sees them" has
# today's: median side 1.027, offset 0, the same conclusion), measured on the
# PublicTest faces Haar finds again when each is upscaled 4x into a padded canvas
# (`run_pipeline.py evaluate --redetect grey|reflect`, train/redetect.py): FER's crop is 4.4 %
# (grey, 2,097 faces) or 2.7 % (reflect, 2,814) wider than the box, centred within 0.003 of a
# box. That is below Haar's size step (scale_factor 1.1), and mapping the box by it did not help:
# 66.3 % against 67.0 % for the box as is (grey), 63.9 % against 64.0 % (reflect). So the box is
# used as is; models record this in model.json ("crop") so a detector with other boxes can differ.
FER_FRAMING = HAAR_BOX


def framed_box(box: tuple[int, int, int, int] | list[int], framing: Framing = HAAR_BOX) -> tuple[int, int, int, int]:
    """The square ``(x, y, side, side)`` that ``framing`` makes of a detector box (may leave the frame)."""
    x, y, w, h = (float(v) for v in box)
    side = framing.scale * max(w, h)
    cx, cy = x + w / 2 + framing.dx * w, y + h / 2 + framing.dy * h
    s = max(1, round(side))
    return round(cx - s / 2), round(cy - s / 2), s, s


def crop_face(gray: np.ndarray, box: tuple[int, int, int, int] | list[int], framing: Framing = HAAR_BOX) -> np.ndarray:
    """Cut a detected face out of a gray frame and resize it to the CNN's input size.

    ``framing`` maps the detector's box onto the framing the model was trained on
    (``ModelInfo.crop``); the default uses the box as is. The part of the crop outside the
    frame is filled by repeating the frame's edge, so the face keeps its place and aspect;
    with the box as is, the crop is clipped to the frame as before.
    """
    if framing != HAAR_BOX:
        box = framed_box(box, framing)
    x, y, w, h = (int(v) for v in box)
    height, width = gray.shape[:2]
    x0, y0 = max(0, x), max(0, y)
    x1, y1 = min(width, x + w), min(height, y + h)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"face box {list(box)} lies outside the {width}x{height} frame")
    crop = gray[y0:y1, x0:x1]
    if framing != HAAR_BOX and crop.shape != (h, w):
        crop = cv2.copyMakeBorder(crop, y0 - y, y + h - y1, x0 - x, x + w - x1, cv2.BORDER_REPLICATE)
    interp = cv2.INTER_AREA if crop.shape[0] > FACE_SIZE else cv2.INTER_LINEAR
    return cv2.resize(crop, (FACE_SIZE, FACE_SIZE), interpolation=interp)


DIM_MEAN = 60  # a face darker than this on average (grey levels 0..255) is lifted; 2.5 % of FER2013's are


def lift_dim(faces: np.ndarray, below: float = DIM_MEAN) -> np.ndarray:
    """Stretch each dim face (N, 48, 48) uint8 linearly, its 1st-99th percentile of grey to 0..255.

    FER2013's faces are well exposed (median mean grey 130), so a face from a dim room is unlike
    what the CNN learned from. Faces whose mean is ``below`` or more come back as they are; a
    new array only if one is lifted. Serving only (classify, ``evaluate``): training sees the
    faces as they are.
    """
    dim = faces.mean(axis=(1, 2)) < below
    if not dim.any():
        return faces
    lo, hi = (v[:, None, None] for v in np.percentile(faces[dim], (1, 99), axis=(1, 2)))
    lifted = faces.copy()
    lifted[dim] = np.clip((faces[dim] - lo) * (255.0 / np.maximum(hi - lo, 1.0)), 0, 255).astype(faces.dtype)
    return lifted


def segment_face(face: np.ndarray, k: int = 4, spatial_weight: float = 0.35) -> np.ndarray:
    """Cluster a 48x48 gray face into ``k`` regions with K-means (OpenCV's ``cv2.kmeans``).

    Each pixel is described by its intensity and, with a smaller weight, its position, so
    clusters are compact dark or bright regions. Centres start at the intensity quantiles
    (deterministic, one run; each pixel starts in the cluster of the nearest such centre), and
    labels are renumbered by mean intensity (0 = darkest), which makes them comparable across
    faces: the darkest regions are eyes, brows, nostrils and the mouth opening, the brightest
    forehead, cheeks and teeth.

    Args:
        face: uint8 array of shape (48, 48).
        k: number of regions (>= 2).
        spatial_weight: weight of the (x, y) position against intensity, both in [0, 1].

    Returns:
        uint8 label map of shape (48, 48) with values in ``0..k-1``.
    """
    if face.shape != (FACE_SIZE, FACE_SIZE):
        raise ValueError(f"segment_face expects a {FACE_SIZE}x{FACE_SIZE} face, got {face.shape}")
    intensity = face.astype(np.float32).ravel() / 255.0
    features = np.stack([intensity, spatial_weight * _GRID_X, spatial_weight * _GRID_Y], axis=1)
    init = np.zeros((k, 3), np.float32)
    init[:, 0] = np.quantile(intensity, (np.arange(k) + 0.5) / k)
    init[:, 1:] = spatial_weight * 0.5  # every centre starts mid-face
    labels = ((features[:, None, :] - init[None]) ** 2).sum(axis=2).argmin(axis=1).astype(np.int32)
    _, labels, centres = cv2.kmeans(features, k, labels[:, None], _KMEANS_STOP, 1, cv2.KMEANS_USE_INITIAL_LABELS)
    rank = np.empty(k, dtype=np.uint8)
    rank[np.argsort(centres[:, 0])] = np.arange(k, dtype=np.uint8)  # cluster ids sorted dark -> bright
    return rank[labels.ravel()].reshape(FACE_SIZE, FACE_SIZE)


def segmentation_channel(labels: np.ndarray, k: int) -> np.ndarray:
    """Encode a label map as a uint8 image channel (0 = darkest region, 255 = brightest)."""
    return (labels.astype(np.uint16) * 255 // max(k - 1, 1)).astype(np.uint8)


def model_input(faces: np.ndarray, seg_channels: np.ndarray | None = None) -> np.ndarray:
    """Stack faces (N, 48, 48) and optional segmentation channels into the CNN's input.

    Returns float32 (N, 48, 48, C) with raw 0..255 values: scaling happens inside the model.
    """
    x = faces[..., None]
    if seg_channels is not None:
        x = np.concatenate([x, seg_channels[..., None]], axis=-1)
    return x.astype(np.float32)
