"""Pictures for the report: a thumbnail of each person, and the run's annotated video.

Thumbnails are cut from the source itself where it can be read again (a video file at the
frame's media time, an image folder's file), else from the run's annotated video. The
annotated video belongs to the latest run written into its folder: it is used for a run only
when it was written during that run.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pipeline.analytics.data import Stream
from pipeline.analytics.summary import StreamSummary, TrackSummary
from pipeline.vision.video import BROWSER_CODECS, video_codec

log = logging.getLogger(__name__)

THUMB_HEIGHT = 160
VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".avi")
LATE_WRITE_S = 30.0  # render finishes its file a little after the log records the run's end


def run_video(stream: Stream, folder: Path) -> Path | None:
    """The annotated video render wrote for this stream during this run, if it is still there."""
    run = stream.run
    names = [f"annotated-{stream.stream}", "annotated"] if len(run.sources) > 1 else ["annotated"]
    # Written during this run: after its start, and before the next run into the folder started.
    end = min(run.over_by + LATE_WRITE_S, run.next_started or float("inf"))
    for name in names:
        for suffix in VIDEO_SUFFIXES:
            path = folder / f"{name}{suffix}"
            if path.is_file() and run.started <= path.stat().st_mtime <= end:
                return path
    return None


def playable(path: Path) -> bool:
    """Whether browsers play this video (H.264, VP8/9, AV1; not OpenCV's mp4v)."""
    return video_codec(path) in BROWSER_CODECS


def copy_beside(path: Path, out: Path, name: str) -> Path:
    """``path`` copied to ``out/name``: a copy, not a link, as the next run truncates and rewrites ``path``."""
    target = out / name
    if not (target.exists() and os.path.samefile(target, path)):
        shutil.copy2(path, target)
    return target


def _read_frame(path: Path, index: int | None = None, seconds: float | None = None) -> np.ndarray | None:
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            return None
        if seconds is not None:
            fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
            index = round(seconds * fps)
        cap.set(cv2.CAP_PROP_POS_FRAMES, max(index or 0, 0))
        ok, frame = cap.read()
        return frame if ok else None
    finally:
        cap.release()


def source_frame(stream: Stream, row: dict[str, Any], video: Path | None) -> tuple[np.ndarray | None, float]:
    """The frame of ``row`` and the factor from logged box coordinates to its pixels."""
    info = stream.run.sources.get(stream.stream) or {}
    source, width = info.get("source"), info.get("width")
    frame = None
    if stream.kind == "file" and source and Path(source).is_file():
        frame = _read_frame(Path(source), seconds=row["media_ts"])
    elif stream.kind == "folder" and source:
        name = next((f["file"] for f in stream.frames if f["frame"] == row["frame"]), None)
        frame = cv2.imread(str(Path(source) / name)) if name else None
    if frame is not None:
        return frame, frame.shape[1] / width if width else 1.0  # capture resized what it sent
    if video is not None:
        # The annotated video holds the frames render got, in order: the row's rank among logged frames.
        rank = next((i for i, f in enumerate(stream.frames) if f["frame"] == row["frame"]), row["frame"])
        return _read_frame(video, index=rank), 1.0
    return None, 1.0


def thumbnail(stream: Stream, track: TrackSummary, video: Path | None) -> np.ndarray | None:
    """A crop around the track's clearest face, with some margin, ``THUMB_HEIGHT`` pixels high."""
    frame, scale = source_frame(stream, track.best, video)
    if frame is None:
        return None
    x, y, w, h = (v * scale for v in (track.best[k] for k in ("x", "y", "w", "h")))
    margin = 0.25 * max(w, h)
    x0, y0 = int(max(x - margin, 0)), int(max(y - margin, 0))
    x1, y1 = int(min(x + w + margin, frame.shape[1])), int(min(y + h + margin, frame.shape[0]))
    if x1 <= x0 or y1 <= y0:
        return None
    crop = frame[y0:y1, x0:x1]
    return cv2.resize(crop, (max(1, round(crop.shape[1] * THUMB_HEIGHT / crop.shape[0])), THUMB_HEIGHT))


def write_thumbnails(summary: StreamSummary, video: Path | None, out: Path, prefix: str, limit: int = 20) -> dict[Any, str]:
    """Thumbnails of the ``limit`` longest tracks as JPEG files; track -> file name."""
    names = {}
    for track in summary.tracks[:limit]:
        try:
            image = thumbnail(summary.stream, track, video)
        except cv2.error as exc:  # a source that changed since the run: no picture, not no report
            log.warning("thumbnail of %s: %s", track.name, exc)
            image = None
        if image is not None:
            name = f"{prefix}person-{track.track if track.track is not None else 'none'}.jpg"
            if cv2.imwrite(str(out / name), image, [cv2.IMWRITE_JPEG_QUALITY, 88]):
                names[track.track] = name
    return names


def still(video: Path, seconds: float) -> np.ndarray | None:
    """One frame of ``video`` as RGB (for the PDF, which cannot play it)."""
    frame = _read_frame(video, seconds=seconds)
    return None if frame is None else cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
