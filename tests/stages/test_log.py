import sqlite3

import numpy as np

from pipeline.streaming.message import Message
from pipeline.streaming.stage import StageContext
from pipeline.vision.emotions import EMOTIONS
from pipeline.vision.record import FACES, Face, faces_of
from stages.log import SCHEMA_VERSION, Log, LogParams


def classified(seq: int, n_faces: int = 1) -> Message:
    faces = [
        Face(box=[10 * i, 20, 30, 30], emotion="happy", confidence=0.8, probs=[0.02, 0.02, 0.02, 0.8, 0.04, 0.05, 0.05])
        for i in range(n_faces)
    ]
    image = np.zeros((4, 4, 3), np.uint8)
    return Message(stream="cam", seq=seq, ts=1000.0 + seq / 30, image=image, fields={FACES: faces})


def make_log(tmp_path, **params) -> Log:
    stage = Log(LogParams(**params), name="log", context=StageContext(out=str(tmp_path), run={"classes": list(EMOTIONS)}))
    stage.on_start()
    return stage


def test_rows_are_buffered_then_committed_on_stop(tmp_path):
    stage = make_log(tmp_path, batch_rows=1000, flush_s=3600, jsonl="emotions.jsonl")
    for seq in range(5):
        stage.process(classified(seq, n_faces=seq % 3))
    with sqlite3.connect(tmp_path / "emotions.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM detections").fetchone()[0] == 0  # still buffered
    stage.on_stop()
    with sqlite3.connect(tmp_path / "emotions.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM detections").fetchone()[0] == 0 + 1 + 2 + 0 + 1
        assert db.execute("SELECT COUNT(*) FROM frames").fetchone()[0] == 5
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        row = db.execute("SELECT stream, frame, emotion, p_happy, w FROM detections ORDER BY rowid").fetchone()
    assert row == ("cam", 1, "happy", 0.8, 30)
    assert len((tmp_path / "emotions.jsonl").read_text().splitlines()) == 4


def test_end_of_stream_commits(tmp_path):
    stage = make_log(tmp_path, batch_rows=1000, flush_s=3600)
    stage.process(classified(0))
    stage.on_eos(Message.eos("cam", 1, "track:0"))
    with sqlite3.connect(tmp_path / "emotions.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM detections").fetchone()[0] == 1
    stage.on_stop()


def test_locked_database_keeps_rows_and_retries(tmp_path, caplog):
    stage = make_log(tmp_path, batch_rows=1, busy_timeout_s=0.05)
    locker = sqlite3.connect(tmp_path / "emotions.sqlite")
    locker.execute("BEGIN EXCLUSIVE")
    stage.process(classified(0))  # the commit fails: the rows stay buffered
    assert "cannot write 1 rows" in caplog.text
    locker.rollback()
    locker.close()
    stage.process(classified(1))
    stage.on_stop()
    with sqlite3.connect(tmp_path / "emotions.sqlite") as db:
        assert [r[0] for r in db.execute("SELECT frame FROM detections ORDER BY rowid")] == [0, 1]


def test_a_row_the_database_refuses_is_rejected_alone(tmp_path):
    stage = make_log(tmp_path, batch_rows=1000, flush_s=3600)
    for seq in range(10):
        msg = classified(seq)
        if seq == 3:
            msg.ts = float("nan")  # SQLite stores NaN as NULL, which the NOT NULL column refuses
        if seq == 6:
            faces_of(msg)[0].track = 2**63  # too large for an SQLite integer
        stage.process(msg)
    assert stage.flush()
    stage.on_stop()
    with sqlite3.connect(tmp_path / "emotions.sqlite") as db:
        frames = [r[0] for r in db.execute("SELECT frame FROM detections ORDER BY frame")]
    assert frames == [0, 1, 2, 4, 5, 7, 8, 9]
    assert stage.rejected == 3  # frame 3's detection and frame row, frame 6's detection
