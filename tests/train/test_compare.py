"""``compare``: the shipped ensemble's two real networks, each served on its own, scored with every
combination on a few real FER2013 faces, clean and degraded; checked against ``evaluate``."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import DataError
from tests.conftest import PYTHON, ROOT
from tests.train.test_train import evaluate_cli, small_fer  # noqa: F401 (a fixture)
from train.compare import MIX, Scored, _predicted, _recall, compare, paired_gain, parse_baseline
from train.data import FaceSet, first_per_class

MEMBERS = ROOT / "models" / "default" / "members"


def test_a_combination_averages_its_members_probabilities():
    # Two faces, two classes: A is sure and wrong on face 0, B unsure and right; the average follows A.
    a = np.array([[0.9, 0.1], [0.2, 0.8]])
    b = np.array([[0.4, 0.6], [0.3, 0.7]])
    scored = {"A": Scored(1, {c: a for c in MIX}), "B": Scored(1, {c: b for c in MIX})}
    assert _predicted(("A", "B"), scored).tolist() == [[0, 1]] * len(MIX)
    assert _predicted(("B",), scored).tolist() == [[1, 1]] * len(MIX)


def test_the_gain_interval_is_paired():
    # One model right on the 50 faces the other is right on, and on 10 more of 100: +10 points.
    # Resampled in pairs the interval is 5..16; resampling each model's faces on its own draw
    # would give about -4..+24, taking in 0.
    theirs = np.r_[np.ones(50), np.zeros(50)]
    ours = np.r_[np.ones(60), np.zeros(40)]
    gain = paired_gain(ours, theirs, resamples=200)
    assert gain["points"] == 10.0 and 0 < gain["low"] < 10 < gain["high"] and gain["high"] - gain["low"] < 15
    assert paired_gain(theirs, theirs, resamples=50) == {"points": 0.0, "low": 0.0, "high": 0.0}


def test_recall_of_a_class_with_no_face_is_none_not_nan():
    labels, predicted = np.array([0, 0, 1]), np.array([0, 1, 1])
    assert _recall(labels, predicted, 0) == 0.5 and _recall(labels, predicted, 2) is None


def test_limit_keeps_the_first_faces_of_each_class():
    labels = np.array([2, 0, 2, 2, 0, 1])
    faces = FaceSet(np.arange(6)[:, None, None].astype(np.uint8), labels, [f"f{i}" for i in range(6)])
    kept = first_per_class(faces, 2)
    assert kept.paths == ["f0", "f1", "f2", "f4", "f5"] and kept.labels.tolist() == [2, 0, 2, 0, 1]


@pytest.mark.parametrize(
    ("baseline", "message"),
    [("A+C", "'C' not among the models given (A, B)"), ("A+", "'' not among"), ("A+A", "a model named twice")],
)
def test_a_bad_baseline_is_refused_naming_what_is_wrong(baseline, message):
    with pytest.raises(DataError, match=re.escape(message)):
        parse_baseline(baseline, ["A", "B"])
    assert parse_baseline("B+A", ["A", "B"]) == ("A", "B")


def test_two_models_with_one_name_are_refused_before_anything_is_read():
    with pytest.raises(DataError, match="two directories have the same name"):
        compare([Path("runs/x/model"), Path("other/model")], "no-such-folder")


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "run_pipeline.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def served_members(small_fer, tmp_path_factory):  # noqa: F811
    """Each member of the shipped model served alone (``ensemble`` of one: int8, mirror), as A and B."""
    members = sorted(p for p in MEMBERS.iterdir() if (p / "emotion.keras").exists()) if MEMBERS.is_dir() else []
    if len(members) < 2:
        pytest.skip(f"needs two trained networks in {MEMBERS}")
    out = tmp_path_factory.mktemp("served")
    served = []
    for name, member in zip("AB", members[:2]):
        result = cli("ensemble", str(member), "--data", str(small_fer), "--out", str(out / name))
        assert result.returncode == 0, result.stderr[-3000:]
        served.append(out / name)
    return served


@pytest.mark.training
def test_compare_scores_each_model_and_their_average_as_evaluate_does(served_members, small_fer):  # noqa: F811
    a, b = served_members
    test = small_fer / "test"
    result = cli("compare", str(a), str(b), "--data", str(test), "--baseline", "A+B", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["n"] == 42 and report["conditions"] == ["clean", "blur", "lowres", "jpeg", "dark"]
    rows = {"+".join(row["members"]): row for row in report["rows"]}
    assert set(rows) == {"A", "B", "A+B"}
    assert [row["mix"] for row in report["rows"]] == sorted((row["mix"] for row in report["rows"]), reverse=True)
    # Each network alone: the same figures as `evaluate`, clean and degraded.
    for name, path in (("A", a), ("B", b)):
        assert rows[name]["accuracy"]["clean"] == round(100 * evaluate_cli(path, test, "--prefix", "PublicTest_")["accuracy"], 2)
        dark = evaluate_cli(path, test, "--prefix", "PublicTest_", "--degrade", "dark")["accuracy"]
        assert rows[name]["accuracy"]["dark"] == round(100 * dark, 2)
        assert rows[name]["mix"] == pytest.approx(sum(rows[name]["accuracy"].values()) / 5, abs=0.01)
        assert rows[name]["parameters"] > 100_000 and rows[name]["ms_a_face"] > 0
    assert rows["A+B"]["ms_a_face"] == pytest.approx(rows["A"]["ms_a_face"] + rows["B"]["ms_a_face"], abs=0.02)
    # The baseline against itself gains nothing; the paired interval holds the gain.
    assert rows["A+B"]["gain"] == {"points": 0.0, "low": 0.0, "high": 0.0}
    for row in rows.values():
        assert row["gain"]["low"] <= row["gain"]["points"] <= row["gain"]["high"]

    table = cli("compare", str(a), str(b), "--data", str(test), "--max-members", "1")
    assert table.returncode == 0, table.stderr[-3000:]
    assert "A+B" not in table.stdout and "42 faces" in table.stdout


@pytest.mark.training
def test_compare_refuses_a_baseline_it_was_not_given(served_members, small_fer):  # noqa: F811
    result = cli("compare", str(served_members[0]), "--data", str(small_fer / "test"), "--baseline", "A+C")
    assert result.returncode == 2
    assert "--baseline A+C: 'C' not among the models given (A)" in result.stderr
