import json

import pytest
from click.testing import CliRunner

from pipeline.tools.cli import main
from pipeline.tools.clips import make_clip
from pipeline.tools.yardstick import evaluate_clip, score_frames
from pipeline.vision.detection_eval import ImageTruth
from tests.conftest import ROOT

LOCAL = str(ROOT / "configs" / "local.yaml")


def test_score_frames_counts_per_frame_hits_false_positives_and_dont_care():
    truth = {0: ImageTruth([[10, 10, 40, 40]]), 1: ImageTruth([[10, 10, 40, 40]], [[200, 10, 15, 15]]), 2: ImageTruth()}
    detections = {0: [[12, 12, 40, 40]], 1: [[201, 10, 18, 18]], 2: [[50, 50, 30, 30]]}
    result = score_frames(detections, truth, 3)
    assert (result["hits"], result["false_positives"], result["n_faces"]) == (1, 1, 2)
    assert result["recall"] == 0.5 and result["precision"] == 0.5
    assert result["per_size"]["40-60"] == {"n": 2, "recall": 0.5}


def test_evaluate_detect_runs_the_configs_detect_stage_on_a_few_photos(wider_dir):
    args = ["evaluate-detect", "--data", str(wider_dir), "--config", LOCAL, "--limit", "3", "--json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output)
    assert figures["n_images"] == 3 and figures["n_faces"] == 3
    assert {"recall", "precision", "per_size", "ms_per_image"} <= set(figures)
    assert figures["settings"]["stage"] == "detect" and figures["settings"]["verify"] == "alt2"


def test_evaluate_detect_applies_overrides(wider_dir):
    args = ["evaluate-detect", "--data", str(wider_dir), "--config", LOCAL, "--limit", "3", "--json"]
    result = CliRunner().invoke(main, [*args, "--set", "detect.min_size=80", "--set", "detect.verify=none"])
    figures = json.loads(result.output)
    assert figures["settings"]["min_size"] == 80 and figures["settings"]["verify"] == "none"
    assert figures["per_size"]["20-30"]["hits"] == 0  # faces under min_size are not looked for


def test_evaluate_detect_names_a_bad_override(wider_dir):
    args = ["evaluate-detect", "--data", str(wider_dir), "--config", LOCAL, "--set", "detect.verify=maybe"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "verify" in result.output


@pytest.mark.slow
def test_evaluate_clip_scores_a_generated_clip_through_the_pipeline(wider_dir, model_dir, tmp_path):
    video, boxes = make_clip(wider_dir, tmp_path / "c", (320, 180), photos=2, seconds=1.0, fps=15, seed=1)
    result = evaluate_clip(LOCAL, video, boxes, ["capture.fps=60"])
    assert result["frames"] == 30 and result["scored_frames"] == 30
    assert result["dropped"] == 0 and result["latency_ms"]["p99"] is not None
    assert 0 <= result["recall"] <= 1 and 0 <= result["precision"] <= 1
