"""Classify: the emotion CNN on every face of a frame, batched, through LiteRT."""

from __future__ import annotations

import numpy as np
from pydantic import Field, field_validator

from pipeline.errors import ModelError
from pipeline.streaming.message import Message
from pipeline.streaming.stage import Params, Stage
from pipeline.vision.faces import SEGMENTATION_VERSION, crop_face, model_input, segmentation_channel, to_gray
from pipeline.vision.model import METADATA_NAME, EmotionModel, ModelInfo, resolve_model_path


class ClassifyParams(Params):
    model: str | None = Field(None, description="model directory or .tflite file; None: the shipped models/default")
    threads: int = Field(1, ge=1, le=64, description="interpreter threads per worker")
    min_confidence: float = Field(0.0, ge=0.0, le=1.0, description="below this the label is 'uncertain' (probabilities are kept)")

    @field_validator("model")
    @classmethod
    def _model_exists(cls, value: str | None) -> str | None:
        try:
            resolve_model_path(value)
        except ModelError as exc:
            raise ValueError(str(exc)) from None
        return value


def model_info(params: ClassifyParams) -> ModelInfo:
    return ModelInfo.load(resolve_model_path(params.model) / METADATA_NAME)


class Classify(Stage):
    """Adds ``probs``, ``emotion`` and ``confidence`` to every face."""

    Params = ClassifyParams
    requires = frozenset({"image", "faces"})
    provides = frozenset({"emotions"})

    @classmethod
    def requirements(cls, params: ClassifyParams) -> frozenset[str]:
        # A model trained with the K-means channel needs a segment stage upstream.
        return cls.requires | ({"seg"} if model_info(params).segmentation else set())

    def on_start(self) -> None:
        self.model = EmotionModel(self.params.model, threads=self.params.threads)
        self.info = self.model.info
        trained_with = self.info.raw.get("segmentation", {}).get("version")
        if self.info.segmentation and trained_with != SEGMENTATION_VERSION:
            raise ModelError(
                f"{self.model.path}: trained on segmentation version {trained_with}, this code makes version "
                f"{SEGMENTATION_VERSION}; retrain it with `run_pipeline.py train --segmentation on`"
            )
        # Warm-up: the first inference sets up XNNPACK (~40 ms); do it before frames wait for it.
        size = self.info.input_size
        self.model.predict(np.zeros((1, size, size, self.info.channels), np.float32))

    def process(self, msg: Message) -> Message:
        if not msg.faces:
            return msg
        gray = to_gray(msg.image)
        faces = np.stack([crop_face(gray, face["box"]) for face in msg.faces])
        seg = None
        if self.info.segmentation:
            seg = np.stack([self._seg_channel(face) for face in msg.faces])
        probs = self.model.predict(model_input(faces, seg))
        for face, p in zip(msg.faces, probs):
            best = int(p.argmax())
            face["probs"] = [round(float(v), 5) for v in p]
            face["confidence"] = round(float(p[best]), 5)
            face["emotion"] = self.info.classes[best] if p[best] >= self.params.min_confidence else "uncertain"
        msg.meta["classes"] = list(self.info.classes)
        return msg

    def _seg_channel(self, face: dict) -> np.ndarray:
        if face.get("seg") is None:
            raise ModelError(f"model {self.model.path} needs the segmentation channel, but a face has no 'seg'")
        if face.get("k") != self.info.segmentation_k:
            raise ModelError(
                f"model {self.model.path} was trained with k={self.info.segmentation_k}, the segment stage uses k={face.get('k')}"
            )
        return segmentation_channel(face["seg"], self.info.segmentation_k)
