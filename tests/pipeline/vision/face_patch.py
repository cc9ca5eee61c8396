"""Synthetic video frames with a real face pasted in: for scheduler and filter tests."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from pipeline.vision.detection import DEFAULT_CASCADE, detect_faces, load_cascade


def face_patch(faces_dir: Path, face_width: int, name: str = "deepface_img5.jpg") -> tuple[np.ndarray, list[int]]:
    """A gray crop around the real face of ``name`` scaled so the face is ``face_width`` px, and the face box in it."""
    gray = cv2.imread(str(faces_dir / name), cv2.IMREAD_GRAYSCALE)
    x, y, w, h = detect_faces(gray, load_cascade(DEFAULT_CASCADE), min_size=40, detect_width=None)[0]
    pad = w // 2
    crop = gray[max(0, y - pad) : y + h + pad, max(0, x - pad) : x + w + pad]
    scale = face_width / w
    patch = cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return patch, [round((x - max(0, x - pad)) * scale), round((y - max(0, y - pad)) * scale), face_width, face_width]


def background(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Pixel noise over a gentle gradient: texture and contrast for a detector, and no face.

    (Smooth blob noise, tried first, fools both cascades now and then: dark blobs in the
    right places look like eyes and a mouth to a 24-px window.)
    """
    rng = np.random.default_rng(seed)
    ramp = np.linspace(70, 180, width)[None, :] + np.linspace(-20, 20, height)[:, None]
    return (ramp + rng.normal(0, 25, (height, width))).clip(0, 255).astype(np.uint8)


def paste(frame: np.ndarray, patch: np.ndarray, at: tuple[int, int]) -> np.ndarray:
    """``frame`` with ``patch`` pasted with its top-left corner at ``at`` (clipped to the frame)."""
    out = frame.copy()
    x, y = at
    h = min(patch.shape[0], out.shape[0] - y)
    w = min(patch.shape[1], out.shape[1] - x)
    out[y : y + h, x : x + w] = patch[:h, :w]
    return out
