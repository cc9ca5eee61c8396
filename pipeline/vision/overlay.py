"""The video overlay: boxes, labels, probability bars and a colour legend, legible on any background.

Text always sits on a filled box (label colour, or a dark translucent panel for the bars and
the legend) with black or white ink chosen by the fill's brightness, so it reads on dark and
bright scenes alike. Sizes follow the face: a face near the camera gets a larger label and
larger bars than one far away. Colours come from ``pipeline.vision.emotions`` only.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from pipeline.vision.emotions import bgr
from pipeline.vision.record import Face

FONT = cv2.FONT_HERSHEY_SIMPLEX
PANEL = (24, 24, 24)  # the dark fill behind bars and the legend
PANEL_ALPHA = 0.65


def ink(fill: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black on light fills, white on dark ones (BGR luma)."""
    blue, green, red = fill
    return (0, 0, 0) if 0.114 * blue + 0.587 * green + 0.299 * red > 140 else (255, 255, 255)


def _panel(image: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> None:
    """Darken a rectangle in place (clipped to the image), so text on it reads on any background."""
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, image.shape[1]), min(y1, image.shape[0])
    if x1 > x0 and y1 > y0:
        roi = image[y0:y1, x0:x1]
        cv2.addWeighted(roi, 1 - PANEL_ALPHA, np.full_like(roi, PANEL), PANEL_ALPHA, 0, dst=roi)


def _label(image: np.ndarray, text: str, x: int, y: int, fill: tuple[int, int, int], scale: float) -> None:
    """``text`` on a box filled with ``fill``, its top-left corner at (x, y) (kept inside the image)."""
    thickness = max(1, round(scale * 1.6))
    (tw, th), base = cv2.getTextSize(text, FONT, scale, thickness)
    pad = max(2, round(th * 0.3))
    x = min(max(x, 0), max(image.shape[1] - tw - 2 * pad, 0))
    y = min(max(y, 0), max(image.shape[0] - th - base - 2 * pad, 0))
    cv2.rectangle(image, (x, y), (x + tw + 2 * pad, y + th + base + 2 * pad), fill, -1)
    cv2.putText(image, text, (x + pad, y + pad + th), FONT, scale, ink(fill), thickness, cv2.LINE_AA)


def _bars(image: np.ndarray, face: Face, classes: Sequence[str], probs: Sequence[float]) -> None:
    """One bar per class beside the face, as tall as the face, on a dark panel with the class names."""
    x, y, w, h = face.box
    row = max(8, h // len(classes))
    scale = row / 34
    name_w = cv2.getTextSize(max(classes, key=len), FONT, scale, 1)[0][0]
    length = max(20, int(0.6 * w))
    width = name_w + length + 12
    # Right of the face when it fits, else left of it, else over its right edge.
    left = x + w + 4 if x + w + 4 + width <= image.shape[1] else max(x - 4 - width, 0)
    _panel(image, left, y, left + width, y + row * len(classes))
    for i, (name, p) in enumerate(zip(classes, probs)):
        top = y + i * row
        cv2.putText(image, name, (left + 4, top + int(row * 0.75)), FONT, scale, (255, 255, 255), 1, cv2.LINE_AA)
        bar_x = left + name_w + 8
        cv2.rectangle(image, (bar_x, top + 2), (bar_x + int(length * p), top + row - 2), bgr(name), -1)


def draw_legend(image: np.ndarray, classes: Sequence[str]) -> None:
    """A swatch and the name of every class along the bottom edge, wrapping to more rows if needed."""
    height, width = image.shape[:2]
    scale = min(max(width / 1400, 0.35), 0.8)
    (_, th), _ = cv2.getTextSize("Ag", FONT, scale, 1)
    row, gap = th + 10, 14
    items = [(name, cv2.getTextSize(name, FONT, scale, 1)[0][0] + th + 8) for name in classes]
    lines: list[list[tuple[str, int]]] = [[]]
    for item in items:
        if lines[-1] and sum(w + gap for _, w in lines[-1]) + item[1] > width - 12:
            lines.append([])
        lines[-1].append(item)
    top = height - row * len(lines) - 4
    _panel(image, 0, top - 4, max(sum(w + gap for _, w in line) for line in lines) + 8, height)
    for n, line in enumerate(lines):
        x, y = 6, top + n * row
        for name, w in line:
            cv2.rectangle(image, (x, y + 2), (x + th, y + 2 + th), bgr(name), -1)
            cv2.putText(image, name, (x + th + 5, y + th + 1), FONT, scale, (255, 255, 255), 1, cv2.LINE_AA)
            x += w + gap


def draw_faces(
    image: np.ndarray, faces: list[Face], classes: Sequence[str] | None, bars: bool = True, legend: bool = True
) -> np.ndarray:
    """Each face's box, label and confidence (and probability bars), and a colour legend, on a copy of ``image``."""
    out = image.copy()
    for face in faces:
        x, y, w, h = face.box
        label = face.emotion or "face"
        colour = bgr(label)
        cv2.rectangle(out, (x, y), (x + w, y + h), colour, max(2, h // 80))
        text = f"{label} {face.confidence:.0%}" if face.confidence is not None else label
        if face.track is not None:
            text = f"#{face.track} {text}"
        scale = min(max(h / 220, 0.45), 1.2)
        (_, th), base = cv2.getTextSize(text, FONT, scale, 1)
        above = y - th - base - 2 * max(2, round(th * 0.3)) - 2
        _label(out, text, x, above if above >= 0 else y + 2, colour, scale)
        probs = face.smoothed or face.probs
        if bars and classes and probs and len(probs) == len(classes):
            _bars(out, face, classes, probs)
    if legend and classes:
        draw_legend(out, classes)
    return out
