"""Detect: faces with OpenCV's Haar cascade."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from pydantic import Field, field_validator

from pipeline.errors import ModelError
from pipeline.streaming.message import Message
from pipeline.streaming.stage import IMAGE, Params, Stage
from pipeline.vision.faces import to_gray
from pipeline.vision.record import FACES, Face

DEFAULT_CASCADE = "haarcascade_frontalface_default.xml"


class DetectParams(Params):
    cascade: str = Field(DEFAULT_CASCADE, description="a cascade name from cv2.data.haarcascades, or a path to an XML file")
    scale_factor: float = Field(1.1, gt=1.0, le=2.0, description="image pyramid step; larger is faster and misses more")
    min_neighbors: int = Field(5, ge=0, le=50, description="detections that must overlap to keep a face")
    min_size: int = Field(30, ge=8, le=2000, description="smallest face side in original pixels")
    detect_width: int | None = Field(320, ge=64, le=7680, description="detect on a copy this wide (faster); None: full size")
    equalize: bool = Field(True, description="equalise the histogram before detecting (helps in dim light)")

    @field_validator("cascade")
    @classmethod
    def _cascade_exists(cls, value: str) -> str:
        resolve_cascade(value)
        return value


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
    path = resolve_cascade(cascade)
    classifier = cv2.CascadeClassifier(str(path))
    if classifier.empty():
        raise ModelError(f"{path}: not a valid Haar cascade")
    return classifier


def detect_faces(
    gray: np.ndarray,
    classifier: cv2.CascadeClassifier,
    scale_factor: float = 1.1,
    min_neighbors: int = 5,
    min_size: int = 30,
    detect_width: int | None = 320,
    equalize: bool = True,
) -> list[list[int]]:
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


class Detect(Stage):
    """Adds ``faces`` (boxes) to each frame."""

    Params = DetectParams
    requires = frozenset({IMAGE})
    provides = frozenset({"box"})

    def on_start(self) -> None:
        self._classifier = load_cascade(self.params.cascade)

    def process(self, msg: Message) -> Message:
        p: DetectParams = self.params
        boxes = detect_faces(
            to_gray(msg.image), self._classifier, p.scale_factor, p.min_neighbors, p.min_size, p.detect_width, p.equalize
        )
        msg.fields[FACES] = [Face(box=box) for box in boxes]
        return msg
