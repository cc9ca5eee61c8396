"""Capture: frames from a camera, a video file, an image folder or a stream URL."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

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

    @field_validator("source")
    @classmethod
    def _source_exists(cls, value: str) -> str:
        if value.isdigit() or URL.match(value):
            return value
        if not Path(value).exists():
            raise ValueError(f"no such file or folder: {value}")
        return value


def open_source(source: str) -> cv2.VideoCapture | list[Path]:
    """Open a camera/file/URL with OpenCV, or list an image folder."""
    path = Path(source)
    if not source.isdigit() and path.is_dir():
        images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise SourceError(f"{source}: folder has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return images
    cap = cv2.VideoCapture(int(source) if source.isdigit() else source)
    if not cap.isOpened():
        raise SourceError(f"cannot open video source {source!r} (camera index, video file or stream URL)")
    return cap


def read_frames(source: cv2.VideoCapture | list[Path], unreadable: list[str] | None = None) -> Iterator[np.ndarray]:
    """Yield BGR frames until the source ends; unreadable folder images are skipped (and listed in ``unreadable``)."""
    if isinstance(source, list):
        for path in source:
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is not None:
                yield image
            elif unreadable is not None:
                unreadable.append(str(path))
        return
    while True:
        ok, frame = source.read()
        if not ok:
            return
        yield frame


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
        self._source = open_source(p.source)
        native = self._source.get(cv2.CAP_PROP_FPS) if isinstance(self._source, cv2.VideoCapture) else 0
        self.fps = p.fps or (native if native and native < 1000 else 30.0)
        self._resume_after = 0
        self._unreadable: list[str] = []
        self._truncated: str | None = None

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
            for i, frame in enumerate(read_frames(self._source, self._unreadable)):
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
                yield Message(ts=time.time(), image=frame, meta={"fps": self.fps / (1 + p.skip), "source": p.source})
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
        if not isinstance(self._source, cv2.VideoCapture) or URL.match(self.params.source) or self.params.source.isdigit():
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
