"""Segment: K-means regions (eyes, brows, mouth...) of each face, with OpenCV's K-means."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from pipeline.streaming.message import Message
from pipeline.streaming.stage import IMAGE, Contract, Params, Stage
from pipeline.vision.faces import FACE_SIZE, FER_FRAMING, crop_face, segment_face, to_gray
from pipeline.vision.record import faces_in_budget


class SegmentParams(Params):
    k: int = Field(4, ge=2, le=16, description="number of K-means regions per face")
    spatial_weight: float = Field(0.35, ge=0.0, le=5.0, description="weight of pixel position against intensity")
    faces_per_frame: int | None = Field(
        2, ge=1, le=256, description="faces segmented a frame, taking turns as classify does; None: all; image folders: all"
    )


class Segment(Stage):
    """Adds ``seg`` (a 48x48 uint8 label map, 0 = darkest region) to every face (or, with
    ``faces_per_frame``, to the faces whose turn it is; give classify the same budget)."""

    Params = SegmentParams
    requires = frozenset({IMAGE, "box"})
    provides = frozenset({"seg"})

    @classmethod
    def contract(cls, params: SegmentParams, upstream) -> Contract:
        # A segmentation model downstream checks at validation: its k and crop, and the same face budget.
        metadata = {"segmentation_k": params.k, "segment_budget": params.faces_per_frame, "crop": FER_FRAMING.as_dict()}
        return Contract(cls.requires, cls.provides, metadata)

    def on_start(self) -> None:
        segment_face(np.zeros((FACE_SIZE, FACE_SIZE), np.uint8), self.params.k)  # warm-up: the first call is slow

    def process(self, msg: Message) -> Message:
        p: SegmentParams = self.params
        gray = to_gray(msg.image)
        for face in faces_in_budget(msg, p.faces_per_frame):
            face.seg = segment_face(crop_face(gray, face.box, FER_FRAMING), p.k, p.spatial_weight)
        return msg
