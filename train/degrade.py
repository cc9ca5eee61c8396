"""Camera-like degradations of face crops: how a model holds up off FER2013's clean stills.

Video faces are smaller, blurrier, darker, noisier and more compressed than FER2013's crops.
``evaluate --degrade KIND`` scores a model on faces degraded one way, so models can be
compared on more than the one distribution they were chosen on.
"""

from __future__ import annotations

import cv2
import numpy as np

from pipeline.errors import DataError

DEGRADATIONS = {
    "blur": "Gaussian blur, sigma 1.2 px at 48x48 (focus, motion)",
    "lowres": "down to 20x20 and back up (a face 20 px high in the frame)",
    "jpeg": "JPEG at quality 15 (a compressed stream)",
    "dark": "grey levels x0.35 (an underexposed face)",
    "noise": "Gaussian noise, sigma 15 grey levels, seeded (sensor noise in low light)",
}


def degrade(images: np.ndarray, kind: str, seed: int = 0) -> np.ndarray:
    """``images`` (N, H, W) uint8, degraded as ``DEGRADATIONS[kind]`` says; same shape and dtype."""
    if kind not in DEGRADATIONS:
        raise DataError(f"unknown degradation {kind!r}; choose one of {', '.join(DEGRADATIONS)}")
    if kind == "noise":
        noise = np.random.default_rng(seed).normal(0.0, 15.0, images.shape)
        return np.clip(images + noise, 0, 255).astype(np.uint8)
    if kind == "dark":
        return (images * 0.35).round().astype(np.uint8)
    return np.stack([_degrade_one(image, kind) for image in images])


def _degrade_one(image: np.ndarray, kind: str) -> np.ndarray:
    h, w = image.shape
    if kind == "blur":
        return cv2.GaussianBlur(image, (0, 0), 1.2)
    if kind == "lowres":
        small = cv2.resize(image, (20, 20), interpolation=cv2.INTER_AREA)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    ok, blob = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 15])
    if not ok:
        raise DataError("JPEG encoding failed")
    return cv2.imdecode(blob, cv2.IMREAD_GRAYSCALE)
