"""Capture: frames from a camera, a video file, an image folder or a stream URL."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal, NamedTuple

import cv2
import numpy as np
from pydantic import Field, field_validator

from pipeline.errors import SourceError
from pipeline.streaming.message import Message
from pipeline.streaming.stage import Params, Stage
from pipeline.vision.emotions import IMAGE_SUFFIXES

URL = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)


class CaptureParams(Params):
    source: str = Field("0", description="camera index (0), video file, image folder, or stream URL (rtsp://, http://)")
    stream: str | None = Field(None, description="stream id stamped on every frame (default: the stage name)")
    pacing: Literal["realtime", "max"] = Field("realtime", description="realtime: the source's fps; max: as fast as possible")
    fps: float | None = Field(None, gt=0, le=1000, description="pace at this rate instead of the source's own fps")
    width: int | None = Field(None, ge=16, le=7680, description="resize frames to this width (height keeps the aspect)")
    skip: int = Field(0, ge=0, le=1000, description="drop this many source frames after each kept frame")
    max_frames: int | None = Field(None, ge=1, description="stop after this many frames")
    loop: bool = Field(False, description="restart a file source at its end (demos, soak tests)")
    decode_threads: int = Field(
        1, ge=0, le=64, description="FFmpeg threads decoding a file or stream: 1 costs the least CPU a frame; 0: FFmpeg's choice"
    )

    @field_validator("source")
    @classmethod
    def _source_exists(cls, value: str) -> str:
        if value.isdigit() or URL.match(value):
            return value
        if not Path(value).exists():
            raise ValueError(f"no such file or folder: {value}")
        return value


def open_source(source: str, decode_threads: int = 1) -> cv2.VideoCapture | list[Path]:
    """Open a camera/file/URL with OpenCV, or list an image folder.

    Files and streams are decoded by FFmpeg with ``decode_threads`` threads (0: its own choice, a
    thread per core). One thread decodes woman2.mp4 for 0.59 ms of CPU a frame against 0.67-0.89 ms
    with two: the stages downstream need the cores more than the decoder needs to finish early.
    """
    path = Path(source)
    if not source.isdigit() and path.is_dir():
        images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise SourceError(f"{source}: folder has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return images
    if source.isdigit():
        cap = cv2.VideoCapture(int(source))
    else:
        cap = cv2.VideoCapture(source, cv2.CAP_ANY, [cv2.CAP_PROP_N_THREADS, decode_threads])
    if not cap.isOpened():
        raise SourceError(f"cannot open video source {source!r} (camera index, video file or stream URL)")
    return cap


class SourceFrame(NamedTuple):
    """One frame as read from its source."""

    image: np.ndarray
    media_ts: float  # seconds into the source (see ``Message.media_ts``)
    name: str | None = None  # the image file, for folder sources


def source_kind(source: str) -> Literal["camera", "url", "folder", "file"]:
    """What a ``source`` string names; cameras and URLs are live, files and folders have media time."""
    if source.isdigit():
        return "camera"
    if URL.match(source):
        return "url"
    return "folder" if Path(source).is_dir() else "file"


def read_frames(
    source: cv2.VideoCapture | list[Path], fps: float = 30.0, live_since: float | None = None, unreadable: list[str] | None = None
) -> Iterator[SourceFrame]:
    """Yield frames with their media time until the source ends; unreadable folder images are skipped.

    Args:
        source: what ``open_source`` returned.
        fps: the source's frame rate, for media time where the container gives none.
        live_since: for live sources, the run's start (``time.time()``): their media time is
            the time since then, as they have no position of their own.
        unreadable: folder images that could not be read are listed here.
    """
    if isinstance(source, list):
        for i, path in enumerate(source):
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is not None:
                yield SourceFrame(image, i / fps, path.name)
            elif unreadable is not None:
                unreadable.append(str(path))
        return
    index, last = 0, -1.0
    while True:
        ok, frame = source.read()
        if not ok:
            return
        if live_since is not None:
            media = time.time() - live_since
        else:
            # The container's timestamp of this frame; frame index / fps where it gives none
            # (some containers report 0 or do not advance).
            media = source.get(cv2.CAP_PROP_POS_MSEC) / 1000
            if not (math.isfinite(media) and media > last or index == 0 and media == 0):
                media = index / fps
        last = media
        index += 1
        yield SourceFrame(frame, media)


class Capture(Stage):
    """Reads a source and emits one message per frame, paced in real time or as fast as possible."""

    Params = CaptureParams
    provides = frozenset({"image"})
    is_source = True
    _source: cv2.VideoCapture | list[Path] | None = None  # set by on_start
    _truncated: str | None = None  # what a file that ended early lost
    _unreadable: tuple[str, ...] | list[str] = ()  # folder images that could not be read

    def on_start(self) -> None:
        p: CaptureParams = self.params
        self._source = open_source(p.source, p.decode_threads)
        native = self._source.get(cv2.CAP_PROP_FPS) if isinstance(self._source, cv2.VideoCapture) else 0
        self.fps = p.fps or (native if native and native < 1000 else 30.0)
        self.kind = source_kind(p.source)
        # Live sources count media time from the run's start, so a restarted capture goes on from there.
        started = self.context.launch.get("started", time.time())
        self._live_since = started if self.kind in ("camera", "url") else None
        # Files by absolute path: reports read thumbnails from them, from whatever folder they run in.
        self._named = str(Path(p.source).resolve()) if self.kind in ("file", "folder") else p.source
        self._resume_after = 0
        self._unreadable = []

    def resume(self, emitted: int) -> None:
        """Skip the frames an earlier start of this worker already sent (files and folders)."""
        self._resume_after = emitted

    def generate(self) -> Iterator[Message]:
        p: CaptureParams = self.params
        period = (1 + p.skip) / self.fps if p.pacing == "realtime" else 0.0
        sent = 0
        next_due = time.monotonic()
        while True:
            read = 0
            for i, (frame, media_ts, name) in enumerate(read_frames(self._source, self.fps, self._live_since, self._unreadable)):
                read += 1
                if i % (1 + p.skip):
                    continue
                if sent < self._resume_after:  # sent before a restart: skipped, not paced
                    sent += 1
                    continue
                if period:
                    delay = next_due - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    next_due = max(next_due + period, time.monotonic() - period)
                if p.width and frame.shape[1] != p.width:
                    height = round(frame.shape[0] * p.width / frame.shape[1])
                    frame = cv2.resize(frame, (p.width, height), interpolation=cv2.INTER_AREA)
                meta = {"fps": self.fps / (1 + p.skip), "source": self._named, "kind": self.kind}
                if name is not None:
                    meta["file"] = name
                if p.width:
                    meta["width"] = p.width  # boxes are in resized pixels: reports scale them back to the source
                yield Message(ts=time.time(), media_ts=media_ts, image=frame, meta=meta)
                sent += 1
                if p.max_frames and sent >= p.max_frames:
                    return
            self._check_complete(read)
            if not p.loop or isinstance(self._source, list) and not self._source:
                return
            if isinstance(self._source, cv2.VideoCapture):
                self._source.set(cv2.CAP_PROP_POS_FRAMES, 0)

    def _check_complete(self, read: int) -> None:
        """Note a file that ended before the frame count its container announced (damaged, truncated)."""
        if self.kind != "file" or not isinstance(self._source, cv2.VideoCapture):
            return
        announced = int(self._source.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        if read < announced - 1:  # some containers round the count; one frame short is not damage
            self._truncated = f"{self.params.source}: stopped at frame {read} of {announced} (damaged or truncated file)"

    def losses(self) -> list[str]:
        lost = [self._truncated] if self._truncated else []
        if self._unreadable:
            lost.append(f"{len(self._unreadable)} unreadable images skipped (first: {self._unreadable[0]})")
        return lost

    def on_stop(self) -> None:
        if isinstance(self._source, cv2.VideoCapture):
            self._source.release()
