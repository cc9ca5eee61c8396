"""Track: a stable id per face across frames, and emotion probabilities smoothed per track."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import Field

from pipeline.streaming.message import Message
from pipeline.streaming.stage import Contract, Params, Stage
from pipeline.vision.record import faces_of


class TrackParams(Params):
    iou_threshold: float = Field(0.3, gt=0.0, le=1.0, description="a face continues a track when its box overlaps this much")
    max_gap: int = Field(15, ge=0, le=10_000, description="frames a track survives without a detection")
    smoothing: Literal["ema", "window", "off"] = Field("ema", description="how probabilities are smoothed per track")
    alpha: float = Field(0.15, gt=0.0, le=1.0, description="ema: weight of the newest frame")
    window: int = Field(10, ge=1, le=1000, description="window: frames averaged")
    hysteresis: float = Field(
        0.05, ge=0.0, le=1.0, description="the label changes only when another class leads the current one by this much"
    )


def iou(a: list[int], b: list[int]) -> float:
    """Intersection over union of two [x, y, w, h] boxes."""
    ax0, ay0, aw, ah = a
    bx0, by0, bw, bh = b
    ix = max(0, min(ax0 + aw, bx0 + bw) - max(ax0, bx0))
    iy = max(0, min(ay0 + ah, by0 + bh) - max(ay0, by0))
    inter = ix * iy
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


@dataclass
class _Track:
    id: int
    box: list[int]
    last_seen: int
    smoothed: np.ndarray | None = None
    history: deque = field(default_factory=deque)
    label: int | None = None  # the class shown, kept until another leads by ``hysteresis``


class Tracker:
    """Greedy IoU association: each face takes the free track it overlaps most (above a threshold).

    A track missed for up to ``max_gap`` frames (a blink of the detector) keeps its id.
    """

    def __init__(self, iou_threshold: float = 0.3, max_gap: int = 15):
        self.iou_threshold = iou_threshold
        self.max_gap = max_gap
        self.tracks: dict[int, _Track] = {}
        self._next_id = 1

    def update(self, seq: int, boxes: list[list[int]]) -> list[_Track]:
        """Assign a track to each box of frame ``seq``; returns the tracks in box order."""
        self.tracks = {i: t for i, t in self.tracks.items() if seq - t.last_seen <= self.max_gap}
        pairs = sorted(
            ((iou(t.box, box), t.id, b) for t in self.tracks.values() for b, box in enumerate(boxes)),
            reverse=True,
        )
        assigned: dict[int, _Track] = {}
        used: set[int] = set()
        for overlap, track_id, b in pairs:
            if overlap < self.iou_threshold:
                break
            if b in assigned or track_id in used:
                continue
            assigned[b] = self.tracks[track_id]
            used.add(track_id)
        result = []
        for b, box in enumerate(boxes):
            track = assigned.get(b)
            if track is None:
                track = _Track(self._next_id, box, seq)
                self.tracks[track.id] = track
                self._next_id += 1
            track.box, track.last_seen = box, seq
            result.append(track)
        return result


def smooth(track: _Track, probs: np.ndarray, params: TrackParams) -> np.ndarray:
    """Update and return the track's smoothed probabilities."""
    if params.smoothing == "ema":
        track.smoothed = probs if track.smoothed is None else params.alpha * probs + (1 - params.alpha) * track.smoothed
    elif params.smoothing == "window":
        track.history.append(probs)
        while len(track.history) > params.window:
            track.history.popleft()
        track.smoothed = np.mean(track.history, axis=0)
    else:
        track.smoothed = probs
    return track.smoothed


class Track(Stage):
    """Adds ``track`` to every face; with smoothing, ``emotion`` and ``confidence`` follow the
    smoothed probabilities (``smoothed``) while ``probs`` and ``emotion_raw`` keep the frame's own."""

    Params = TrackParams
    requires = frozenset({"box"})
    provides = frozenset({"track", "smoothed", "emotion_raw"})
    ordered_input = True  # association needs frames in order

    @classmethod
    def contract(cls, params: TrackParams, upstream) -> Contract:
        if params.smoothing == "off":
            return Contract(cls.requires, frozenset({"track"}))
        return Contract(cls.requires | {"probs"}, cls.provides)

    def on_start(self) -> None:
        self._trackers: dict[str, Tracker] = {}
        self._classes = self.context.run.get("classes", [])

    def process(self, msg: Message) -> Message:
        p: TrackParams = self.params
        tracker = self._trackers.setdefault(msg.stream, Tracker(p.iou_threshold, p.max_gap))
        faces = faces_of(msg)
        tracks = tracker.update(msg.seq, [face.box for face in faces])
        for face, track in zip(faces, tracks):
            face.track = track.id
            if p.smoothing == "off":
                continue
            if face.probs is None or len(face.probs) != len(self._classes):
                if face.probs is None and track.smoothed is not None:
                    self._carry(face, track)  # not classified this frame (classify's faces_per_frame)
                continue
            smoothed = smooth(track, np.asarray(face.probs, dtype=np.float64), p)
            best = int(smoothed.argmax())
            if track.label is not None and smoothed[best] < smoothed[track.label] + p.hysteresis:
                best = track.label  # two classes close together: no flicker between them
            track.label = best
            face.emotion_raw = face.emotion
            face.smoothed = [round(float(v), 5) for v in smoothed]
            face.emotion = self._classes[best]
            face.confidence = round(float(smoothed[best]), 5)
        return msg

    def _carry(self, face, track: _Track) -> None:
        """The track's last smoothed label on a face that was not classified this frame."""
        face.smoothed = [round(float(v), 5) for v in track.smoothed]
        face.emotion = self._classes[track.label]
        face.confidence = round(float(track.smoothed[track.label]), 5)

    def on_eos(self, msg: Message) -> None:
        self._trackers.pop(msg.stream, None)
