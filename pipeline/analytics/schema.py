"""The emotion log's schema: one home for the writer (the ``log`` stage), the reader (reports) and the migration.

Version 2 adds the ``runs`` table, a ``run`` column on every row, the media time of every
frame (``media_ts``) and the image file of folder sources. Version-1 files are converted in
place by ``migrate`` (``run_pipeline.py migrate --db FILE``, or any new run into the folder).
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
MIGRATE_HINT = "python run_pipeline.py migrate --db {path}"

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run TEXT PRIMARY KEY,
    started REAL NOT NULL,
    ended REAL,
    source TEXT,
    sources TEXT,
    config TEXT,
    model TEXT, model_path TEXT, model_fingerprint TEXT, model_accuracy REAL,
    host TEXT,
    version TEXT
);
CREATE TABLE IF NOT EXISTS detections (
    run TEXT NOT NULL,
    stream TEXT NOT NULL,
    frame INTEGER NOT NULL,
    ts REAL NOT NULL,
    media_ts REAL,
    face INTEGER NOT NULL,
    track INTEGER,
    x INTEGER NOT NULL, y INTEGER NOT NULL, w INTEGER NOT NULL, h INTEGER NOT NULL,
    emotion TEXT,
    confidence REAL,
    emotion_raw TEXT,
    {probabilities}
);
CREATE INDEX IF NOT EXISTS detections_run_stream_frame ON detections (run, stream, frame);
CREATE TABLE IF NOT EXISTS frames (
    run TEXT NOT NULL,
    stream TEXT NOT NULL,
    frame INTEGER NOT NULL,
    ts REAL NOT NULL,
    media_ts REAL,
    faces INTEGER NOT NULL,
    latency_ms REAL NOT NULL,
    file TEXT
);
CREATE INDEX IF NOT EXISTS frames_run_stream_frame ON frames (run, stream, frame);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""

DETECTION_COLUMNS = ("run", "stream", "frame", "ts", "media_ts", "face", "track", "x", "y", "w", "h",
                     "emotion", "confidence", "emotion_raw")  # fmt: skip
FRAME_COLUMNS = ("run", "stream", "frame", "ts", "media_ts", "faces", "latency_ms", "file")
# What version 2 added to the tables of version 1 (NOT NULL needs a default in ALTER TABLE).
V2_COLUMNS = {
    "detections": ("run TEXT NOT NULL DEFAULT ''", "media_ts REAL"),
    "frames": ("run TEXT NOT NULL DEFAULT ''", "media_ts REAL", "file TEXT"),
}
RUN_COLUMNS = ("run", "started", "ended", "source", "sources", "config", "model", "model_path", "model_fingerprint",
               "model_accuracy", "host", "version")  # fmt: skip


def column(prefix: str, name: str) -> str:
    """``p_happy``: the column of a class probability (``p``: the frame's own, ``s``: smoothed)."""
    return f"{prefix}_{re.sub(r'[^A-Za-z0-9_]', '_', name)}"


def schema(classes: Sequence[str]) -> str:
    """The tables for a run whose model has these classes."""
    columns = [f"{column(prefix, name)} REAL" for prefix in ("p", "s") for name in classes]
    return SCHEMA.replace("{probabilities}", ", ".join(columns))


def insert(table: str, columns: Sequence[str]) -> str:
    """An INSERT naming its columns: files migrated from version 1 have them in another order."""
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"


def version(db: sqlite3.Connection) -> int:
    """The schema version of an open log; 0 for an empty file."""
    found = db.execute("PRAGMA user_version").fetchone()[0]
    if found == 0 and db.execute("SELECT 1 FROM sqlite_master WHERE name = 'detections'").fetchone():
        return 1  # the first logs set user_version 1; an unset one with tables is as old
    return found


def open_for_writing(path: Path, classes: Sequence[str], busy_timeout_s: float) -> sqlite3.Connection:
    """Open (create, or migrate from version 1) the log at ``path`` for a run with ``classes``."""
    db = sqlite3.connect(path, timeout=busy_timeout_s)
    db.execute("PRAGMA journal_mode=WAL")  # readers (reports) never block the writer
    found = version(db)
    if found > SCHEMA_VERSION:
        db.close()
        raise PipelineError(f"{path}: schema version {found} is newer than this program's {SCHEMA_VERSION}")
    if found == 1:
        migrate(db, path)
    stored = db.execute("SELECT value FROM meta WHERE key = 'classes'").fetchone() if found else None
    if stored and json.loads(stored[0]) != list(classes):
        db.close()
        raise PipelineError(f"{path}: logged with classes {json.loads(stored[0])}, this run's model has {list(classes)}; "
                            "choose another --out")  # fmt: skip
    db.executescript(schema(classes))
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                   [("schema_version", str(SCHEMA_VERSION)), ("classes", json.dumps(list(classes)))])  # fmt: skip
    db.commit()
    return db


