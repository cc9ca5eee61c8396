"""Render: boxes, emotion labels and confidence drawn on the video, written in frame order."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Literal

import cv2
from pydantic import Field, field_validator

from pipeline.errors import PipelineError
from pipeline.streaming.message import Message
from pipeline.streaming.stage import IMAGE, Params, Stage, inside_out
from pipeline.vision.overlay import draw_faces
from pipeline.vision.record import Face, faces_of
from pipeline.vision.recording import SegmentedVideo
from pipeline.vision.video import DEFAULT_PRESET, Preset, open_video

log = logging.getLogger(__name__)


class RenderParams(Params):
    output: Literal["file", "window", "none"] = Field("file", description="file: OUT/<filename>; window: a display; none")
    filename: str = Field("annotated.mp4", description="video file name inside the output directory")
    codec: str = Field(
        "h264",
        pattern=r"^(h264|\S{4})$",
        description="h264: H.264 MP4 through PyAV, which browsers play; or an OpenCV fourcc (mp4v, MJPG, VP80 for .webm)",
    )
    preset: Preset = Field(DEFAULT_PRESET, description="h264: x264 speed preset; slower ones make smaller files")
    segment_s: float = Field(
        2.0, gt=0, le=3600, description="seconds of video per segment file: a killed render loses at most this much"
    )
    bridge: int = Field(
        10, ge=0, le=300, description="frames a tracked face missed by the detector is still drawn where last seen (no blinking)"
    )
    bars: bool = Field(True, description="draw a small bar chart of the class probabilities beside each face")
    legend: bool = Field(True, description="draw a legend of the emotion colours along the bottom edge")
    http_port: int | None = Field(None, ge=0, le=65535, description="serve a live view (MJPEG + dashboard) on this port")
    http_host: str = Field("127.0.0.1", description="address the live view binds; 0.0.0.0 to reach it from other machines")
    http_log: str | None = Field("emotions.sqlite", description="emotion log inside the output directory whose progress "
                                 "the live view shows as the log sink's frames/s (None: not shown)")  # fmt: skip

    _inside_out = field_validator("filename", "http_log")(inside_out)


def _check_codec(codec: str) -> None:
    """Refuse at start a codec that cannot be written here, instead of failing on every frame.

    The probe goes to the temp folder: a full output disk is a different fault, reported as such.
    """
    with tempfile.TemporaryDirectory(prefix="emopipe-codec-") as tmp:
        try:
            open_video(Path(tmp) / "probe.mp4", 30.0, (64, 64), codec).release()
        except PipelineError:
            raise PipelineError(f"render.codec: cannot write {codec!r} videos on this machine (h264 or mp4v work)") from None


class GapBridge:
    """Tracked faces the detector missed for at most ``frames`` frames, kept where last seen.

    A face found on most frames but not all would otherwise blink on the video; ``track``
    keeps its id through such gaps, so the face drawn in the gap is the one seen last.
    """

    def __init__(self, frames: int):
        self.frames = frames
        self._last: dict[int, tuple[int, Face]] = {}  # track id -> (frame seen last, face)

    def faces(self, seq: int, faces: list[Face]) -> list[Face]:
        """The faces to draw on frame ``seq``: its own, and the recently missed ones."""
        for face in faces:
            if face.track is not None:
                self._last[face.track] = (seq, face)
        self._last = {t: (s, f) for t, (s, f) in self._last.items() if 0 <= seq - s <= self.frames}
        shown = {face.track for face in faces}
        return faces + [face for track, (_, face) in self._last.items() if track not in shown]


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
        self._bridges: dict[str, GapBridge] = {}
        self._lost: list[str] = []
        self.frames = 0
        if p.output == "window" and not os.environ.get("DISPLAY"):
            raise PipelineError("render.output=window needs a display (DISPLAY is not set); use file or none")
        if p.output == "file":
            _check_codec(p.codec)
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
        bridge = self._bridges.setdefault(msg.stream, GapBridge(p.bridge))
        faces = bridge.faces(msg.seq, faces_of(msg))
        frame = draw_faces(msg.image, faces, self.context.run.get("classes"), p.bars, p.legend)
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
            video = SegmentedVideo(
                self.video_path(stream), self.params.codec, fps, self.context.restarts, segment, self.params.preset
            )
            self._videos[stream] = video
        return self._videos[stream]

    def on_eos(self, msg: Message) -> None:
        """Finish the stream's video file: its segments, from every start of this worker, joined."""
        self._bridges.pop(msg.stream, None)
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
