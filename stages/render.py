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
from pipeline.vision.overlay import draw_faces
from pipeline.vision.record import faces_of
from pipeline.vision.video import VideoSink, open_video

log = logging.getLogger(__name__)


class RenderParams(Params):
    output: Literal["file", "window", "none"] = Field("file", description="file: OUT/<filename>; window: a display; none")
    filename: str = Field("annotated.mp4", description="video file name inside the output directory")
    codec: str = Field(
        "h264",
        pattern=r"^(h264|\S{4})$",
        description="h264: H.264 MP4 through PyAV, which browsers play; or an OpenCV fourcc (mp4v, MJPG, VP80 for .webm)",
    )
    bars: bool = Field(True, description="draw a small bar chart of the class probabilities beside each face")
    legend: bool = Field(True, description="draw a legend of the emotion colours along the bottom edge")
    http_port: int | None = Field(None, ge=0, le=65535, description="serve a live view (MJPEG + dashboard) on this port")
    http_host: str = Field("127.0.0.1", description="address the live view binds; 0.0.0.0 to reach it from other machines")
    http_log: str | None = Field("emotions.sqlite", description="emotion log inside the output directory whose progress "
                                 "the live view shows as the log sink's frames/s (None: not shown)")  # fmt: skip


class Render(Stage):
    """Annotates frames and writes them to a video file or a window, in capture order."""

    Params = RenderParams
    requires = frozenset({IMAGE})
    is_sink = True
    ordered_input = True
    live = None  # a LiveServer with http_port; set by on_start
    _writers: dict[str, VideoSink] = {}  # noqa: RUF012 - replaced per instance in on_start

    def on_start(self) -> None:
        p: RenderParams = self.params
        self._writers: dict[str, VideoSink] = {}
        self.frames = 0
        if p.output == "window" and not os.environ.get("DISPLAY"):
            raise PipelineError("render.output=window needs a display (DISPLAY is not set); use file or none")
        self.live = None
        if p.http_port is not None:
            from pipeline.analytics.live import LiveServer, LogProgress

            progress = LogProgress(Path(self.context.out) / p.http_log, self.context.run_id) if p.http_log else None
            try:
                self.live = LiveServer(p.http_host, p.http_port, progress)
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
        frame = draw_faces(msg.image, faces_of(msg), self.context.run.get("classes"), p.bars, p.legend)
        if self.live is not None:
            self.live.state.publish(frame, msg)
        if p.output == "window":
            cv2.imshow(f"{self.name} {msg.stream}", frame)
            cv2.waitKey(1)
        elif p.output == "file":
            self._writer(msg.stream, frame, float(msg.meta.get("fps", 30.0))).write(frame)
            self.frames += 1
        return None

    def _writer(self, stream: str, frame: np.ndarray, fps: float) -> VideoSink:
        if stream not in self._writers:
            path = self.video_path(stream)
            path.parent.mkdir(parents=True, exist_ok=True)
            height, width = frame.shape[:2]
            self._writers[stream] = open_video(path, fps, (width, height), self.params.codec)
        return self._writers[stream]

    def on_stop(self) -> None:
        if self.live is not None:
            self.live.close()
        for writer in self._writers.values():
            writer.release()  # finishes the file: a stopped run leaves a playable video
        self._writers = {}
