"""The emotion classes and how they are shown: one source for labels, colours and valence.

A served model names its own classes in ``model.json`` (they are fixed for a run from there);
``EMOTIONS`` is FER2013's order, which this project's models use and the training data follow.
"""

from __future__ import annotations

# FER2013's label order (the csv's `emotion` column indexes this tuple).
EMOTIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

# How emotions add up to a positive / negative / neutral summary.
VALENCE = {
    "happy": "positive", "surprise": "positive",
    "angry": "negative", "disgust": "negative", "fear": "negative", "sad": "negative",
    "neutral": "neutral",
}  # fmt: skip

# One colour per label, the same in the video overlay, the report and the live view.
COLOURS = {
    "angry": "#e6302e", "disgust": "#3a8c3a", "fear": "#9c3fa0", "happy": "#f2c12e", "sad": "#3a78c8",
    "surprise": "#ff8c00", "neutral": "#a0a0a0", "uncertain": "#606060", "face": "#ffffff",
    "positive": "#2ca25f", "negative": "#de2d26", "neutral_valence": "#a0a0a0",
}  # fmt: skip

# Image files a folder source or a labelled face folder may hold (what OpenCV reads).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".tif", ".tiff", ".webp"})


def bgr(label: str) -> tuple[int, int, int]:
    """The label's colour as OpenCV's (blue, green, red); white for an unknown label."""
    value = COLOURS.get(label, "#ffffff").lstrip("#")
    red, green, blue = (int(value[i : i + 2], 16) for i in (0, 2, 4))
    return blue, green, red
