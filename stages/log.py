"""Log: one row per face per frame in SQLite (and optionally JSON Lines) for analytics.

Rows are written in batched transactions; everything buffered is committed on
end-of-stream and on stop (SIGTERM, Ctrl-C), so a stopped pipeline loses nothing it received.
A locked or failing database is reported and retried; the rows stay buffered meanwhile.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from pathlib import Path

from pydantic import Field

from pipeline.streaming.message import Message
from pipeline.streaming.stage import Params, Stage
from pipeline.vision.faces import EMOTIONS

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
PROB_COLUMNS = [f"p_{name}" for name in EMOTIONS]  # the frame's own probabilities
SMOOTH_COLUMNS = [f"s_{name}" for name in EMOTIONS]  # smoothed over the track (NULL without a track stage)

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS detections (
    stream TEXT NOT NULL,
    frame INTEGER NOT NULL,
    ts REAL NOT NULL,
    face INTEGER NOT NULL,
    track INTEGER,
    x INTEGER NOT NULL, y INTEGER NOT NULL, w INTEGER NOT NULL, h INTEGER NOT NULL,
    emotion TEXT,
    confidence REAL,
    emotion_raw TEXT,
    {", ".join(f"{c} REAL" for c in PROB_COLUMNS + SMOOTH_COLUMNS)}
);
CREATE INDEX IF NOT EXISTS detections_stream_frame ON detections (stream, frame);
CREATE TABLE IF NOT EXISTS frames (
    stream TEXT NOT NULL,
    frame INTEGER NOT NULL,
    ts REAL NOT NULL,
    faces INTEGER NOT NULL,
    latency_ms REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""


class LogParams(Params):
    database: str = Field("emotions.sqlite", description="SQLite file inside the output directory")
    jsonl: str | None = Field(None, description="also append JSON Lines to this file inside the output directory")
    batch_rows: int = Field(200, ge=1, le=100_000, description="commit after this many rows")
    flush_s: float = Field(1.0, gt=0, le=3600, description="commit at least this often (seconds)")
    busy_timeout_s: float = Field(5.0, ge=0, le=600, description="how long a write waits for a locked database")


class Log(Stage):
    """Writes detections to ``OUT/emotions.sqlite`` (table ``detections``, schema version 1)."""

    Params = LogParams
    requires = frozenset({"faces"})
    is_sink = True
    ordered_input = True

    def on_start(self) -> None:
        p: LogParams = self.params
        out = Path(self.context.get("out", "."))
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / p.database
        self._db = sqlite3.connect(self.path, timeout=p.busy_timeout_s)
        self._db.execute("PRAGMA journal_mode=WAL")  # readers (reports) never block the writer
        self._db.executescript(SCHEMA)
        self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self._db.executemany(
            "INSERT OR REPLACE INTO meta VALUES (?, ?)",
            [("schema_version", str(SCHEMA_VERSION)), ("classes", json.dumps(EMOTIONS))],
        )
        self._db.commit()
        self._jsonl = open(out / p.jsonl, "a") if p.jsonl else None  # noqa: SIM115 - open until on_stop
        self._detections: list[tuple] = []
        self._frames: list[tuple] = []
        self._last_flush = time.monotonic()
        self.rows = 0

    def process(self, msg: Message) -> None:
        latency = (time.time() - msg.ts) * 1000
        self._frames.append((msg.stream, msg.seq, msg.ts, len(msg.faces), round(latency, 2)))
        for i, face in enumerate(msg.faces):
            x, y, w, h = face["box"]
            probs = face.get("probs") or [None] * len(EMOTIONS)
            smoothed = face.get("smoothed") or [None] * len(EMOTIONS)
            raw = face.get("emotion_raw", face.get("emotion"))
            row = (msg.stream, msg.seq, msg.ts, i, face.get("track"), x, y, w, h)  # fmt: skip
            self._detections.append((*row, face.get("emotion"), face.get("confidence"), raw, *probs, *smoothed))
            if self._jsonl is not None:
                record = {
                    "stream": msg.stream,
                    "frame": msg.seq,
                    "ts": msg.ts,
                    "face": i,
                    "track": face.get("track"),
                    "box": face["box"],
                    "emotion": face.get("emotion"),
                    "confidence": face.get("confidence"),
                    "emotion_raw": raw,
                    "probs": dict(zip(EMOTIONS, face["probs"])) if face.get("probs") else None,
                    "smoothed": dict(zip(EMOTIONS, face["smoothed"])) if face.get("smoothed") else None,
                }
                self._jsonl.write(json.dumps(record) + "\n")
        if len(self._detections) >= self.params.batch_rows or time.monotonic() - self._last_flush >= self.params.flush_s:
            self.flush()
        return None

    def flush(self) -> bool:
        """Commit buffered rows. On a database error the rows stay buffered for the next try."""
        self._last_flush = time.monotonic()
        if not self._detections and not self._frames:
            return True
        placeholders = ", ".join("?" * (12 + 2 * len(EMOTIONS)))
        try:
            with self._db:  # one transaction
                self._db.executemany(f"INSERT INTO detections VALUES ({placeholders})", self._detections)
                self._db.executemany("INSERT INTO frames VALUES (?, ?, ?, ?, ?)", self._frames)
        except sqlite3.Error as exc:
            log.error(
                "%s: cannot write %d rows to %s (%s); keeping them and retrying", self.name, len(self._detections), self.path, exc
            )
            return False
        self.rows += len(self._detections)
        self._detections.clear()
        self._frames.clear()
        if self._jsonl is not None:
            self._jsonl.flush()
        return True

    def on_eos(self, msg: Message) -> None:
        self.flush()

    def on_stop(self) -> None:
        if getattr(self, "_db", None) is None:
            return
        for attempt in range(5):
            if self.flush():
                break
            time.sleep(0.5 * (attempt + 1))
        self._db.close()
        self._db = None
        if self._jsonl is not None:
            self._jsonl.close()
