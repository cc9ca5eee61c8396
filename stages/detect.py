"""Detect: faces with OpenCV's Haar cascades, scheduled over video frames.

The algorithms live in ``pipeline.vision.detection`` (``detect_faces``, ``verify_faces``, ...)
and ``pipeline.vision.scan`` (scan plans, the per-stream ``VideoScanner``); this module holds
the parameters and the stage.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np
from pydantic import Field, field_validator

from pipeline.streaming.message import Message
from pipeline.streaming.stage import IMAGE, Params, Stage
from pipeline.vision.detection import (
    DEFAULT_CASCADE,
    VERIFY_CASCADE,
    Box,
    detect_faces,
    load_cascade,
    resolve_cascade,
    verify_faces,
)
from pipeline.vision.faces import to_gray
from pipeline.vision.record import FACES, Face, is_still
from pipeline.vision.scan import FaceFinder, VideoScanner

__all__ = ["DEFAULT_CASCADE", "Detect", "DetectParams", "detect_faces", "load_cascade", "resolve_cascade", "verify_faces"]


class DetectParams(Params):
    cascade: str = Field(DEFAULT_CASCADE, description="a cascade name from cv2.data.haarcascades, or a path to an XML file")
    scale_factor: float = Field(1.2, gt=1.0, le=2.0, description="image pyramid step; larger is faster and misses more")
    full_scale_factor: float = Field(
        1.15, gt=1.0, le=2.0, description="pyramid step of full scans (image folders, mode: full): finer than video's"
    )
    min_neighbors: int = Field(1, ge=0, le=50, description="detections that must overlap to keep a face")
    min_size: int = Field(24, ge=8, le=2000, description="smallest face side in frame pixels")
    detect_width: int | None = Field(None, ge=64, le=7680, description="search at most this resolution; None: the frame's")
    equalize: bool = Field(True, description="equalise the histogram before detecting (helps in dim light)")
    verify: Literal["alt2", "none"] = Field("alt2", description="second look at new faces with OpenCV's alt2 cascade")
    verify_neighbors: int = Field(12, ge=0, le=50, description="min_neighbors of the second look (higher: stricter)")
    mode: Literal["video", "full"] = Field(
        "video", description="video: follow known faces, rolling scan for new ones; full: whole frame every frame"
    )
    scan_pixels: int = Field(
        60_000, ge=10_000, le=100_000_000, description="video: pixels searched per frame for new faces (sets the cycle length)"
    )
    scan_share: float = Field(
        0.2, gt=0.0, le=1.0, description="video: at most this share of a full scan a frame (small frames cost less)"
    )
    min_hits: int = Field(3, ge=1, le=100, description="video: frames a new face must be found on before it is reported")
    max_misses: int = Field(5, ge=0, le=1000, description="video: frames in a row a face may be missed before it is forgotten")
    hold: int = Field(0, ge=0, le=100, description="video: frames a face is still reported, where predicted, while missed")
    follow_per_frame: int | None = Field(
        4, ge=1, le=1000, description="video: known faces searched again a frame, in turns (None: all); others move as predicted"
    )

    @field_validator("cascade")
    @classmethod
    def _cascade_exists(cls, value: str) -> str:
        resolve_cascade(value)
        return value


class Detect(Stage):
    """Adds ``faces`` (boxes) to each frame.

    In ``video`` mode the stage keeps state per stream (the faces it follows, where the
    rolling scan is). With ``workers: N`` each worker keeps its own state for the frames it
    gets (about every N-th): it still works, but follows faces on fewer frames; use
    ``workers: 1`` for video, or ``mode: full`` where frames are unrelated.
    """

    Params = DetectParams
    requires = frozenset({IMAGE})
    provides = frozenset({"box"})

    def on_start(self) -> None:
        p: DetectParams = self.params
        self.finder = make_finder(p)
        self._scanners: dict[str, VideoScanner] = {}

    def process(self, msg: Message) -> Message:
        msg.fields[FACES] = [Face(box=box) for box in self.detect(to_gray(msg.image), msg.stream, is_still(msg))]
        return msg

    def detect(self, gray: np.ndarray, stream: str = "", still: bool = False) -> list[Box]:
        """Face boxes of one gray frame of ``stream``, largest first (a full scan for still images)."""
        p: DetectParams = self.params
        if p.equalize:
            gray = cv2.equalizeHist(gray)  # once per frame: scans, windows and the second look share it
        if still or p.mode == "full":
            return self.finder.full(gray)
        scanner = self._scanners.get(stream)
        if scanner is None:
            scanner = self._scanners[stream] = VideoScanner(self.finder, p.min_hits, p.max_misses, p.hold, p.follow_per_frame)
        return scanner.step(gray)

    def on_eos(self, msg: Message) -> None:
        self._scanners.pop(msg.stream, None)


def make_finder(p: DetectParams) -> FaceFinder:
    """The cascades and settings of a ``DetectParams``."""
    return FaceFinder(
        classifier=load_cascade(p.cascade),
        verifier=load_cascade(VERIFY_CASCADE) if p.verify == "alt2" else None,
        scale_factor=p.scale_factor,
        full_scale_factor=p.full_scale_factor,
        min_neighbors=p.min_neighbors,
        min_size=p.min_size,
        detect_width=p.detect_width,
        budget=p.scan_pixels,
        share=p.scan_share,
        verify_neighbors=p.verify_neighbors,
    )
