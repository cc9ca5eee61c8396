"""The face record: one typed, checked entry per detected face, carried in ``Message.fields["faces"]``.

Its field names are the contract names stages declare (``provides = {"probs", ...}``), so
the topology check, the stages and the sinks speak of the same things. Registering the
field here is what lets messages carry faces across processes: the streaming framework
itself knows nothing of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from pipeline.streaming.message import AddArray, Message, ReadArray, register_field

FACES = "faces"
MAX_FACES = 256
MAX_CLASSES = 64
MAX_COORD = 1 << 20


@dataclass
class Face:
    """One face in one frame and what the stages learned about it.

    Attributes:
        box: ``[x, y, w, h]`` in frame pixels (``detect``).
        seg: 48x48 uint8 K-means region labels, 0 = darkest (``segment``).
        probs: the frame's own class probabilities, in the run's class order (``classify``).
        emotion: the label shown: the top class, or the smoothed one after ``track``.
        confidence: the probability of ``emotion``.
        track: a stable id of the person across frames (``track``).
        smoothed: the probabilities smoothed over the track (``track``).
        emotion_raw: the frame's own label, kept when ``track`` replaces ``emotion``.
    """

    box: list[int]
    seg: np.ndarray | None = None
    probs: list[float] | None = None
    emotion: str | None = None
    confidence: float | None = None
    track: int | None = None
    smoothed: list[float] | None = None
    emotion_raw: str | None = None


FACE_FIELDS = frozenset(f.name for f in fields(Face))


def faces_of(msg: Message) -> list[Face]:
    """The faces of a frame (an empty list before any detector ran)."""
    return msg.fields.get(FACES, [])


def is_still(msg: Message) -> bool:
    """Whether a frame is a picture of its own (from an image folder), not part of a video."""
    return msg.meta.get("kind") == "folder"


def faces_in_budget(msg: Message, budget: int | None) -> list[Face]:
    """The faces of a frame a stage with a per-frame ``budget`` works on this frame.

    With more faces than the budget, a window of ``budget`` faces rotates with the frame number,
    so each face of a video is taken about every ``ceil(n / budget)`` frames whichever worker
    gets the frame; stages with the same budget take the same faces. ``None``, and still
    images: every face.
    """
    faces = faces_of(msg)
    n = len(faces)
    if budget is None or n <= budget or is_still(msg):
        return faces
    start = msg.seq * budget
    return [faces[(start + i) % n] for i in range(budget)]


class FacesCodec:
    """``list[Face]`` on the wire: a list of maps with the fields that are set."""

    def to_wire(self, faces: list[Face], add_array: AddArray) -> list[dict[str, Any]]:
        out = []
        for face in faces:
            entry = {k: v for k, v in face.__dict__.items() if v is not None}
            if face.seg is not None:
                entry["seg"] = add_array(face.seg)
            out.append(entry)
        return out

    def from_wire(self, data: Any, read_array: ReadArray, where: str) -> list[Face]:
        if not isinstance(data, list) or len(data) > MAX_FACES:
            raise ValueError(f"expected a list of at most {MAX_FACES} faces")
        return [_face(entry, read_array, f"{where}[{i}]") for i, entry in enumerate(data)]


def _face(entry: Any, read_array: ReadArray, where: str) -> Face:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected a map, got {type(entry).__name__}")
    unknown = set(entry) - FACE_FIELDS
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(map(str, unknown))}")
    box = entry.get("box")
    if not (isinstance(box, list) and len(box) == 4 and all(_is_int(v, -MAX_COORD, MAX_COORD) for v in box)):
        raise ValueError(f"{where}: needs a box [x, y, w, h] of integers, got {box!r}"[:200])
    if box[2] <= 0 or box[3] <= 0:
        raise ValueError(f"{where}: box {box} has no area")
    face = Face(box=box)
    if entry.get("seg") is not None:
        face.seg = read_array(entry["seg"], f"{where}.seg")
        if face.seg.ndim != 2 or face.seg.dtype != np.uint8:
            raise ValueError(f"{where}.seg: expected a 2-D uint8 label map")
    for key in ("probs", "smoothed"):
        face.__dict__[key] = _probabilities(entry.get(key), f"{where}.{key}")
    for key in ("emotion", "emotion_raw"):
        value = entry.get(key)
        if value is not None and not (isinstance(value, str) and 0 < len(value) <= 64):
            raise ValueError(f"{where}.{key}: expected a label of 1..64 characters")
        face.__dict__[key] = value
    confidence = entry.get("confidence")
    if confidence is not None and not (_is_number(confidence) and 0.0 <= confidence <= 1.0):
        raise ValueError(f"{where}.confidence: expected a number in 0..1")
    face.confidence = confidence
    track = entry.get("track")
    if track is not None and not _is_int(track, 0, 1 << 62):
        raise ValueError(f"{where}.track: expected a non-negative integer")
    face.track = track
    return face


def _probabilities(value: Any, where: str) -> list[float] | None:
    if value is None:
        return None
    problem = f"{where}: expected 1..{MAX_CLASSES} probabilities in 0..1"
    if not (isinstance(value, list) and 0 < len(value) <= MAX_CLASSES):
        raise ValueError(problem)
    # Every stage decodes these for every face: one pass, exact types (not bool), and a range
    # check that NaN and infinities fail.
    probs = [float(v) for v in value if type(v) is float or type(v) is int]
    if len(probs) < len(value) or not all(0.0 <= p <= 1.0 for p in probs):
        raise ValueError(problem)
    return probs


def _is_int(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


register_field(FACES, FacesCodec())
