"""Faces as the pipeline sees them: FER2013 faces re-detected by Haar and cropped by ``crop_face``.

The CNN learns FER2013's framing (48x48 crops made by its authors), but serving feeds it crops
cut from Haar boxes. To measure that train/serve gap, each FER face is upscaled (4x, 192x192)
into a larger canvas (padding of half a face on every side, neutral grey or a reflection of the
face) so Haar sees a whole head; the detect stage's own function and default settings find it,
``crop_face`` cuts it, and the model classifies it. The same faces are also classified in FER's
own framing (the 48x48 image), and each Haar box is compared with where FER's crop lies in the
canvas.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pipeline.vision.faces import HAAR_BOX, Framing, crop_face, lift_dim, model_input
from pipeline.vision.model import EmotionModel
from stages.detect import Detect, DetectParams
from train import report
from train.data import load_image_folder

log = logging.getLogger(__name__)

UPSCALE = 4  # 48 -> 192 pixels: a face the size of a webcam face at arm's length
MARGIN = 0.5  # canvas padding on each side, in face widths: room for the hair, ears and chin Haar expects
PADS = ("grey", "reflect")
GREY = 128


def fer_canvas(face: np.ndarray, pad: str = "grey", upscale: int = UPSCALE) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Upscale a 48x48 FER face into a padded canvas; return the canvas and FER's crop ``(x, y, w, h)`` in it."""
    if pad not in PADS:
        raise ValueError(f"pad must be one of {', '.join(PADS)}, got {pad!r}")
    side = face.shape[0] * upscale
    big = cv2.resize(face, (side, side), interpolation=cv2.INTER_CUBIC)
    p = round(MARGIN * side)
    if pad == "grey":
        canvas = cv2.copyMakeBorder(big, p, p, p, p, cv2.BORDER_CONSTANT, value=GREY)
    else:
        canvas = cv2.copyMakeBorder(big, p, p, p, p, cv2.BORDER_REFLECT_101)
    return canvas, (p, p, side, side)


def framing_of(box: tuple[int, int, int, int] | list[int], reference: tuple[int, int, int, int]) -> Framing:
    """The ``Framing`` that maps a detector ``box`` onto ``reference`` (both ``(x, y, w, h)``).

    ``scale`` > 1: the reference crop is larger than the box; ``dy`` > 0: its centre lies lower.
    """
    x, y, w, h = (float(v) for v in box)
    rx, ry, rw, rh = (float(v) for v in reference)
    return Framing(rw / w, (rx + rw / 2 - x - w / 2) / w, (ry + rh / 2 - y - h / 2) / h)


def _predict(model: EmotionModel, faces: np.ndarray, batch: int = 256) -> np.ndarray:
    if len(faces) == 0:
        return np.zeros(0, np.int64)
    seg = None
    if model.info.segmentation:
        from train.data import segmentation_channels

        seg = segmentation_channels(faces, model.info.segmentation_k)
    x = model_input(lift_dim(faces), seg)  # as the classify stage serves them
    return np.concatenate([model.predict(x[i : i + batch]).argmax(axis=1) for i in range(0, len(x), batch)])


