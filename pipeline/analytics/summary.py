"""What a report says about one stream of one run: time on screen, time per emotion, coverage.

Every face row stands for the time until its stream's next frame (``dt``), so shares are
shares of time, not of rows: a paced run and an as-fast-as-possible run of the same file give
the same figures, and a live source that dropped frames is not under-counted. A gap longer
than ``GAP_PERIODS`` frame periods (a stall, a pause) counts as one period only.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.analytics.data import Stream
from pipeline.vision.emotions import VALENCE

GAP_PERIODS = 3.0
VALENCE_SCORE = {"positive": 1.0, "neutral": 0.0, "negative": -1.0}


@dataclass
class TrackSummary:
    """One person (a track id) in one stream."""

    track: int | None
    first: float
    last: float
    on_screen: float
    seconds: Counter
    valence: float
    confidence: float | None
    faces: int
    best: dict[str, Any]  # the row its thumbnail is cut from
    segments: list[tuple[float, float, str]] = field(default_factory=list)  # (start, end, emotion)

    @property
    def dominant(self) -> str:
        return self.seconds.most_common(1)[0][0] if self.seconds else ""

    @property
    def name(self) -> str:
        return f"#{self.track}" if self.track is not None else "untracked"


@dataclass
class StreamSummary:
    """The figures of one stream of one run."""

    stream: Stream
    start: float
    duration: float
    period: float
    frames: int
    frames_with_faces: int
    seconds: Counter  # emotion -> face-seconds
    confidences: list[float]
    tracks: list[TrackSummary]
    bins: list[tuple[float, Counter]]
    bin_s: float
    labels: list[str]

    @property
    def coverage(self) -> float:
        return self.frames_with_faces / self.frames if self.frames else 0.0

    @property
    def face_seconds(self) -> float:
        return sum(self.seconds.values())

    def share(self, label: str) -> float:
        return self.seconds[label] / self.face_seconds if self.face_seconds else 0.0

    def valence_share(self, name: str) -> float:
        total = self.face_seconds
        return sum(s for e, s in self.seconds.items() if VALENCE.get(e, "neutral") == name) / total if total else 0.0

    @property
    def mean_confidence(self) -> float | None:
        return float(np.mean(self.confidences)) if self.confidences else None


def frame_periods(stream: Stream) -> tuple[dict[int, float], float]:
    """Each frame's duration (time to the next frame, gaps capped) and the typical period."""
    frames = sorted(stream.frames or stream.faces, key=lambda r: r["frame"])
    times = np.array([r["t"] for r in frames], dtype=float)
    diffs = np.diff(times)
    positive = diffs[diffs > 0]
    fps = (stream.run.sources.get(stream.stream) or {}).get("fps")
    period = float(np.median(positive)) if len(positive) else (1.0 / fps if fps else 1 / 30)
    durations = np.append(diffs, period)
    # A stall, a pause or a loop back to the start counts one period.
    durations = np.where((durations > GAP_PERIODS * period) | (durations < 0), period, durations)
    return {r["frame"]: float(d) for r, d in zip(frames, durations)}, period


def summarise(stream: Stream, classes: list[str], bin_s: float = 1.0) -> StreamSummary:
    """The figures of ``stream``; ``bin_s``: seconds per bin of the share over time."""
    dt, period = frame_periods(stream)
    times = [r["t"] for r in stream.frames or stream.faces]
    start = min(times)
    seconds: Counter = Counter()
    bins: dict[int, Counter] = defaultdict(Counter)
    by_track: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for r in stream.faces:
        weight = dt.get(r["frame"], period)
        label = r["emotion"] or "face"
        seconds[label] += weight
        bins[int((r["t"] - start) // bin_s)][label] += weight
        by_track[r["track"]].append(r)
    tracks = sorted((_track(key, rows, dt, period) for key, rows in by_track.items()), key=lambda t: -t.on_screen)
    labels = [c for c in classes if seconds[c]] + sorted(e for e in seconds if e not in classes)
    return StreamSummary(
        stream=stream,
        start=start,
        duration=max(times) - start + period,
        period=period,
        frames=len(stream.frames),
        frames_with_faces=sum(1 for r in stream.frames if r["faces"] > 0),
        seconds=seconds,
        confidences=[r["confidence"] for r in stream.faces if r["confidence"] is not None],
        tracks=tracks,
        bins=[(start + b * bin_s, c) for b, c in sorted(bins.items())],
        bin_s=bin_s,
        labels=labels,
    )


def _track(key: Any, rows: list[dict[str, Any]], dt: dict[int, float], period: float) -> TrackSummary:
    seconds: Counter = Counter()
    segments: list[tuple[float, float, str]] = []
    valence = 0.0
    for r in rows:
        weight = dt.get(r["frame"], period)
        label = r["emotion"] or "face"
        seconds[label] += weight
        valence += weight * VALENCE_SCORE[VALENCE.get(label, "neutral")]
        end = r["t"] + weight
        # One bar per stretch of one label; a gap (the face lost for a while) starts a new one.
        if segments and segments[-1][2] == label and r["t"] - segments[-1][1] <= GAP_PERIODS * period:
            segments[-1] = (segments[-1][0], end, label)
        else:
            segments.append((r["t"], end, label))
    confident = [r["confidence"] for r in rows if r["confidence"] is not None]
    on_screen = sum(seconds.values())
    # The thumbnail: the largest face among the track's more confident half (a clear, near view).
    threshold = float(np.median(confident)) if confident else 0.0
    best = max(rows, key=lambda r: ((r["confidence"] or 0.0) >= threshold, r["w"] * r["h"]))
    return TrackSummary(
        track=key,
        first=rows[0]["t"],
        last=rows[-1]["t"] + dt.get(rows[-1]["frame"], period),
        on_screen=on_screen,
        seconds=seconds,
        valence=valence / on_screen if on_screen else 0.0,
        confidence=float(np.mean(confident)) if confident else None,
        faces=len(rows),
        best=best,
        segments=segments,
    )
