"""``compare``: the shipped ensemble's two real networks, each served on its own, scored with every
combination on a few real FER2013 faces, clean and degraded; checked against ``evaluate``."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import PYTHON, ROOT
from tests.train.test_train import evaluate_cli, small_fer  # noqa: F401 (a fixture)

pytestmark = pytest.mark.training
MEMBERS = ROOT / "models" / "default" / "members"


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


def test_compare_refuses_a_baseline_it_was_not_given(served_members, small_fer):  # noqa: F811
    result = cli("compare", str(served_members[0]), "--data", str(small_fer / "test"), "--baseline", "A+C")
    assert result.returncode == 2
    assert "--baseline A+C: C not among the models given" in result.stderr
