"""Evaluate a served model on an image folder (``ROOT/<emotion>/*``), cropped faces or photos."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pipeline.errors import DataError
from pipeline.vision.faces import crop_face, lift_dim, model_input
from pipeline.vision.model import EmotionModel
from stages.detect import Detect, DetectParams
from train import report
from train.data import list_image_folder, load_image_folder
from train.degrade import degrade
from train.train import evaluate_faces

log = logging.getLogger(__name__)


def evaluate_folder(
    data: str | Path,
    model: str | Path | None = None,
    detect: bool = False,
    prefix: str | None = None,
    degradation: str | None = None,
    lift: bool = True,
) -> dict[str, Any]:
    """Score ``model`` on every image of ``data`` (only files named ``prefix*`` if given).

    Without ``detect`` each image is taken as an already-cropped face (FER2013 style), degraded
    first if ``degradation`` names one of ``train.degrade.DEGRADATIONS``. With ``detect`` the
    Haar detector finds the largest face first; an image with no face found counts as a miss
    and is listed under ``no_face``. ``lift``: dim faces are lifted, as the classify stage does
    by default (``pipeline.vision.faces.lift_dim``).
    """
    emotion_model = EmotionModel(model)
    if not detect:
        faces = load_image_folder(data, prefix)
        if degradation:
            faces = replace(faces, images=degrade(faces.images, degradation))
        result = evaluate_faces(emotion_model, faces, lift=lift)
        result.update(skipped=faces.skipped, no_face=[], degradation=degradation, lift_dim=lift)
        return result
    if degradation:
        raise DataError("degradations apply to cropped faces; they cannot be combined with detection")
    detector = Detect(DetectParams(), name="detect")  # the stage's own still-image path (full scan)
    detector.on_start()
    labels, preds, no_face, skipped = [], [], [], []
    for path, label in list_image_folder(data, prefix):
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if image is None:
            log.warning("skipping unreadable image %s", path)
            skipped.append(str(path))
            continue
        boxes = detector.detect(image, still=True)
        labels.append(label)
        if not boxes:
            no_face.append(str(path))
            preds.append(-1)
            continue
        face = crop_face(image, boxes[0], emotion_model.info.crop)[None]  # as the classify stage crops
        seg = None
        if emotion_model.info.segmentation:
            from train.data import segmentation_channels

            seg = segmentation_channels(face, emotion_model.info.segmentation_k)
        preds.append(int(emotion_model.predict(model_input(lift_dim(face) if lift else face, seg))[0].argmax()))
    if not labels:
        raise DataError(f"{data}: none of the images could be read")
    result = report.metrics(np.asarray(labels), np.asarray(preds), emotion_model.classes)
    result.update(skipped=skipped, no_face=no_face, lift_dim=lift)
    return result
