import csv
import re
import sqlite3
import time

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from pipeline.analytics import plots
from pipeline.analytics.data import read_log
from pipeline.analytics.report import SECTIONS, write_report
from pipeline.analytics.summary import summarise
from pipeline.errors import PipelineError
from pipeline.streaming.message import Message
from pipeline.streaming.stage import StageContext
from pipeline.vision.emotions import COLOURS, EMOTIONS
from pipeline.vision.record import FACES, Face
from pipeline.vision.video import H264Writer
from stages.log import Log, LogParams

FPS = 10.0


def write_log(out, frames: int = 60, run: str = "r1", started: float | None = None, streams=("a", "b")) -> Log:
    """Stream a has two tracks, happy then sad, and angry; stream b one neutral track; 10 frames/s of a file."""
    launch = {"id": run, "started": started or time.time() - 30, "config": "name: test\n", "version": "test"}
    context = StageContext(out=str(out), run={"classes": list(EMOTIONS)}, launch=launch)
    stage = Log(LogParams(batch_rows=10), name="log", context=context)
    stage.on_start()
    for seq in range(frames):
        for stream, faces in (("a", [(1, "happy" if seq < 40 else "sad"), (2, "angry")]), ("b", [(7, "neutral")])):
            if stream not in streams:
                continue
            meta = {"source": f"/nowhere/{stream}.mp4", "kind": "file", "fps": FPS}
            msg = Message(stream=stream, seq=seq, ts=100.0 + seq / 5, media_ts=seq / FPS, meta=meta)
            for track, emotion in faces:
                probs = [0.9 if e == emotion else 0.1 / 6 for e in EMOTIONS]
                face = Face(box=[8 * track, 4, 16, 16], track=track, emotion=emotion, confidence=0.9, probs=probs)
                msg.fields.setdefault(FACES, []).append(face)
            stage.process(msg)
    return stage


def write_video(path, frames: int = 60) -> None:
    """A browser-playable clip standing in for render's output."""
    writer = H264Writer(path, FPS, (64, 48))
    for i in range(frames):
        writer.write(np.full((48, 64, 3), (i * 4) % 250, np.uint8))
    writer.release()


def test_report_has_sections_plots_csv_and_figures(tmp_path):
    write_log(tmp_path).on_stop()
    index = write_report(tmp_path / "emotions.sqlite", tmp_path / "report", pdf=False)
    page = index.read_text()
    for name in ("r1-share.png", "r1-timelines.png", "r1-distribution.png", "r1-confidence.png", "comparison.png"):
        assert f'src="{name}"' in page and (tmp_path / "report" / name).stat().st_size > 5000
    assert page.count("<h3>People</h3>") == 2 and "<h2>Comparison</h2>" in page  # streams a and b
    with open(tmp_path / "report" / "tracks.csv") as f:
        tracks = {(r["stream"], r["track"]): r for r in csv.DictReader(f)}
    assert set(tracks) == {("a", "1"), ("a", "2"), ("b", "7")}
    assert tracks[("a", "1")]["dominant"] == "happy"
    assert float(tracks[("a", "1")]["share_sad"]) == pytest.approx(20 / 60, abs=1e-4)
    assert float(tracks[("a", "1")]["on_screen_s"]) == pytest.approx(6.0)  # media time, not the 12 s of capture time
    with open(tmp_path / "report" / "detections.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * 60 and {"run", "media_ts", "x", "w", "p_happy", "s_happy", "t"} <= set(rows[0])
    with open(tmp_path / "report" / "frames.csv") as f:
        assert [(r["run"], r["stream"]) for r in csv.DictReader(f)] == [("r1", "a")] * 60 + [("r1", "b")] * 60
    # Stream a: 4 s happy of 12 face-seconds positive; 2 s sad + 6 s angry negative.
    assert "positive</th><td>33.3% of face time" in page and "negative</th><td>66.7% of face time" in page
    assert "duration</th><td>6.0 s" in page and "media time" in page


def test_latest_run_by_default_and_all_runs_compared(tmp_path):
    write_log(tmp_path, run="r1", started=1000.0, streams=("a",)).on_stop()
    write_log(tmp_path, run="r2", started=2000.0, streams=("a",), frames=30).on_stop()
    page = write_report(tmp_path / "emotions.sqlite", tmp_path / "latest", pdf=False).read_text()
    assert "<h2>Run r2</h2>" in page and "Run r1" not in page and "Comparison" not in page
    page = write_report(tmp_path / "emotions.sqlite", tmp_path / "all", runs="all", pdf=False).read_text()
    assert "<h2>Comparison</h2>" in page and "<h2>Run r1</h2>" in page and "<h2>Run r2</h2>" in page
    with open(tmp_path / "all" / "runs.csv") as f:
        assert [(r["run"], r["duration_s"]) for r in csv.DictReader(f)] == [("r1", "6.0"), ("r2", "3.0")]
    with pytest.raises(PipelineError, match="no such run; runs are r1, r2"):
        write_report(tmp_path / "emotions.sqlite", tmp_path / "x", runs="r3")


def rendered(fig) -> np.ndarray:
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3]


