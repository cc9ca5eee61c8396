"""Video files: H.264 MP4 that browsers play (PyAV's bundled libx264), or any OpenCV fourcc.

OpenCV's pip wheels cannot write H.264 (no encoder is bundled, for licence reasons), and their
``mp4v`` (MPEG-4 Part 2) plays in no browser; PyAV's wheels bundle FFmpeg with libx264.
"""

from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path
from typing import Literal, Protocol

import cv2
import numpy as np

from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

H264 = "h264"
Preset = Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium"]  # x264's, fastest first
DEFAULT_PRESET: Preset = "superfast"
BROWSER_CODECS = frozenset({"h264", "vp8", "vp9", "av1"})  # what Chromium and Firefox play in MP4 or WebM


class VideoSink(Protocol):
    """What render writes frames to."""

    def write(self, frame: np.ndarray) -> None: ...

    def release(self) -> None: ...


class H264Writer:
    """BGR frames to an H.264 MP4 (yuv420p, the moov atom first so a browser starts playing at once).

    Args:
        path: the file to write.
        fps: frames per second.
        size: (width, height); odd sides lose their last row or column (yuv420p needs even ones).
        crf: x264's constant quality (18 near lossless .. 28 small); 23 is its default.
        preset: x264's speed preset (``Preset``); slower ones make smaller files at the same quality.
    """

    def __init__(self, path: Path, fps: float, size: tuple[int, int], crf: int = 23, preset: str = DEFAULT_PRESET):
        import av

        self.width, self.height = size[0] // 2 * 2, size[1] // 2 * 2
        rate = Fraction(fps).limit_denominator(1001)
        try:
            self._container = av.open(str(path), mode="w", options={"movflags": "+faststart"})
            # One thread like every worker; at 1280x720 ultrafast costs ~6 ms a frame, superfast ~10, veryfast ~15.
            options = {"crf": str(crf), "preset": preset, "threads": "1", "bf": "0"}  # no B-frames: parts join by copying
            self._stream = self._container.add_stream("libx264", rate=rate, options=options)
        except (av.FFmpegError, ValueError) as exc:
            raise PipelineError(f"{path}: cannot open an H.264 writer: {exc}") from exc
        self._stream.width, self._stream.height, self._stream.pix_fmt = self.width, self.height, "yuv420p"
        self._time_base = Fraction(1) / rate
        self._count = 0

    def write(self, frame: np.ndarray) -> None:
        import av

        image = np.ascontiguousarray(frame[: self.height, : self.width])
        video_frame = av.VideoFrame.from_ndarray(image, format="bgr24")
        video_frame.pts, video_frame.time_base = self._count, self._time_base
        self._count += 1
        self._container.mux(self._stream.encode(video_frame))

    def release(self) -> None:
        """Flush the encoder and finish the file (a playable video up to the last frame written)."""
        if self._container is None:
            return
        self._container.mux(self._stream.encode(None))
        self._container.close()
        self._container = None


def open_video(path: Path, fps: float, size: tuple[int, int], codec: str = H264, preset: str = DEFAULT_PRESET) -> VideoSink:
    """A writer of ``codec``: ``h264`` (PyAV), or a four-character OpenCV fourcc (``mp4v``, ``MJPG``, ``VP80``)."""
    if codec == H264:
        return H264Writer(path, fps, size, preset=preset)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, size)
    if not writer.isOpened():
        raise PipelineError(f"{path}: cannot open a {codec} video writer")
    return writer


def join_h264(parts: list[Path], path: Path) -> int:
    """Concatenate H.264 MP4 files written by ``H264Writer`` with the same settings into ``path``,
    copying their packets (no decoding, no re-encoding); returns the frames joined.

    Each part starts on a keyframe with the same stream parameters, so the packets of one follow
    those of the previous with their timestamps moved past its end.
    """
    import av

    frames, offset = 0, Fraction(0)  # offset: seconds of video already joined
    out = stream = None  # opened with the first readable part: no empty file when none is
    try:
        for part in parts:
            try:
                source = av.open(str(part))
            except av.FFmpegError as exc:  # a part its writer never finished (killed): nothing to copy
                log.warning("%s: skipped, unreadable: %s", part, exc)
                continue
            with source:
                video = source.streams.video[0]
                if out is None:
                    out = av.open(str(path), mode="w", options={"movflags": "+faststart"})
                    stream = out.add_stream_from_template(video)
                shift = int(offset / video.time_base)
                end = 0
                for packet in source.demux(video):
                    if packet.dts is None:  # the demuxer's empty packet at the end
                        continue
                    end = max(end, packet.pts + packet.duration)
                    packet.pts, packet.dts = packet.pts + shift, packet.dts + shift
                    packet.stream = stream
                    out.mux(packet)
                    frames += 1
                offset += end * video.time_base
    except av.FFmpegError as exc:  # a full disk included: render reports it as a loss (exit 1)
        raise PipelineError(f"{path}: cannot join the video segments: {exc}") from exc
    finally:
        if out is not None:
            out.close()
    return frames


def video_codec(path: Path) -> str | None:
    """The codec of the first video stream of ``path`` (``h264``, ``mpeg4``, ...), None if unreadable."""
    import av

    try:
        with av.open(str(path)) as container:
            return container.streams.video[0].codec_context.name if container.streams.video else None
    except (av.FFmpegError, OSError, IndexError):
        return None
