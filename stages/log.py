"""Log: one row per face per frame in SQLite (and optionally JSON Lines) for analytics.

Rows are written in batched transactions; everything buffered is committed on
end-of-stream and on stop (SIGTERM, Ctrl-C), so a stopped pipeline loses nothing it received.
A locked or failing database is reported and retried; the rows stay buffered meanwhile.
"""

from __future__ import annotations

import json
import logging
import socket
import sqlite3
import time
from pathlib import Path

from pydantic import Field, field_validator

from pipeline.analytics import schema
from pipeline.analytics.schema import SCHEMA_VERSION  # noqa: F401 - where callers knew it
from pipeline.streaming.message import Message
from pipeline.streaming.stage import Params, Stage, inside_out
from pipeline.vision.emotions import EMOTIONS
from pipeline.vision.model import model_facts
from pipeline.vision.record import faces_of

log = logging.getLogger(__name__)

INSERT_FRAME = schema.insert("frames", schema.FRAME_COLUMNS)
RUNNING_BUSY_TIMEOUT_S = 0.05  # while frames flow; the full busy_timeout_s at the end


class LogParams(Params):
    database: str = Field("emotions.sqlite", description="SQLite file inside the output directory")
    jsonl: str | None = Field(None, description="also append JSON Lines to this file inside the output directory")
    batch_rows: int = Field(200, ge=1, le=100_000, description="commit after this many rows")
    flush_s: float = Field(1.0, gt=0, le=3600, description="commit at least this often (seconds)")
    busy_timeout_s: float = Field(5.0, ge=0, le=600, description="how long a write waits for a locked database")

    _inside_out = field_validator("database", "jsonl")(inside_out)


