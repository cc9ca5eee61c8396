"""The shipped model as served: LiteRT, int8 weights, on real FER2013 faces."""

from __future__ import annotations

import json

import cv2
import numpy as np

from pipeline.vision.model import METADATA_NAME, EmotionModel


def test_the_shipped_model_is_quantized_and_classifies_real_faces(model_dir, fer_dir):
    meta = json.loads((model_dir / METADATA_NAME).read_text())
    assert meta["quantization"].startswith("dynamic-range")
    model = EmotionModel(model_dir)
    paths = [p for c in model.classes for p in sorted((fer_dir / "test" / c).glob("PublicTest_*"))[:60]]
    faces = np.stack([cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in paths]).astype(np.float32)[..., None]
    labels = np.array([model.classes.index(p.parent.name) for p in paths])
    probs = model.predict(faces)
    assert probs.shape == (len(paths), 7) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-3)
    # On all of PublicTest the model scores 68 %; here up to 60 faces a class (disgust has 55); chance is 1/7.
    accuracy = float(np.mean(probs.argmax(axis=1) == labels))
    assert accuracy > 0.55, accuracy
    one_by_one = np.concatenate([model.predict(faces[i : i + 1]) for i in range(5)])
    assert np.allclose(one_by_one, probs[:5], atol=1e-4)  # batching does not change a face's answer