def migrate(db: sqlite3.Connection, path: Path | str = "") -> str | None:
    """Convert a version-1 log in place, in one transaction; return the id given to its run.

    Version 1 had no runs and no media time: all its rows become one run named after its
    first frame, and ``media_ts`` is the time since that frame (wall-clock: the best there is).
    """
    if version(db) != 1:
        return None
    first, last = db.execute("SELECT MIN(ts), MAX(ts) FROM frames").fetchone()
    if first is None:
        first, last = db.execute("SELECT MIN(ts), MAX(ts) FROM detections").fetchone()
    first = first if first is not None else time.time()
    run_id = "v1-" + time.strftime("%Y%m%d-%H%M%S", time.localtime(first))
    streams = [r[0] for r in db.execute("SELECT DISTINCT stream FROM frames UNION SELECT DISTINCT stream FROM detections")]
    db.commit()
    try:
        db.execute("BEGIN IMMEDIATE")
        for table, added in V2_COLUMNS.items():
            for definition in added:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {definition}")
            db.execute(f"UPDATE {table} SET run = ?, media_ts = ts - ?", (run_id, first))
        db.execute(SCHEMA.split(";")[0])  # the runs table
        sources = {s: {"source": None, "kind": "unknown"} for s in streams}
        db.execute(insert("runs", ("run", "started", "ended", "source", "sources", "version")),
                   (run_id, first, last, "unknown (logged before schema 2)", json.dumps(sources), "schema 1"))  # fmt: skip
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        db.execute("COMMIT")
    except sqlite3.Error as exc:
        db.execute("ROLLBACK")
        raise PipelineError(f"{path}: cannot migrate schema 1 to {SCHEMA_VERSION}: {exc}") from exc
    log.info("%s: migrated the emotion log from schema 1 to %d (its rows are run %s)", path, SCHEMA_VERSION, run_id)
    return run_id


def migrate_file(path: Path | str) -> str | None:
    """``run_pipeline.py migrate``: convert the log at ``path``; None when it needed nothing."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: no such database")
    db = sqlite3.connect(path, timeout=10, isolation_level=None)
    try:
        return migrate(db, path)
    finally:
        db.close()


def open_for_reading(path: Path) -> sqlite3.Connection:
    """Open a log read-only (safe while a pipeline writes it); refuse other schema versions clearly."""
    if not path.is_file():
        raise PipelineError(f"{path}: no such database")
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        found = version(db)
    except sqlite3.Error as exc:
        raise PipelineError(f"{path}: not an emotion log: {exc}") from exc
    if found != SCHEMA_VERSION:
        db.close()
        if found == 1:
            raise PipelineError(f"{path}: schema version 1 (no runs, no media time); convert it with "
                                f"`{MIGRATE_HINT.format(path=path)}`")  # fmt: skip
        raise PipelineError(f"{path}: schema version {found}, this program reads version {SCHEMA_VERSION}")
    db.row_factory = sqlite3.Row
    return db


def start_run(db: sqlite3.Connection, record: Mapping[str, Any]) -> None:
    """Record a run once; a restarted log worker finds its row and keeps it."""
    columns = [c for c in RUN_COLUMNS if c in record]
    db.execute(insert("runs", columns).replace("INSERT", "INSERT OR IGNORE", 1), [record[c] for c in columns])
    db.commit()
