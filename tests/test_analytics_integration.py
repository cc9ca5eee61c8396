"""End to end: the real clip run twice into one --out (paced, then as fast as possible), then reported."""

from __future__ import annotations

import csv
import sqlite3

import pytest

from tests.pipeline.analytics.test_report import check_in_browser, headings, pdf_text
from tests.test_integration import CLIP_FRAMES, run_cli

pytestmark = pytest.mark.slow

CLIP_SECONDS = CLIP_FRAMES / 30  # 15.47 s


def durations(folder) -> dict[str, float]:
    with open(folder / "runs.csv") as f:
        return {r["run"]: float(r["duration_s"]) for r in csv.DictReader(f)}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, video, model_dir):
    """One output folder, two runs of woman2.mp4: paced at its 30 fps, then with capture.pacing=max."""
    out = tmp_path_factory.mktemp("two-runs")
    for extra in ([], ["--set", "capture.pacing=max"]):
        result = run_cli("run", "configs/local.yaml", "--source", str(video), "--out", str(out), *extra)
        assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_two_runs_are_logged_apart_with_what_they_ran(two_runs, video):
    with sqlite3.connect(two_runs / "emotions.sqlite") as db:
        runs = db.execute("SELECT run, started, ended, source, sources, config, model, model_fingerprint, "
                          "model_accuracy, host, version FROM runs ORDER BY started").fetchall()  # fmt: skip
        per_run = dict(db.execute("SELECT run, COUNT(*) FROM frames GROUP BY run").fetchall())
        untagged = db.execute("SELECT COUNT(*) FROM detections WHERE run NOT IN (SELECT run FROM runs)").fetchone()[0]
        media = [
            [r[0] for r in db.execute("SELECT media_ts FROM frames WHERE run = ? ORDER BY frame", (run[0],))] for run in runs
        ]
    assert len(runs) == 2 and per_run == {runs[0][0]: CLIP_FRAMES, runs[1][0]: CLIP_FRAMES} and untagged == 0
    for _, started, ended, source, sources, config, model, fingerprint, accuracy, host, version in runs:
        assert ended > started and source == str(video.resolve()) and '"kind": "file"' in sources
        assert model == "default" and len(fingerprint) == 16 and 0.6 < accuracy < 1 and host and version
        assert "name: capture" in config and "scan_pixels: 60000" in config  # the resolved params
    assert "pacing: realtime" in runs[0][5] and "pacing: max" in runs[1][5]
    assert media[0] == pytest.approx(media[1], abs=1e-6)  # paced or not, the same media timestamps
    assert media[0][-1] == pytest.approx((CLIP_FRAMES - 1) / 30, abs=0.03)  # the container says 15.449 s


def test_report_of_the_latest_run_lasts_the_clip_and_opens_in_chromium(two_runs, tmp_path, browser):
    result = run_cli("report", "--db", str(two_runs / "emotions.sqlite"), "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    (duration,) = durations(tmp_path).values()
    assert duration == pytest.approx(15.5, abs=0.1) and duration == pytest.approx(CLIP_SECONDS, abs=0.05)
    page = (tmp_path / "index.html").read_text()
    assert "Comparison" not in page and "<video" in page and "r1-person-" in page
    check_in_browser(browser, tmp_path / "index.html", min_images=5)
    text = " ".join(pdf_text(tmp_path / "report.pdf").split())
    assert [h for h in headings(page) if h not in text] == []


def test_report_of_all_runs_compares_them(two_runs, tmp_path):
    result = run_cli("report", "--db", str(two_runs / "emotions.sqlite"), "--out", str(tmp_path), "--runs", "all")
    assert result.returncode == 0, result.stderr[-3000:]
    found = durations(tmp_path)
    assert len(found) == 2 and all(d == pytest.approx(15.5, abs=0.1) for d in found.values())
    page = (tmp_path / "index.html").read_text()
    assert "<h2>Comparison</h2>" in page and all(f"<h2>Run {run}</h2>" in page for run in found)
    text = " ".join(pdf_text(tmp_path / "report.pdf").split())
    assert [h for h in headings(page) if h not in text] == []
