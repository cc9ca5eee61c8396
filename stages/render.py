"""Render: boxes, emotion labels and confidence drawn on the video, written in frame order."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from pydantic import Field, field_validator

from pipeline.errors import PipelineError
from pipeline.streaming.message import Message
from pipeline.streaming.stage import IMAGE, Params, Stage, inside_out
from pipeline.vision.emotions import bgr
from pipeline.vision.record import Face, faces_of
from pipeline.vision.recording import SegmentedVideo, open_writer

log = logging.getLogger(__name__)


class RenderParams(Params):
    output: Literal["file", "window", "none"] = Field("file", description="file: OUT/<filename>; window: a display; none")
    filename: str = Field("annotated.mp4", description="video file name inside the output directory")
    segment_s: float = Field(
        2.0, gt=0, le=3600, description="seconds of video per segment file: a killed render loses at most this much"
    )
    _inside_out = field_validator("filename")(inside_out)
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


def _check_fourcc(fourcc: str) -> None:
    """Refuse at start a codec OpenCV cannot write here, instead of failing on every frame.

    The probe goes to the temp folder: a full output disk is a different fault, reported as such.
    """
    with tempfile.TemporaryDirectory(prefix="emopipe-fourcc-") as tmp:
        try:
            open_writer(Path(tmp) / "probe.mp4", fourcc, 30.0, (64, 64)).release()
        except PipelineError:
            raise PipelineError(f"render.fourcc: OpenCV cannot write {fourcc!r} videos on this machine (try mp4v)") from None


class Render(Stage):
    """Annotates frames and writes them to a video file or a window, in capture order."""

    Params = RenderParams
    requires = frozenset({IMAGE})
    is_sink = True
    ordered_input = True
    live = None  # a LiveServer with http_port; set by on_start
    _videos: dict[str, SegmentedVideo] = {}  # noqa: RUF012 - replaced per instance in on_start
    _lost: tuple[str, ...] | list[str] = ()

    def on_start(self) -> None:
        p: RenderParams = self.params
        self._videos: dict[str, SegmentedVideo] = {}
        self._lost: list[str] = []
        self.frames = 0
        if p.output == "window" and not os.environ.get("DISPLAY"):
            raise PipelineError("render.output=window needs a display (DISPLAY is not set); use file or none")
        if p.output == "file":
            _check_fourcc(p.fourcc)
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
            self._video(msg.stream, float(msg.meta.get("fps", 30.0))).write(frame)
            self.frames += 1
        return None

    def _video(self, stream: str, fps: float) -> SegmentedVideo:
        if stream not in self._videos:
            segment = max(1, round(fps * self.params.segment_s))
            video = SegmentedVideo(self.video_path(stream), self.params.fourcc, fps, self.context.restarts, segment)
            self._videos[stream] = video
        return self._videos[stream]

    def on_eos(self, msg: Message) -> None:
        """Finish the stream's video file: its segments, from every start of this worker, joined."""
        video = self._videos.pop(msg.stream, None)
        if video is not None:
            self._finish(video)

    def _finish(self, video: SegmentedVideo) -> None:
        try:
            video.finish()
        except (PipelineError, OSError, cv2.error) as exc:  # a full disk: the segments stay for a later join
            log.error("%s: cannot finish %s: %s", self.name, video.path, exc)
            self._lost.append(f"{video.path} not finished ({exc}); its segments are in {video.parts}")

    def losses(self) -> list[str]:
        return list(self._lost)

    def on_stop(self) -> None:
        if self.live is not None:
            self.live.close()
        for video in self._videos.values():
            self._finish(video)  # a stopped run leaves a playable video of what it rendered
        self._videos = {}
