"""A yardstick for face detection: recall and precision on annotated photos (WIDER FACE).

The data folder holds ``images/<event>/<name>.jpg``, ``boxes.csv`` (one face a row:
``image,img_width,img_height,x,y,w,h``) and ``ignore_boxes.csv`` (the same columns plus
``reason``): don't-care regions such as faces under 20 px or boxes flagged invalid.

Matching rules:
    - A detection and a face match when their IoU is at least ``iou_min`` (0.4: WIDER's boxes
      run forehead to chin, Haar's are looser). Pairs are taken greedily, highest IoU first,
      each face and each detection used at most once.
    - A detection left without a face is ignored (neither hit nor false positive) when it lies
      on a don't-care region: its centre falls inside an ignore box, or its IoU with one is
      at least ``iou_min``. The centre rule is there because ignore boxes are small (most are
      faces under 20 px) and a detector's smallest window covering one rarely reaches the IoU.
    - Every other unmatched detection is a false positive, including a second box on a face
      that already has a hit.
"""

from __future__ import annotations

import csv
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

Box = Sequence[float]  # [x, y, w, h], top-left corner and size in pixels
DetectFn = Callable[[np.ndarray], Sequence[Box]]

IOU_MIN = 0.4
# Face-width bands (px) for recall by size: (label, low inclusive, high exclusive).
SIZE_BANDS: tuple[tuple[str, float, float], ...] = (
    ("20-30", 20, 30),
    ("30-40", 30, 40),
    ("40-60", 40, 60),
    ("60-100", 60, 100),
    ("100-200", 100, 200),
    (">=200", 200, float("inf")),
)


@dataclass
class ImageTruth:
    """The annotations of one photo: face boxes and don't-care boxes, ``[x, y, w, h]`` each."""

    faces: list[list[int]] = field(default_factory=list)
    ignores: list[list[int]] = field(default_factory=list)


@dataclass
class MatchResult:
    """The outcome of matching one photo's detections against its faces.

    Attributes:
        face_hit: one flag a face, True when some detection matched it.
        detection_kind: one label a detection: ``"hit"``, ``"ignored"`` or ``"fp"``.
    """

    face_hit: list[bool]
    detection_kind: list[str]

    @property
    def hits(self) -> int:
        return sum(self.face_hit)

    @property
    def false_positives(self) -> int:
        return self.detection_kind.count("fp")

    @property
    def ignored(self) -> int:
        return self.detection_kind.count("ignored")


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two ``[x, y, w, h]`` boxes (0 when either is empty)."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    iw = min(ax + aw, bx + bw) - max(ax, bx)
    ih = min(ay + ah, by + bh) - max(ay, by)
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


def _centre_inside(box: Box, region: Box) -> bool:
    cx, cy = box[0] + box[2] / 2, box[1] + box[3] / 2
    return region[0] <= cx <= region[0] + region[2] and region[1] <= cy <= region[1] + region[3]


def match(detections: Sequence[Box], truths: Sequence[Box], ignores: Sequence[Box] = (), iou_min: float = IOU_MIN) -> MatchResult:
    """Match one photo's detections to its faces, greedily by IoU (see the module docstring).

    Args:
        detections: detected boxes ``[x, y, w, h]``.
        truths: annotated face boxes.
        ignores: don't-care regions.
        iou_min: the least IoU for a detection to count on a face or an ignore region.

    Returns:
        Which faces were hit and what each detection counted as.
    """
    pairs = sorted(
        ((iou(d, t), i, j) for i, d in enumerate(detections) for j, t in enumerate(truths)),
        key=lambda p: p[0],
        reverse=True,
    )
    face_hit = [False] * len(truths)
    kind = [""] * len(detections)
    for overlap, i, j in pairs:
        if overlap < iou_min:
            break
        if kind[i] or face_hit[j]:
            continue
        kind[i], face_hit[j] = "hit", True
    for i, d in enumerate(detections):
        if not kind[i]:
            on_ignore = any(_centre_inside(d, g) or iou(d, g) >= iou_min for g in ignores)
            kind[i] = "ignored" if on_ignore else "fp"
    return MatchResult(face_hit, kind)


