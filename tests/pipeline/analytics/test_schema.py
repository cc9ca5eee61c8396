"""The emotion log's schema: version-1 files are converted in place, or refused naming the command that does it."""

import sqlite3

import pytest
from click.testing import CliRunner

from pipeline.analytics.report import write_report
from pipeline.analytics.schema import SCHEMA_VERSION, migrate_file
from pipeline.errors import ExitCode, PipelineError
from pipeline.streaming.stage import StageContext
from pipeline.tools.cli import main
from pipeline.vision.emotions import EMOTIONS
from stages.log import Log, LogParams
from tests.stages.test_log import classified

# The tables as the first version of the log stage made them.
VERSION_1 = """
CREATE TABLE detections (stream TEXT NOT NULL, frame INTEGER NOT NULL, ts REAL NOT NULL, face INTEGER NOT NULL,
    track INTEGER, x INTEGER NOT NULL, y INTEGER NOT NULL, w INTEGER NOT NULL, h INTEGER NOT NULL, emotion TEXT,
    confidence REAL, emotion_raw TEXT, {columns});
CREATE INDEX detections_stream_frame ON detections (stream, frame);
CREATE TABLE frames (stream TEXT NOT NULL, frame INTEGER NOT NULL, ts REAL NOT NULL, faces INTEGER NOT NULL,
    latency_ms REAL NOT NULL);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
PRAGMA user_version = 1;
"""


def make_version_1(path, frames: int = 20) -> None:
    columns = ", ".join(f"{p}_{e} REAL" for p in ("p", "s") for e in EMOTIONS)
    with sqlite3.connect(path) as db:
        db.executescript(VERSION_1.format(columns=columns))
        db.execute("INSERT INTO meta VALUES ('schema_version', '1'), ('classes', ?)", (str(list(EMOTIONS)).replace("'", '"'),))
        for seq in range(frames):
            ts = 1000.0 + seq / 10
            db.execute("INSERT INTO frames VALUES ('cam', ?, ?, 1, 20.0)", (seq, ts))
            probs = [0.1] * 7 + [None] * 7
            values = f"'cam', ?, ?, 0, 1, 5, 5, 30, 30, 'happy', 0.7, 'happy', {', '.join('?' * 14)}"
            db.execute(f"INSERT INTO detections VALUES ({values})", (seq, ts, *probs))
    sqlite3.connect(path).close()


def test_a_version_1_log_is_migrated_in_place_into_one_run(tmp_path):
    path = tmp_path / "emotions.sqlite"
    make_version_1(path)
    run_id = migrate_file(path)
    assert run_id.startswith("v1-")
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        (found, started, ended), *more = db.execute("SELECT run, started, ended FROM runs").fetchall()
        assert (found, more) == (run_id, []) and (started, ended) == pytest.approx((1000.0, 1001.9))
        assert db.execute("SELECT DISTINCT run FROM detections UNION SELECT DISTINCT run FROM frames").fetchall() == [(run_id,)]
        media = [r[0] for r in db.execute("SELECT media_ts FROM frames ORDER BY frame")]
    assert media == pytest.approx([seq / 10 for seq in range(20)])
    assert migrate_file(path) is None  # already current: nothing to do
    index = write_report(path, tmp_path / "report", pdf=False)
    assert "wall-clock" in index.read_text()  # no media time in version 1: said so


def test_a_report_of_a_version_1_log_names_the_command_that_converts_it(tmp_path):
    path = tmp_path / "emotions.sqlite"
    make_version_1(path)
    with pytest.raises(PipelineError, match=r"schema version 1 .*python run_pipeline.py migrate --db"):
        write_report(path, tmp_path / "report")
    result = CliRunner().invoke(main, ["migrate", "--db", str(path)])
    assert result.exit_code == ExitCode.OK, result.output
    assert "its rows are run v1-" in result.output
    assert write_report(path, tmp_path / "report", pdf=False).exists()


def test_a_new_run_into_a_version_1_folder_migrates_it_and_adds_a_run(tmp_path):
    make_version_1(tmp_path / "emotions.sqlite")
    context = StageContext(out=str(tmp_path), run={"classes": list(EMOTIONS)}, launch={"id": "new", "started": 2000.0})
    stage = Log(LogParams(), name="log", context=context)
    stage.on_start()
    stage.process(classified(0))
    stage.on_stop()
    with sqlite3.connect(tmp_path / "emotions.sqlite") as db:
        runs = [r[0] for r in db.execute("SELECT run FROM runs ORDER BY started")]
        per_run = dict(db.execute("SELECT run, COUNT(*) FROM detections GROUP BY run").fetchall())
    assert runs[1] == "new" and runs[0].startswith("v1-")
    assert per_run == {runs[0]: 20, "new": 1}


def test_a_log_of_another_model_s_classes_is_refused(tmp_path):
    context = StageContext(out=str(tmp_path), run={"classes": ["a", "b"]})
    first = Log(LogParams(), name="log", context=StageContext(out=str(tmp_path), run={"classes": list(EMOTIONS)}))
    first.on_start()
    first.on_stop()
    with pytest.raises(PipelineError, match="logged with classes"):
        Log(LogParams(), name="log", context=context).on_start()