def redetect_folder(
    data: str | Path,
    model: str | Path | None = None,
    prefix: str | None = None,
    pad: str = "grey",
    framing: Framing | None = None,
    detect: DetectParams | None = None,
) -> dict[str, Any]:
    """Re-detect every FER face of ``data`` (``ROOT/<emotion>/*``, files ``prefix*``) and score the crops.

    A face counts as re-detected when a Haar box's centre lies inside FER's crop (the largest
    such box is taken, as the pipeline takes the largest); boxes elsewhere (in a reflection)
    are counted apart. Accuracy is given, on the re-detected faces, for FER's own framing
    (``fer``: the 48x48 image; ``resampled``: FER's square cut from the canvas by ``crop_face``,
    which isolates the cost of upscaling and downscaling), for the Haar box as is (``box``),
    and for the box mapped by ``framing`` (``framed``; default: the crop the model's
    ``model.json`` asks for, as the classify stage cuts it). ``detect``
    defaults to the detect stage's defaults (``DetectParams()``).

    Returns:
        n, redetected, share, other_boxes, accuracy {fer_all, fer, resampled, box, framed},
        macro_f1 of the same, geometry (mean, median and spread of the Framing that maps the
        Haar box onto FER's crop), and the detect settings used.
    """
    emotion_model = EmotionModel(model)
    framing = framing or emotion_model.info.crop
    faces = load_image_folder(data, prefix)
    detector = Detect(detect or DetectParams(), name="detect")  # the stage's own still-image path
    detector.on_start()
    found, fer_crops, box_crops, framed_crops, geometry, other_boxes = [], [], [], [], [], 0
    for i, face in enumerate(faces.images):
        canvas, fer_box = fer_canvas(face, pad)
        fx, fy, fw, fh = fer_box
        boxes = detector.detect(canvas, still=True)
        inside = [b for b in boxes if fx <= b[0] + b[2] / 2 < fx + fw and fy <= b[1] + b[3] / 2 < fy + fh]
        other_boxes += len(boxes) - len(inside)
        if not inside:
            continue
        box = inside[0]
        found.append(i)
        fer_crops.append(crop_face(canvas, fer_box))
        box_crops.append(crop_face(canvas, box, HAAR_BOX))
        framed_crops.append(crop_face(canvas, box, framing))
        geometry.append(framing_of(box, fer_box))
    found_idx = np.asarray(found, dtype=np.int64)
    labels = faces.labels[found_idx]
    classes = emotion_model.classes
    preds = {
        "fer": _predict(emotion_model, faces.images[found_idx]),
        "resampled": _predict(emotion_model, np.asarray(fer_crops, np.uint8).reshape(-1, 48, 48)),
        "box": _predict(emotion_model, np.asarray(box_crops, np.uint8).reshape(-1, 48, 48)),
        "framed": _predict(emotion_model, np.asarray(framed_crops, np.uint8).reshape(-1, 48, 48)),
    }
    all_pred = _predict(emotion_model, faces.images)
    scores = {"fer_all": report.metrics(faces.labels, all_pred, classes)}
    scores.update({k: report.metrics(labels, p, classes) for k, p in preds.items()} if len(found) else {})
    geo = np.array([[g.scale, g.dx, g.dy] for g in geometry]).reshape(-1, 3)
    return {
        "data": str(data),
        "prefix": prefix,
        "pad": pad,
        "upscale": UPSCALE,
        "n": len(faces),
        "redetected": len(found),
        "share": round(len(found) / len(faces), 4),
        "other_boxes": other_boxes,
        "accuracy": {k: m["accuracy"] for k, m in scores.items()},
        "macro_f1": {k: m["macro_f1"] for k, m in scores.items()},
        "framing": framing.as_dict(),
        "model_crop": emotion_model.info.crop.as_dict(),
        "geometry": {
            stat: dict(zip(("scale", "dx", "dy"), (round(float(v), 4) for v in fn(geo, axis=0))))
            for stat, fn in (
                ("mean", np.mean),
                ("median", np.median),
                ("std", np.std),
                ("p25", lambda a, axis: np.percentile(a, 25, axis=axis)),
                ("p75", lambda a, axis: np.percentile(a, 75, axis=axis)),
            )
        }
        if len(geo)
        else None,
        "detect": detector.params.model_dump(),
        "skipped": faces.skipped,
    }


def format_redetect(r: dict[str, Any]) -> str:
    """A few lines for a person: re-detection share, the three accuracies, the box geometry."""
    acc = r["accuracy"]
    lines = [
        f"{r['data']} ({r['prefix'] or 'all'}*), {r['upscale']}x upscaled, padded with {r['pad']}:",
        f"  re-detected {r['redetected']}/{r['n']} faces ({r['share']:.1%}); {r['other_boxes']} boxes outside FER's crop",
        f"  accuracy, all {r['n']} faces in FER's framing: {acc['fer_all']:.4f}",
    ]
    if r["redetected"]:
        f = r["framing"]
        lines += [
            f"  accuracy on the {r['redetected']} re-detected faces: FER's framing {acc['fer']:.4f} "
            f"(cut from the canvas {acc['resampled']:.4f}), Haar box as is {acc['box']:.4f}, "
            f"framed (scale {f['scale']}, dx {f['dx']}, dy {f['dy']}) {acc['framed']:.4f}",
            f"  the model's model.json asks for the crop {r['model_crop']}",
        ]
        for stat in ("mean", "median", "std", "p25", "p75"):
            g = r["geometry"][stat]
            lines.append(f"  FER's crop / the Haar box ({stat}): scale {g['scale']:.3f}, dx {g['dx']:+.3f}, dy {g['dy']:+.3f}")
    return "\n".join(lines) + "\n"