def _read_boxes(path: Path) -> dict[str, list[list[int]]]:
    boxes: dict[str, list[list[int]]] = {}
    if not path.exists():
        return boxes
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            boxes.setdefault(row["image"], []).append([int(row[k]) for k in ("x", "y", "w", "h")])
    return boxes


def load_annotations(data_dir: str | Path) -> dict[str, ImageTruth]:
    """Every photo under ``data_dir/images`` with its faces and ignore regions, sorted by path.

    Photos without a row in ``boxes.csv`` are included with no faces (their detections can
    only be false positives or ignored).
    """
    data_dir = Path(data_dir)
    faces = _read_boxes(data_dir / "boxes.csv")
    ignores = _read_boxes(data_dir / "ignore_boxes.csv")
    names = {p.relative_to(data_dir).as_posix() for p in (data_dir / "images").rglob("*.jpg")}
    names |= faces.keys()
    return {name: ImageTruth(faces.get(name, []), ignores.get(name, [])) for name in sorted(names)}


def size_band(width: float) -> str | None:
    """The label of the face-width band ``width`` falls in (None below 20 px)."""
    for label, low, high in SIZE_BANDS:
        if low <= width < high:
            return label
    return None


def evaluate_detect(
    data_dir: str | Path,
    detect_fn: DetectFn,
    limit: int | None = None,
    iou_min: float = IOU_MIN,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run ``detect_fn`` on every annotated photo and score it.

    Args:
        data_dir: the WIDER FACE folder (``images/``, ``boxes.csv``, ``ignore_boxes.csv``).
        detect_fn: takes a gray uint8 photo, returns boxes ``[x, y, w, h]`` in its pixels.
        limit: score only the first ``limit`` photos (sorted by path).
        iou_min: the least IoU for a match.
        settings: the detector's settings, echoed in the result for the record.

    Returns:
        ``recall``, ``precision`` (1.0 when nothing counted), ``n_faces``, ``n_images``, ``hits``, ``false_positives``,
        ``ignored`` (detections on don't-care regions), ``per_size`` (band -> ``{"n", "hits",
        "recall"}``), ``ms_per_image`` (median time of ``detect_fn``, reading excluded),
        ``iou_min`` and ``settings``.
    """
    data_dir = Path(data_dir)
    annotations = list(load_annotations(data_dir).items())[:limit]
    hits = false_positives = ignored = n_faces = 0
    band_n = {label: 0 for label, _, _ in SIZE_BANDS}
    band_hits = dict(band_n)
    times: list[float] = []
    for name, truth in annotations:
        gray = cv2.imread(str(data_dir / name), cv2.IMREAD_GRAYSCALE)
        if gray is None:
            raise FileNotFoundError(f"cannot read {data_dir / name}")
        start = time.perf_counter()
        detections = [list(map(float, d)) for d in detect_fn(gray)]
        times.append((time.perf_counter() - start) * 1000)
        result = match(detections, truth.faces, truth.ignores, iou_min)
        hits += result.hits
        false_positives += result.false_positives
        ignored += result.ignored
        n_faces += len(truth.faces)
        for face, hit in zip(truth.faces, result.face_hit):
            band = size_band(face[2])
            if band:
                band_n[band] += 1
                band_hits[band] += hit
    scored = hits + false_positives
    return {
        "recall": hits / n_faces if n_faces else 0.0,
        "precision": hits / scored if scored else 1.0,
        "n_faces": n_faces,
        "n_images": len(annotations),
        "hits": hits,
        "false_positives": false_positives,
        "ignored": ignored,
        "per_size": {
            label: {
                "n": band_n[label],
                "hits": band_hits[label],
                "recall": band_hits[label] / band_n[label] if band_n[label] else None,
            }
            for label in band_n
        },
        "ms_per_image": statistics.median(times) if times else 0.0,
        "iou_min": iou_min,
        "settings": dict(settings or {}),
    }
