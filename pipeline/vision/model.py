"""Serving side of the emotion CNN: a .tflite file run by the LiteRT interpreter.

A model directory holds ``emotion.tflite`` and ``model.json`` (class names, input size,
whether the K-means segmentation channel is expected, training figures). The interpreter
starts in ~0.2 s and under 100 MiB, against ~5 s and ~650 MiB for TensorFlow itself.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import ModelError
from pipeline.vision.faces import HAAR_BOX, Framing

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL_DIR = PROJECT_ROOT / "models" / "default"
TFLITE_NAME = "emotion.tflite"
METADATA_NAME = "model.json"
LEGACY_CROP = HAAR_BOX  # the crop of a model.json written before "crop" was recorded
# How a model uses the K-means segmentation (`train --segmentation`, model.json "segmentation.mode"):
# "off" not at all; "on" as a second input channel; "attention" as spatial gates on the gray face's
# features (train/model.py). "on" and "attention" take the same input, gray then segmentation, so
# serving treats them alike. A model.json without "mode" predates it: "on" if enabled, else "off".
SEGMENTATION_MODES = ("off", "on", "attention")


@dataclass(frozen=True)
class ModelInfo:
    """What ``model.json`` says about a model."""

    classes: tuple[str, ...]
    input_size: int
    channels: int
    segmentation: bool  # the input has the segmentation channel (mode "on" or "attention")
    segmentation_k: int
    segmentation_mode: str  # one of SEGMENTATION_MODES
    crop: Framing
    raw: dict[str, Any]

    @classmethod
    def load(cls, path: Path) -> ModelInfo:
        try:
            raw = json.loads(path.read_text())
            seg = raw.get("segmentation", {})
            enabled = bool(seg.get("enabled", False))
            mode = seg.get("mode", "on" if enabled else "off")
            if mode not in SEGMENTATION_MODES or (mode != "off") != enabled:
                raise ValueError(f"segmentation.mode: must be one of {', '.join(SEGMENTATION_MODES)} "
                                 f"and agree with enabled={enabled}, got {mode!r}")  # fmt: skip
            return cls(
                classes=tuple(raw["classes"]),
                input_size=int(raw["input_size"]),
                channels=int(raw["channels"]),
                segmentation=enabled,
                segmentation_k=int(seg.get("k", 0)),
                segmentation_mode=mode,
                crop=Framing.from_dict(raw["crop"]) if "crop" in raw else LEGACY_CROP,
                raw=raw,
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelError(f"{path}: cannot read model metadata: {exc}") from exc


def resolve_model_path(model: str | Path | None) -> Path:
    """Return the model directory for a directory, a .tflite path, or None (the shipped default)."""
    path = Path(model) if model else DEFAULT_MODEL_DIR
    if path.suffix == ".tflite":
        path = path.parent
    if not (path / TFLITE_NAME).is_file():
        raise ModelError(f"{path}: no {TFLITE_NAME} here (train one with `run_pipeline.py train`)")
    if not (path / METADATA_NAME).is_file():
        raise ModelError(f"{path}: no {METADATA_NAME} beside {TFLITE_NAME}")
    return path


def model_facts(model: str | Path | None) -> dict[str, Any]:
    """What a run records about its model: name, path, fingerprint and accuracy.

    The fingerprint is the start of the SHA-256 of the served ``.tflite``: two runs with the
    same fingerprint ran the same weights, whatever the folder was called.
    """
    path = resolve_model_path(model)
    info = ModelInfo.load(path / METADATA_NAME)
    digest = hashlib.sha256((path / TFLITE_NAME).read_bytes()).hexdigest()[:16]
    evaluation = info.raw.get("evaluation") or {}
    return {
        "name": path.name,
        "path": str(path.resolve()),
        "fingerprint": digest,
        "accuracy": evaluation.get("accuracy"),
        "split": evaluation.get("split"),
        "data_fingerprint": (info.raw.get("training") or {}).get("data_fingerprint"),
    }


class EmotionModel:
    """Batched emotion probabilities from 48x48 faces through LiteRT.

    Args:
        model: a model directory or its .tflite file; None for the shipped default.
        threads: interpreter threads (1 leaves the other core to the rest of the pipeline).
    """

    def __init__(self, model: str | Path | None = None, threads: int = 1):
        from ai_edge_litert.interpreter import Interpreter  # light: no TensorFlow import

        self.path = resolve_model_path(model)
        self.info = ModelInfo.load(self.path / METADATA_NAME)
        try:
            self._interpreter = Interpreter(model_path=str(self.path / TFLITE_NAME), num_threads=threads)
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"{self.path / TFLITE_NAME}: not a valid TFLite model: {exc}") from exc
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        expected = (self.info.input_size, self.info.input_size, self.info.channels)
        if tuple(self._input["shape"][1:]) != expected:
            raise ModelError(
                f"{self.path}: {TFLITE_NAME} takes input {tuple(self._input['shape'][1:])} but {METADATA_NAME} says {expected}"
            )
        self._batch = 0

    @property
    def classes(self) -> tuple[str, ...]:
        return self.info.classes

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Probabilities (N, classes) for float32 input (N, 48, 48, channels) in 0..255."""
        if x.shape[1:] != tuple(self._input["shape"][1:]):
            raise ModelError(f"model input must be (N, {', '.join(map(str, self._input['shape'][1:]))}), got {x.shape}")
        if len(x) == 0:
            return np.zeros((0, len(self.classes)), np.float32)
        if len(x) != self._batch:
            self._interpreter.resize_tensor_input(self._input["index"], list(x.shape))
            self._interpreter.allocate_tensors()
            self._batch = len(x)
        self._interpreter.set_tensor(self._input["index"], np.ascontiguousarray(x, dtype=np.float32))
        self._interpreter.invoke()
        return self._interpreter.get_tensor(self._output["index"]).copy()
