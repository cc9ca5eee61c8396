"""Distillation from a served teacher: the targets, the cached teacher probabilities, refusals, a tiny run."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from pipeline.errors import DataError
from pipeline.vision.emotions import EMOTIONS
from pipeline.vision.faces import SEGMENTATION_VERSION, model_input
from pipeline.vision.model import EmotionModel, model_facts
from tests.conftest import PYTHON, ROOT
from train import train
from train.data import FaceSet, first_per_class, load_splits
from train.train import TrainConfig, distill_targets, soften, teacher_probabilities


def _faces(n: int) -> FaceSet:
    """Random 48x48 faces: enough for a teacher to give probabilities, no data needed."""
    rng = np.random.default_rng(0)
    labels = np.arange(n, dtype=np.int32) % len(EMOTIONS)
    return FaceSet(rng.integers(0, 256, (n, 48, 48), dtype=np.uint8), labels, [f"noise/{i}.png" for i in range(n)])


def _entropy(p: np.ndarray) -> np.ndarray:
    return -(p * np.log(p)).sum(axis=-1)


def test_targets_mix_the_one_hot_label_and_the_softened_teacher():
    labels = np.array([0, 3, 6, 2])
    teacher = np.random.default_rng(0).dirichlet(np.ones(7), size=4)
    one_hot = np.eye(7)[labels]

    mixed = distill_targets(labels, teacher, 0.5, 2.0)
    assert mixed.dtype == np.float32 and mixed.shape == (4, 7)
    np.testing.assert_allclose(mixed.sum(axis=1), 1, atol=1e-6)
    np.testing.assert_allclose(mixed, 0.5 * one_hot + 0.5 * soften(teacher, 2.0), atol=1e-6)
    np.testing.assert_array_equal(distill_targets(labels, teacher, 0.0, 2.0), one_hot)
    np.testing.assert_allclose(distill_targets(labels, teacher, 1.0, 1.0), teacher, atol=1e-6)

    # Higher T is flatter (and keeps the teacher's ranking); a tiny T is near one-hot, not NaN.
    entropies = [_entropy(soften(teacher, t)) for t in (0.5, 1.0, 2.0, 8.0)]
    assert all((a < b).all() for a, b in zip(entropies, entropies[1:]))
    np.testing.assert_array_equal(soften(teacher, 8.0).argmax(axis=1), teacher.argmax(axis=1))
    np.testing.assert_allclose(soften(teacher, 1e-3), np.eye(7)[teacher.argmax(axis=1)], atol=1e-6)


@pytest.mark.parametrize("field, value", [("distill_weight", 1.5), ("distill_weight", -0.1), ("distill_temperature", 0.0)])
def test_config_refuses_distillation_values_out_of_range(field, value):
    with pytest.raises(ValueError, match=f"^{field}: "):
        TrainConfig(data="d", out="o", **{field: value})


def test_teacher_probabilities_are_computed_once_then_read_from_the_cache(model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(train, "CACHE_DIR", tmp_path)
    faces = _faces(10)
    probs = teacher_probabilities(model_dir, faces, model_input(faces.images))
    assert probs.shape == (10, 7)
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-5)
    # Named by what determines the probabilities: the teacher's weights and the faces.
    (cache,) = tmp_path.glob("teacher-*.npy")
    assert cache.name == f"teacher-{model_facts(model_dir)['fingerprint']}-{faces.fingerprint()}.npy"

    def teacher_ran_again(self, x):
        raise AssertionError("the teacher ran again instead of reading its cache")

    monkeypatch.setattr(EmotionModel, "predict", teacher_ran_again)
    np.testing.assert_array_equal(teacher_probabilities(model_dir, faces, model_input(faces.images)), probs)


def test_a_gray_teacher_reads_the_gray_channel_of_a_segmentation_run(model_dir, tmp_path, monkeypatch):
    faces = _faces(6)
    monkeypatch.setattr(train, "CACHE_DIR", tmp_path / "gray-run")
    gray = teacher_probabilities(model_dir, faces, model_input(faces.images))
    monkeypatch.setattr(train, "CACHE_DIR", tmp_path / "segmentation-run")
    seg = np.full_like(faces.images, 255)
    np.testing.assert_array_equal(teacher_probabilities(model_dir, faces, model_input(faces.images, seg), 4), gray)


SEGMENTED = {"enabled": True, "mode": "on", "k": 4, "function": "pipeline.vision.faces.segment_face"}


@pytest.mark.parametrize(
    "change, run_k, says",
    [
        ({"classes": [*EMOTIONS[:-1], "contempt"]}, None, "classes"),
        ({"channels": 2, "segmentation": {**SEGMENTED, "version": SEGMENTATION_VERSION}}, None, "segmentation channel"),
        ({"channels": 2, "segmentation": {**SEGMENTED, "version": SEGMENTATION_VERSION}}, 3, "segmentation channel"),
        ({"channels": 2, "segmentation": {**SEGMENTED, "version": SEGMENTATION_VERSION - 1}}, 4, "segmentation channel"),
    ],
)
def test_a_teacher_that_does_not_fit_the_run_is_refused_by_name(model_dir, tmp_path, monkeypatch, change, run_k, says):
    monkeypatch.setattr(train, "CACHE_DIR", tmp_path / "cache")
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    shutil.copy(model_dir / "emotion.tflite", teacher)
    meta = json.loads((model_dir / "model.json").read_text())
    (teacher / "model.json").write_text(json.dumps({**meta, **change}))
    faces = _faces(3)
    with pytest.raises(DataError, match=f"{re.escape(str(teacher))}: .*{says}"):
        teacher_probabilities(teacher, faces, model_input(faces.images), run_k)
    assert not (tmp_path / "cache").exists()


@pytest.mark.training
def test_a_student_trains_on_the_teachers_targets_and_records_it(fer_dir, model_dir, tmp_path, monkeypatch):
    out, cache = tmp_path / "student", tmp_path / "cache"
    result = subprocess.run(
        [PYTHON, "run_pipeline.py", "train", "--data", str(fer_dir), "--out", str(out), "--limit", "10", "--epochs", "1",
         "--teacher", "models/default", "--distill-weight", "0.7", "--distill-temperature", "3"],
        cwd=ROOT, env={**os.environ, "EMOTION_CACHE": str(cache)}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    training = json.loads((out / "model.json").read_text())["training"]
    config = training["config"]
    assert (config["teacher"], config["distill_weight"], config["distill_temperature"]) == ("models/default", 0.7, 3.0)
    teacher_meta = json.loads((model_dir / "model.json").read_text())
    fingerprint = model_facts(model_dir)["fingerprint"]
    assert training["teacher"] == {
        "path": "models/default", "fingerprint": fingerprint, "validation_accuracy": teacher_meta["validation"]["accuracy"]
    }  # fmt: skip
    assert training["train_images"] == 70

    # The run's cache is what a second call (a --resume) reads: the teacher does not run again.
    (cached,) = cache.glob("teacher-*.npy")
    assert cached.name == f"teacher-{fingerprint}-{training['data_fingerprint']}.npy"
    monkeypatch.setattr(train, "CACHE_DIR", cache)
    monkeypatch.setattr(EmotionModel, "predict", lambda self, x: pytest.fail("the teacher ran again"))
    faces = first_per_class(load_splits(fer_dir)[0], 10)
    probs = teacher_probabilities(model_dir, faces, model_input(faces.images))
    np.testing.assert_array_equal(probs, np.load(cached))
