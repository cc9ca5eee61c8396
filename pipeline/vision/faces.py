"""Face preprocessing shared by training, evaluation and the serving stages.

Training and serving must see the same pixels, so every path from an image to the CNN's
input goes through the functions here.
"""

from __future__ import annotations

import cv2
import numpy as np

FACE_SIZE = 48  # FER2013 resolution; the CNN's input is FACE_SIZE x FACE_SIZE
SEGMENTATION_VERSION = 2  # bump when segment_face changes: cached channels and models depend on it


_GRID_Y, _GRID_X = (g.ravel() / (FACE_SIZE - 1) for g in np.mgrid[0:FACE_SIZE, 0:FACE_SIZE].astype(np.float32))


def to_gray(image: np.ndarray) -> np.ndarray:
    """Return a single-channel uint8 view of a BGR or gray image."""
    if image.ndim == 2:
        return image
    return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)


def crop_face(gray: np.ndarray, box: tuple[int, int, int, int] | list[int]) -> np.ndarray:
    """Cut a detected face out of a gray frame and resize it to the CNN's input size.

    Haar boxes are tight around the features, like FER2013's crops, so the box is used
    as is (clipped to the frame).
    """
    x, y, w, h = (int(v) for v in box)
    height, width = gray.shape[:2]
    x0, y0 = max(0, x), max(0, y)
    x1, y1 = min(width, x + w), min(height, y + h)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"face box {list(box)} lies outside the {width}x{height} frame")
    crop = gray[y0:y1, x0:x1]
    interp = cv2.INTER_AREA if crop.shape[0] > FACE_SIZE else cv2.INTER_LINEAR
    return cv2.resize(crop, (FACE_SIZE, FACE_SIZE), interpolation=interp)


def segment_face(face: np.ndarray, k: int = 4, spatial_weight: float = 0.35) -> np.ndarray:
    """Cluster a 48x48 gray face into ``k`` regions with K-means.

    Each pixel is described by its intensity and, with a smaller weight, its position, so
    clusters are compact dark or bright regions. Centres start at the intensity quantiles
    (deterministic, and about 40% faster than k-means++), and labels are renumbered by mean
    intensity (0 = darkest), which makes them comparable across faces: the darkest regions
    are eyes, brows, nostrils and the mouth opening, the brightest forehead, cheeks and teeth.

    Args:
        face: uint8 array of shape (48, 48).
        k: number of regions (>= 2).
        spatial_weight: weight of the (x, y) position against intensity, both in [0, 1].

    Returns:
        uint8 label map of shape (48, 48) with values in ``0..k-1``.
    """
    from sklearn.cluster import KMeans  # imported here: only the segment stage pays for scikit-learn

    if face.shape != (FACE_SIZE, FACE_SIZE):
        raise ValueError(f"segment_face expects a {FACE_SIZE}x{FACE_SIZE} face, got {face.shape}")
    intensity = face.astype(np.float32).ravel() / 255.0
    features = np.stack([intensity, spatial_weight * _GRID_X, spatial_weight * _GRID_Y], axis=1)
    init = np.zeros((k, 3), np.float32)
    init[:, 0] = np.quantile(intensity, (np.arange(k) + 0.5) / k)
    init[:, 1:] = spatial_weight * 0.5  # every centre starts mid-face
    km = KMeans(n_clusters=k, init=init, n_init=1, max_iter=30).fit(features)
    order = np.argsort(km.cluster_centers_[:, 0])  # cluster ids sorted dark -> bright
    rank = np.empty(k, dtype=np.uint8)
    rank[order] = np.arange(k, dtype=np.uint8)
    return rank[km.labels_].reshape(FACE_SIZE, FACE_SIZE)


def kmeans_in_one_thread():
    """Limit scikit-learn's OpenMP to one thread; returns the limit (also a context manager).

    K-means on 2,304 pixels gains nothing from threads: with two cores busy, the second
    OpenMP thread only spins, making ``segment_face`` ten times slower (21 ms of CPU a face
    instead of 2 ms). ``sklearn.cluster`` is imported first because threadpoolctl only
    limits libraries that are already loaded.
    """
    import sklearn.cluster  # noqa: F401 - loads the OpenMP runtime that the limit applies to
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1)


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
