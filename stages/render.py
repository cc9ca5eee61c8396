"""Render: boxes, emotion labels and confidence drawn on the video, written in frame order."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from pydantic import Field

from pipeline.errors import PipelineError
from pipeline.streaming.message import Message
from pipeline.streaming.stage import IMAGE, Params, Stage
from pipeline.vision.emotions import bgr
from pipeline.vision.record import Face, faces_of

log = logging.getLogger(__name__)


class RenderParams(Params):
    output: Literal["file", "window", "none"] = Field("file", description="file: OUT/<filename>; window: a display; none")
    filename: str = Field("annotated.mp4", description="video file name inside the output directory")
    fourcc: str = Field("mp4v", min_length=4, max_length=4, description="OpenCV codec code of the video file")
    bars: bool = Field(True, description="draw a small bar chart of the class probabilities beside each face")
    http_port: int | None = Field(None, ge=0, le=65535, description="serve a live view (MJPEG + dashboard) on this port")
    http_host: str = Field("127.0.0.1", description="address the live view binds; 0.0.0.0 to reach it from other machines")


def draw_faces(image: np.ndarray, faces: list[Face], classes: list[str] | None, bars: bool = True) -> np.ndarray:
    """Draw each face's box, label and confidence (and probability bars) on a copy of ``image``."""
    out = image.copy()
    for face in faces:
        x, y, w, h = face.box
        label = face.emotion or "face"
        colour = bgr(label)
        cv2.rectangle(out, (x, y), (x + w, y + h), colour, 2)
        text = f"{label} {face.confidence:.0%}" if face.confidence is not None else label
        if face.track is not None:
            text = f"#{face.track} {text}"
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
        ty = max(y - 6, th + 4)
        cv2.rectangle(out, (x, ty - th - 4), (x + tw + 4, ty + 2), colour, -1)
        cv2.putText(out, text, (x + 2, ty - 2), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        probs = face.smoothed or face.probs
        if bars and classes and probs:
            for i, (name, p) in enumerate(zip(classes, probs)):
                by = y + i * 12
                cv2.rectangle(out, (x + w + 4, by), (x + w + 4 + int(60 * p), by + 9), bgr(name), -1)
                cv2.putText(out, name[:3], (x + w + 68, by + 8), cv2.FONT_HERSHEY_SIMPLEX, 0.3, (255, 255, 255), 1)
    return out


class Render(Stage):
    """Annotates frames and writes them to a video file or a window, in capture order."""

    Params = RenderParams
    requires = frozenset({IMAGE})
    is_sink = True
    ordered_input = True
    live = None  # a LiveServer with http_port; set by on_start
    _writers: dict[str, cv2.VideoWriter] = {}  # noqa: RUF012 - replaced per instance in on_start

    def on_start(self) -> None:
        p: RenderParams = self.params
        self._writers: dict[str, cv2.VideoWriter] = {}
        self.frames = 0
        if p.output == "window" and not os.environ.get("DISPLAY"):
            raise PipelineError("render.output=window needs a display (DISPLAY is not set); use file or none")
        self.live = None
        if p.http_port is not None:
            from pipeline.analytics.live import LiveServer

            try:
                self.live = LiveServer(p.http_host, p.http_port)
            except OSError as exc:
                raise PipelineError(f"render.http_port: cannot serve on {p.http_host}:{p.http_port}: {exc}") from exc
            log.info("%s: live view on http://%s:%d/", self.name, *self.live.address)

    def video_path(self, stream: str) -> Path:
        """``OUT/annotated.mp4``, or ``OUT/annotated-<stream>.mp4`` when several streams meet here."""
        path = Path(self.context.out) / self.params.filename
        if len(self.context.streams) > 1:
            path = path.with_name(f"{path.stem}-{stream}{path.suffix}")
        return path

    def process(self, msg: Message) -> None:
        p: RenderParams = self.params
        if p.output == "none" and self.live is None:
            return None
        frame = draw_faces(msg.image, faces_of(msg), self.context.run.get("classes"), p.bars)
        if self.live is not None:
            self.live.state.publish(frame, msg)
        if p.output == "window":
            cv2.imshow(f"{self.name} {msg.stream}", frame)
            cv2.waitKey(1)
        elif p.output == "file":
            self._writer(msg.stream, frame, float(msg.meta.get("fps", 30.0))).write(frame)
            self.frames += 1
        return None

    def _writer(self, stream: str, frame: np.ndarray, fps: float) -> cv2.VideoWriter:
        if stream not in self._writers:
            path = self.video_path(stream)
            path.parent.mkdir(parents=True, exist_ok=True)
            height, width = frame.shape[:2]
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*self.params.fourcc), fps, (width, height))
            if not writer.isOpened():
                raise PipelineError(f"{path}: cannot open a {self.params.fourcc} video writer")
            self._writers[stream] = writer
        return self._writers[stream]

    def on_stop(self) -> None:
        if self.live is not None:
            self.live.close()
        for writer in self._writers.values():
            writer.release()  # finishes the file: a stopped run leaves a playable video
        self._writers = {}
