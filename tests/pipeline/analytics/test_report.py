import csv
import sqlite3

import numpy as np
import pytest

from pipeline.analytics.report import write_report
from pipeline.errors import PipelineError
from pipeline.streaming.message import Message
from pipeline.streaming.stage import StageContext
from pipeline.vision.emotions import EMOTIONS
from pipeline.vision.record import FACES, Face
from stages.log import Log, LogParams


def write_log(out, frames: int = 60) -> Log:
    """Two streams; stream a has two tracks, happy then sad; stream b one neutral track."""
    stage = Log(LogParams(batch_rows=10), name="log", context=StageContext(out=str(out), run={"classes": list(EMOTIONS)}))
    stage.on_start()
    for seq in range(frames):
        for stream, faces in (("a", [(1, "happy" if seq < 40 else "sad"), (2, "angry")]), ("b", [(7, "neutral")])):
            msg = Message(stream=stream, seq=seq, ts=100.0 + seq / 10, image=np.zeros((2, 2, 3), np.uint8))
            for track, emotion in faces:
                probs = [0.9 if e == emotion else 0.1 / 6 for e in EMOTIONS]
                face = Face(box=[0, 0, 9, 9], track=track, emotion=emotion, confidence=0.9, probs=probs)
                msg.fields.setdefault(FACES, []).append(face)
            stage.process(msg)
    return stage


def test_report_has_plots_csv_and_figures(tmp_path):
    write_log(tmp_path).on_stop()
    index = write_report(tmp_path / "emotions.sqlite", tmp_path / "report")
    page = index.read_text()
    for name in ("share_over_time.png", "tracks.png", "distribution.png"):
        assert f'src="{name}"' in page and (tmp_path / "report" / name).stat().st_size > 5000
    with open(tmp_path / "report" / "tracks.csv") as f:
        tracks = {(r["stream"], r["track"]): r for r in csv.DictReader(f)}
    assert set(tracks) == {("a", "1"), ("a", "2"), ("b", "7")}
    assert tracks[("a", "1")]["dominant"] == "happy"
    assert float(tracks[("a", "1")]["share_sad"]) == pytest.approx(20 / 60, abs=1e-4)
    with open(tmp_path / "report" / "detections.csv") as f:
        assert sum(1 for _ in f) == 1 + 3 * 60
    # 40 happy of 180 positive; 20 sad + 60 angry negative; 60 neutral.
    assert "positive</th><td>22.2%" in page and "negative</th><td>44.4%" in page


def test_report_reads_while_the_pipeline_is_writing(tmp_path):
    stage = write_log(tmp_path)  # committed batches, and an open writer connection
    writer = sqlite3.connect(tmp_path / "emotions.sqlite")
    writer.execute("BEGIN IMMEDIATE")  # a write transaction in progress (WAL mode lets readers in)
    try:
        assert write_report(tmp_path / "emotions.sqlite", tmp_path / "report").exists()
    finally:
        writer.rollback()
        writer.close()
        stage.on_stop()


def test_missing_database_is_a_clear_error(tmp_path):
    with pytest.raises(PipelineError, match="no such database"):
        write_report(tmp_path / "nope.sqlite", tmp_path / "report")


def test_report_opens_in_chromium_without_console_errors(tmp_path, browser):
    write_log(tmp_path).on_stop()
    index = write_report(tmp_path / "emotions.sqlite", tmp_path / "report")
    page = browser.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(index.as_uri())
    page.wait_for_load_state("load")
    widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.naturalWidth)")
    assert len(widths) == 3 and all(w > 0 for w in widths)  # every plot loaded
    assert errors == []
