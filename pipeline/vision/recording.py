"""A video file that survives its writer being killed: short numbered segments, joined at the end.

An MP4 is readable only once its writer has finished it (the index is written last), so a
render worker killed mid-run used to leave nothing of what it had written, and its restart
overwrote the file. Here frames go to segment files of ``segment_frames`` frames in a hidden
folder beside the video; a killed writer loses at most its open segment, a restarted one adds
segments after the earlier ones, and ``finish`` joins them all into the one file.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import cv2
import numpy as np

from pipeline.errors import PipelineError
from pipeline.vision.video import DEFAULT_PRESET, H264, VideoSink, join_h264, open_video

log = logging.getLogger(__name__)


class SegmentedVideo:
    """Frames written in segments, joined into ``path`` by ``finish``.

    Args:
        path: the final video file.
        codec: ``h264`` or an OpenCV fourcc (``pipeline.vision.video.open_video``).
        fps: frames per second of the video.
        start: which start of the writing worker this is (0 first; restarts continue the segments).
        segment_frames: frames per segment; a kill loses at most this many.
    """

    def __init__(
        self, path: Path, codec: str, fps: float, start: int = 0, segment_frames: int = 60, preset: str = DEFAULT_PRESET
    ):
        self.path, self.codec, self.fps, self.start, self.preset = path, codec, fps, start, preset
        self.parts = path.with_name(f".{path.name}.parts")
        self.segment_frames = segment_frames
        if start == 0:
            shutil.rmtree(self.parts, ignore_errors=True)  # left by an earlier run killed before it finished
        self.parts.mkdir(parents=True, exist_ok=True)
        self._writer: VideoSink | None = None
        self._in_segment = 0
        self._segment = 0
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        if self._writer is None or self._in_segment >= self.segment_frames:
            self._close_segment()
            name = f"{self.start:03d}-{self._segment:06d}.mp4"  # sorts in writing order across restarts
            self._writer = open_video(self.parts / name, self.fps, frame.shape[1::-1], self.codec, self.preset)
            self._segment += 1
        self._writer.write(frame)
        self._in_segment += 1
        self.frames += 1

    def _close_segment(self) -> None:
        if self._writer is not None:
            self._writer.release()
        self._writer, self._in_segment = None, 0

    def finish(self) -> int:
        """Join every segment written so far (by this and earlier starts) into ``path``; return its frames."""
        self._close_segment()
        segments = sorted(self.parts.glob("*.mp4"))
        joined = self.path.with_name(f".{self.path.name}.joining{self.path.suffix}")
        frames = self._join(segments, joined) if segments else 0
        if frames:
            if joined.stat().st_size == 0 or cv2.VideoCapture(str(joined)).get(cv2.CAP_PROP_FRAME_COUNT) < frames:
                raise PipelineError(f"{joined}: the joined video is incomplete (a full disk?)")
            joined.replace(self.path)
        shutil.rmtree(self.parts, ignore_errors=True)
        if self.start:
            log.info("%s: joined %d frames written across %d starts", self.path, frames, self.start + 1)
        return frames

    def _join(self, segments: list[Path], joined: Path) -> int:
        """H.264 segments are copied packet by packet (~1 ms a second of video); other codecs re-encoded."""
        if self.codec == H264:
            return join_h264(segments, joined)
        writer, frames = None, 0
        for segment in segments:
            reader = cv2.VideoCapture(str(segment))
            while (frame := reader.read()[1]) is not None:
                writer = writer or open_video(joined, self.fps, frame.shape[1::-1], self.codec)
                writer.write(frame)
                frames += 1
            reader.release()
        if writer is not None:
            writer.release()
        return frames
