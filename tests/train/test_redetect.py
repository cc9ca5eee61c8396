"""`evaluate --redetect` on a handful of real FER2013 validation faces with the shipped model."""

from __future__ import annotations

import json

from click.testing import CliRunner

from pipeline.tools.cli import main
from stages.detect import DetectParams
from tests.train.conftest import PUBLIC_PER_CLASS as PER_CLASS
from train.redetect import redetect_folder


def test_redetected_faces_are_scored_in_three_framings_with_the_box_geometry(few_public, model_dir):
    r = redetect_folder(few_public, model_dir, "PublicTest_", "grey")
    assert r["n"] == 7 * PER_CLASS
    assert 0.3 <= r["share"] <= 1.0 and r["redetected"] == round(r["share"] * r["n"])
    assert set(r["accuracy"]) == {"fer_all", "fer", "resampled", "box", "framed"}
    assert all(0.0 <= a <= 1.0 for a in r["accuracy"].values())
    # Haar boxes lie close to FER's framing: same size within a third, centres within a fifth of a box.
    median = r["geometry"]["median"]
    assert 0.75 <= median["scale"] <= 1.33 and abs(median["dx"]) < 0.2 and abs(median["dy"]) < 0.2
    assert r["detect"] == DetectParams().model_dump()  # the detect stage's defaults


def test_the_cli_prints_the_same_as_json_and_refuses_detect_with_it(few_public, model_dir):
    runner = CliRunner()
    args = ["evaluate", "--data", str(few_public), "--model", str(model_dir), "--prefix", "PublicTest_"]
    result = runner.invoke(main, [*args, "--redetect", "reflect", "--crop", "1.1,0,0.05", "--json"])
    assert result.exit_code == 0, result.output
    r = json.loads(result.output)
    assert r["pad"] == "reflect" and r["n"] == 7 * PER_CLASS
    assert r["framing"] == {"scale": 1.1, "dx": 0.0, "dy": 0.05} and r["model_crop"] == {"scale": 1.0, "dx": 0.0, "dy": 0.0}
    text = runner.invoke(main, [*args, "--redetect", "reflect"])
    assert f"re-detected {r['redetected']}/{r['n']}" in text.output
    assert runner.invoke(main, [*args, "--redetect", "grey", "--crop", "1.1,0"]).exit_code == 2
    refused = runner.invoke(main, [*args, "--redetect", "grey", "--detect"])
    assert refused.exit_code == 2 and "exclude each other" in refused.output
