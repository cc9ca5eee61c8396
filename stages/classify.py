"""Classify: the emotion CNN on every face of a frame, batched, through LiteRT."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from pydantic import Field, field_validator

from pipeline.errors import ModelError
from pipeline.streaming.message import Message
from pipeline.streaming.stage import IMAGE, Contract, Params, Stage
from pipeline.vision.faces import DIM_MEAN, SEGMENTATION_VERSION, crop_face, lift_dim, model_input, segmentation_channel, to_gray
from pipeline.vision.model import METADATA_NAME, EmotionModel, ModelInfo, resolve_model_path
from pipeline.vision.record import faces_in_budget


class ClassifyParams(Params):
    model: str | None = Field(None, description="model directory or .tflite file; None: the shipped models/default")
    threads: int = Field(1, ge=1, le=64, description="interpreter threads per worker")
    min_confidence: float = Field(0.0, ge=0.0, le=1.0, description="below this the label is 'uncertain' (probabilities are kept)")
    lift_dim: bool = Field(True, description=f"stretch a dim face (mean grey below {DIM_MEAN}) to full contrast before the CNN")
    faces_per_frame: int | None = Field(
        2, ge=1, le=256, description="faces classified a frame, in turns (track carries labels); None: all; image folders: all"
    )

    @field_validator("model")
    @classmethod
    def _model_exists(cls, value: str | None) -> str | None:
        try:
            resolve_model_path(value)
        except ModelError as exc:
            raise ValueError(str(exc)) from None
        return value


class Classify(Stage):
    """Adds ``probs``, ``emotion`` and ``confidence`` to every face (or, with ``faces_per_frame``,
    to the faces whose turn it is: a crowded frame then costs no more than that many faces)."""

    Params = ClassifyParams
    requires = frozenset({IMAGE, "box"})
    provides = frozenset({"probs", "emotion", "confidence"})

    @classmethod
    def contract(cls, params: ClassifyParams, upstream: Mapping[str, Any]) -> Contract:
        """Reads ``model.json`` (once): the class names are fixed for the run from it.

        A model trained with the K-means channel needs a segment stage upstream, with the k
        it was trained with and the crop it expects.
        """
        try:
            path = resolve_model_path(params.model)
            info = ModelInfo.load(path / METADATA_NAME)
        except ModelError as exc:
            raise ValueError(str(exc)) from None
        k = upstream.get("segmentation_k")
        if info.segmentation and k is not None and k != info.segmentation_k:
            raise ValueError(f"model {path} was trained with segmentation k={info.segmentation_k}, the segment stage uses k={k}")
        if info.segmentation and "segment_budget" in upstream and upstream["segment_budget"] != params.faces_per_frame:
            raise ValueError(
                f"model {path} needs every classified face segmented: give segment the same faces_per_frame "
                f"({upstream['segment_budget']}) as classify ({params.faces_per_frame})"
            )
        crop = upstream.get("crop")
        if info.segmentation and crop is not None and crop != info.crop.as_dict():
            raise ValueError(f"model {path} expects the crop {info.crop.as_dict()}, the segment stage cuts {crop}")
        requires = cls.requires | ({"seg"} if info.segmentation else set())
        return Contract(requires, cls.provides, {"classes": list(info.classes), "model": str(path)})

    def on_start(self) -> None:
        self.model = EmotionModel(self.params.model, threads=self.params.threads)
        self.info = self.model.info
        trained_with = self.info.raw.get("segmentation", {}).get("version")
        if self.info.segmentation and trained_with != SEGMENTATION_VERSION:
            raise ModelError(
                f"{self.model.path}: trained on segmentation version {trained_with}, this code makes version "
                f"{SEGMENTATION_VERSION}; retrain it with `run_pipeline.py train --segmentation {self.info.segmentation_mode}`"
            )
        # Warm-up: the first inference sets up XNNPACK (~40 ms); do it before frames wait for it.
        size = self.info.input_size
        self.model.predict(np.zeros((1, size, size, self.info.channels), np.float32))

    def process(self, msg: Message) -> Message:
        faces = faces_in_budget(msg, self.params.faces_per_frame)
        if not faces:
            return msg
        gray = to_gray(msg.image)
        crops = np.stack([crop_face(gray, face.box, self.info.crop) for face in faces])
        if self.params.lift_dim:
            crops = lift_dim(crops)
        seg = None
        if self.info.segmentation:
            seg = np.stack([segmentation_channel(self._seg(face.seg), self.info.segmentation_k) for face in faces])
        probs = self.model.predict(model_input(crops, seg))
        for face, p in zip(faces, probs):
            best = int(p.argmax())
            face.probs = [round(float(v), 5) for v in p]
            face.confidence = round(float(p[best]), 5)
            face.emotion = self.info.classes[best] if p[best] >= self.params.min_confidence else "uncertain"
        return msg

    def _seg(self, seg: np.ndarray | None) -> np.ndarray:
        if seg is None:  # the topology guarantees a segment stage; a face without one is malformed
            raise ValueError("a face has no segmentation ('seg'), which this model needs")
        return seg