class Log(Stage):
    """Writes detections to ``OUT/emotions.sqlite`` (tables ``runs``, ``detections``, ``frames``; schema version 2)."""

    Params = LogParams
    requires = frozenset({"box"})
    is_sink = True
    ordered_input = True
    _db: sqlite3.Connection | None = None  # set by on_start
    rejected = unwritten = 0  # rows refused by the database; rows still buffered when it stopped

    def on_start(self) -> None:
        p: LogParams = self.params
        out = Path(self.context.out)
        out.mkdir(parents=True, exist_ok=True)
        # The model fixes the classes for the run; without a classifier the columns stay FER's.
        self.classes = list(self.context.run.get("classes", EMOTIONS))
        self.path = out / p.database
        self._db = schema.open_for_writing(self.path, self.classes, p.busy_timeout_s)
        self.run_id = self.context.run_id or time.strftime("%Y%m%d-%H%M%S")  # outside a launched run (tests)
        schema.start_run(self._db, self._run_record())
        self._sources: dict[str, dict] = {}  # stream -> what its capture said, recorded in runs.sources
        self._open_streams = set(self.context.streams)
        self._run_changed = False
        # While frames flow, a locked database must not hold up the loop: rows wait in the buffer
        # and are retried with back-off. The full busy timeout applies only to the last flushes.
        self._db.execute(f"PRAGMA busy_timeout = {int(min(p.busy_timeout_s, RUNNING_BUSY_TIMEOUT_S) * 1000)}")
        self._jsonl = open(out / p.jsonl, "a") if p.jsonl else None  # noqa: SIM115 - open until on_stop
        self._detections: list[tuple] = []
        self._frames: list[tuple] = []
        self._last_flush = time.monotonic()
        self.rows = 0
        self.rejected = 0  # rows the database refused (logged one by one)
        self._failures, self._retry_at, self._error = 0, 0.0, ""  # a busy or failing database
        probabilities = [schema.column(prefix, name) for prefix in ("p", "s") for name in self.classes]
        self._insert_detection = schema.insert("detections", (*schema.DETECTION_COLUMNS, *probabilities))

    def _run_record(self) -> dict:
        """This run's row of ``runs``: the launcher's facts and the model's (from ``model.json``)."""
        launch = self.context.launch
        record = {"run": self.run_id, "started": launch.get("started", time.time()), "config": launch.get("config"),
                  "host": launch.get("host", socket.gethostname()), "version": launch.get("version")}  # fmt: skip
        if self.context.run.get("model"):
            facts = model_facts(self.context.run["model"])
            record.update(model=facts["name"], model_path=facts["path"], model_fingerprint=facts["fingerprint"],
                          model_accuracy=facts["accuracy"])  # fmt: skip
        return record

    def process(self, msg: Message) -> None:
        latency = (time.time() - msg.ts) * 1000
        faces = faces_of(msg)
        if msg.stream not in self._sources:  # recorded in runs.sources with the next commit
            self._sources[msg.stream] = {k: msg.meta.get(k) for k in ("source", "kind", "fps", "width")}
            self._run_changed = True
        row = (self.run_id, msg.stream, msg.seq, msg.ts, msg.media_ts)
        self._frames.append((*row, len(faces), round(latency, 2), msg.meta.get("file")))
        n = len(self.classes)
        for i, face in enumerate(faces):
            probs = face.probs if face.probs and len(face.probs) == n else [None] * n
            smoothed = face.smoothed if face.smoothed and len(face.smoothed) == n else [None] * n
            raw = face.emotion_raw or face.emotion
            self._detections.append((*row, i, face.track, *face.box, face.emotion, face.confidence, raw, *probs, *smoothed))
            if self._jsonl is not None:
                record = {
                    "run": self.run_id,
                    "stream": msg.stream,
                    "frame": msg.seq,
                    "ts": msg.ts,
                    "media_ts": msg.media_ts,
                    "face": i,
                    "track": face.track,
                    "box": face.box,
                    "emotion": face.emotion,
                    "confidence": face.confidence,
                    "emotion_raw": raw,
                    "probs": dict(zip(self.classes, face.probs)) if face.probs else None,
                    "smoothed": dict(zip(self.classes, face.smoothed)) if face.smoothed else None,
                }
                self._jsonl.write(json.dumps(record) + "\n")
        due = len(self._detections) >= self.params.batch_rows or time.monotonic() - self._last_flush >= self.params.flush_s
        if due and time.monotonic() >= self._retry_at:  # a busy database is retried with back-off, not every frame
            self.flush()
        return None

    def flush(self) -> bool:
        """Commit buffered rows; False when the database is busy or failing (rows stay buffered).

        A row the database refuses (a constraint, a value it cannot store) is rejected alone,
        counted in ``rejected`` and logged; it never holds back the rows after it.
        """
        self._last_flush = time.monotonic()
        if not self._detections and not self._frames:
            return True
        try:
            with self._db:  # one transaction
                self._db.executemany(self._insert_detection, self._detections)
                self._db.executemany(INSERT_FRAME, self._frames)
        except sqlite3.OperationalError as exc:  # locked, full, unreachable: worth retrying
            self._failures += 1
            self._retry_at = time.monotonic() + min(30.0, 2.0**self._failures)
            self._error = str(exc)
            log.error(
                "%s: cannot write %d rows to %s (%s); keeping them and retrying", self.name, len(self._detections), self.path, exc
            )
            return False
        except (sqlite3.Error, OverflowError, ValueError):
            if not self._insert_one_by_one():
                return False
        self._failures, self._retry_at = 0, 0.0
        self.rows += len(self._detections)
        self._detections.clear()
        self._frames.clear()
        if self._run_changed:
            self._update_run()
        if self._jsonl is not None:
            self._jsonl.flush()
        return True

    def _insert_one_by_one(self) -> bool:
        """Insert each buffered row on its own, rejecting the ones the database refuses."""
        try:
            with self._db:
                for sql, rows in ((self._insert_detection, self._detections), (INSERT_FRAME, self._frames)):
                    for row in list(rows):
                        try:
                            self._db.execute(sql, row)
                        except (sqlite3.IntegrityError, sqlite3.InterfaceError, sqlite3.ProgrammingError,
                                OverflowError, ValueError) as exc:  # fmt: skip
                            rows.remove(row)
                            self.rejected += 1
                            log.error("%s: rejected a row of stream %s frame %s: %s", self.name, row[1], row[2], exc)
        except sqlite3.OperationalError as exc:
            log.error("%s: cannot write to %s (%s); keeping the rows and retrying", self.name, self.path, exc)
            return False
        return True

    def _update_run(self, ended: float | None = None) -> None:
        """Keep this run's row current: the sources seen so far and, once it is over, its end."""
        many = len(self._sources) > 1
        source = "; ".join(f"{stream}: {s['source']}" if many else str(s["source"]) for stream, s in self._sources.items())
        try:
            with self._db:
                self._db.execute("UPDATE runs SET source = ?, sources = ?, ended = COALESCE(?, ended) WHERE run = ?",
                                 (source or None, json.dumps(self._sources), ended, self.run_id))  # fmt: skip
            self._run_changed = False
        except sqlite3.Error as exc:  # figures for the report, not rows: retried with the next commit
            log.error("%s: cannot update run %s in %s: %s", self.name, self.run_id, self.path, exc)

    def on_eos(self, msg: Message) -> None:
        self._db.execute(f"PRAGMA busy_timeout = {int(self.params.busy_timeout_s * 1000)}")
        self.flush()
        self._open_streams.discard(msg.stream)
        if not self._open_streams:
            self._update_run(ended=time.time())

    def on_stop(self) -> None:
        if self._db is None:
            return
        self._db.execute(f"PRAGMA busy_timeout = {int(self.params.busy_timeout_s * 1000)}")
        for attempt in range(5):
            if self.flush():
                break
            time.sleep(0.5 * (attempt + 1))
        self.unwritten = len(self._detections) + len(self._frames)
        if self._open_streams or self._run_changed:  # stopped before every stream ended
            self._update_run(ended=time.time())
        self._db.close()
        self._db = None
        if self._jsonl is not None:
            self._jsonl.close()

    def losses(self) -> list[str]:
        lost = [f"{self.rejected} rows refused by the database (see the log)"] if self.rejected else []
        if self.unwritten:
            lost.append(f"{self.unwritten} rows not written to {self.path}: {self._error or 'database unavailable'}")
        return lost
