"""`evaluate --degrade`: camera-like degradations of real FER2013 validation faces."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.errors import DataError
from pipeline.tools.cli import evaluate, main
from tests.train.conftest import PUBLIC_PER_CLASS as PER_CLASS
from train.data import load_image_folder
from train.degrade import DEGRADATIONS, degrade


def detail(images: np.ndarray) -> float:
    """Mean absolute Laplacian: how much fine detail the faces carry."""
    return float(np.mean([np.abs(cv2.Laplacian(i.astype(np.float32), cv2.CV_32F)).mean() for i in images]))


def test_each_degradation_keeps_the_faces_shape_and_degrades_them_its_own_way(few_public):
    faces = load_image_folder(few_public, "PublicTest_").images
    out = {kind: degrade(faces, kind) for kind in DEGRADATIONS}
    for kind, images in out.items():
        assert images.shape == faces.shape and images.dtype == np.uint8, kind
        assert not np.array_equal(images, faces), kind
    assert detail(out["blur"]) < 0.7 * detail(faces) and detail(out["lowres"]) < 0.8 * detail(faces)
    assert out["dark"].max() <= round(0.35 * int(faces.max())) and out["dark"].mean() < 0.4 * faces.mean()
    assert detail(out["noise"]) > 1.5 * detail(faces)
    assert np.array_equal(degrade(faces, "noise"), out["noise"])  # seeded: the same faces every run
    assert not np.array_equal(degrade(faces, "noise", seed=1), out["noise"])
    # JPEG at quality 15 moves the grey levels a little everywhere, not by much on average.
    assert 1.0 < np.abs(out["jpeg"].astype(int) - faces).mean() < 15.0
    with pytest.raises(DataError, match="unknown degradation 'fog'"):
        degrade(faces, "fog")


def test_the_cli_scores_degraded_faces_and_offers_every_degradation(few_public, model_dir):
    choices = next(p for p in evaluate.params if p.name == "degrade").type.choices
    assert sorted(choices) == sorted(DEGRADATIONS)
    runner = CliRunner()
    args = ["evaluate", "--data", str(few_public), "--model", str(model_dir), "--prefix", "PublicTest_", "--json"]
    clean = json.loads(runner.invoke(main, args).output)
    noisy = runner.invoke(main, [*args, "--degrade", "noise"])
    assert noisy.exit_code == 0, noisy.output
    r = json.loads(noisy.output)
    assert r["degradation"] == "noise" and r["n"] == clean["n"] == 7 * PER_CLASS
    assert r["confusion"] != clean["confusion"]  # the faces the model saw were not the clean ones
    refused = runner.invoke(main, [*args, "--degrade", "blur", "--detect"])
    assert refused.exit_code == 2 and "cropped faces" in refused.output


def test_dark_faces_are_scored_as_classify_serves_them_unless_told_not_to(few_public, model_dir):
    runner = CliRunner()
    args = ["evaluate", "--data", str(few_public), "--model", str(model_dir), "--prefix", "PublicTest_", "--json"]
    lifted, as_is = (
        json.loads(runner.invoke(main, [*args, "--degrade", "dark", *flag]).output) for flag in ([], ["--no-lift-dim"])
    )
    assert lifted["lift_dim"] is True and as_is["lift_dim"] is False
    assert lifted["confusion"] != as_is["confusion"]  # nearly every face a third as bright is lifted
    refused = runner.invoke(main, [*args[:-1], "--redetect", "grey", "--no-lift-dim"])
    assert refused.exit_code == 2 and "--no-lift-dim" in refused.output