def test_a_single_track_timeline_is_drawn(tmp_path):
    write_log(tmp_path, streams=("b",)).on_stop()
    _, streams, classes = read_log(tmp_path / "emotions.sqlite")
    summary = summarise(streams[0], classes)
    assert len(summary.tracks) == 1
    image = rendered(plots.timelines(summary))
    neutral = np.array([int(COLOURS["neutral"][i : i + 2], 16) for i in (1, 3, 5)])
    assert (np.abs(image.astype(int) - neutral).sum(axis=2) < 10).sum() > 5000  # a full-width bar, not an empty axis


def test_percentage_labels_stay_inside_their_axes(tmp_path):
    write_log(tmp_path, streams=("b",)).on_stop()  # 100 % neutral: the tallest bar possible
    _, streams, classes = read_log(tmp_path / "emotions.sqlite")
    fig = plots.distribution(summarise(streams[0], classes))
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    labels = [(ax, t) for ax in fig.axes for t in ax.texts]
    assert len(labels) == 1 + 3
    for ax, text in labels:
        box, frame = text.get_window_extent(renderer), ax.get_window_extent(renderer)
        assert frame.y0 <= box.y0 and box.y1 <= frame.y1 and frame.x0 <= box.x0 and box.x1 <= frame.x1, text.get_text()


def test_report_reads_while_the_pipeline_is_writing(tmp_path):
    stage = write_log(tmp_path)  # committed batches, and an open writer connection
    writer = sqlite3.connect(tmp_path / "emotions.sqlite")
    writer.execute("BEGIN IMMEDIATE")  # a write transaction in progress (WAL mode lets readers in)
    try:
        assert write_report(tmp_path / "emotions.sqlite", tmp_path / "report", pdf=False).exists()
    finally:
        writer.rollback()
        writer.close()
        stage.on_stop()


def test_missing_database_is_a_clear_error(tmp_path):
    with pytest.raises(PipelineError, match="no such database"):
        write_report(tmp_path / "nope.sqlite", tmp_path / "report")


def headings(page: str) -> list[str]:
    return [re.sub("<[^>]+>", "", h).replace("&amp;", "&") for h in re.findall(r"<h[23]>(.*?)</h[23]>", page)]


def pdf_text(path) -> str:
    pdfium = pytest.importorskip("pypdfium2", reason="pypdfium2 is not installed (pip install -e .[dev])")
    document = pdfium.PdfDocument(str(path))
    return "\n".join(document[i].get_textpage().get_text_range() for i in range(len(document)))


def test_pdf_has_the_same_sections_as_the_page(tmp_path):
    write_log(tmp_path).on_stop()
    index = write_report(tmp_path / "emotions.sqlite", tmp_path / "report")
    text = " ".join(pdf_text(tmp_path / "report" / "report.pdf").split())
    found = headings(index.read_text())
    assert set(SECTIONS) <= set(found) and "Comparison" in found and "Data" in found
    missing = [h for h in found if h not in text]
    assert missing == []


def check_in_browser(browser, index, min_images: int) -> None:
    """No console errors, every image loads, and the video plays."""
    page = browser.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(index.as_uri())
    page.wait_for_load_state("load")
    widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.complete && i.naturalWidth)")
    assert len(widths) >= min_images and all(w and w > 0 for w in widths), widths
    assert page.locator("video").count() >= 1
    page.eval_on_selector("video", "v => v.play()")
    page.wait_for_function("document.querySelector('video').readyState >= 2", timeout=20_000)
    page.wait_for_function("document.querySelector('video').currentTime > 0.3", timeout=20_000)
    assert errors == []
    page.screenshot(path=str(index.parent / "screenshot.png"), full_page=True)
    page.close()


def test_report_opens_in_chromium_plays_its_video_and_loads_every_image(tmp_path, browser):
    write_log(tmp_path, streams=("a",)).on_stop()
    write_video(tmp_path / "annotated.mp4")
    index = write_report(tmp_path / "emotions.sqlite", tmp_path / "report")
    assert 'src="r1-video.mp4"' in index.read_text()
    assert (tmp_path / "report" / "r1-person-1.jpg").exists()  # cut from the video: the source file is gone
    check_in_browser(browser, index, min_images=4 + 2)
