"""Reading an emotion log for reports: its runs, and each run's frames and faces per stream.

Every row gets ``t``, its time on the clock the report uses for its source: media time for
files and image folders (the position in the file, the same whatever the pacing), wall-clock
seconds since the stream's first frame for live sources (cameras, URLs) and logs that do
not say what their source was.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.analytics import schema
from pipeline.errors import PipelineError

MEDIA_KINDS = frozenset({"file", "folder"})


@dataclass
class Run:
    """One row of ``runs``."""

    id: str
    started: float
    ended: float | None
    source: str | None
    sources: dict[str, dict[str, Any]]
    config: str | None
    model: str | None
    model_path: str | None
    model_fingerprint: str | None
    model_accuracy: float | None
    host: str | None
    version: str | None
    next_started: float | None = None  # when the run after it in the same log started

    @property
    def over_by(self) -> float:
        """When its outputs were last written: its end, or the next run's start if it has no end (stopped hard)."""
        return self.ended or self.next_started or time.time()


@dataclass
class Stream:
    """The frames and faces of one stream of one run, with ``t`` on the report's clock.

    Attributes:
        run: the run.
        stream: the stream id.
        kind: ``file``, ``folder``, ``camera``, ``url`` or ``unknown``.
        clock: ``media`` or ``wall``.
        frames: one map per logged frame (``frame``, ``t``, ``ts``, ``media_ts``, ``faces``, ``file``).
        faces: one map per face row (every column of ``detections`` and ``t``).
    """

    run: Run
    stream: str
    kind: str
    clock: str
    frames: list[dict[str, Any]] = field(default_factory=list)
    faces: list[dict[str, Any]] = field(default_factory=list)

    @property
    def source(self) -> str | None:
        return (self.run.sources.get(self.stream) or {}).get("source")

    @property
    def label(self) -> str:
        """``run 2026...-ab12 · stream``, or the run alone for its only stream."""
        many = len(self.run.sources) > 1
        return f"Run {self.run.id} · {self.stream}" if many else f"Run {self.run.id}"


def read_runs(db: sqlite3.Connection) -> list[Run]:
    """Every run, oldest first."""
    rows = db.execute(f"SELECT {', '.join(schema.RUN_COLUMNS)} FROM runs ORDER BY started, run").fetchall()
    runs = []
    for r in rows:
        values = dict(zip(schema.RUN_COLUMNS, r))
        values["id"] = values.pop("run")
        values["sources"] = json.loads(values["sources"] or "{}")
        runs.append(Run(**values))
    for run, after in zip(runs, runs[1:]):
        run.next_started = after.started
    return runs


def select_runs(runs: list[Run], spec: str, path: Path) -> list[Run]:
    """``latest``, ``all``, or run ids separated by commas (a unique prefix is enough)."""
    if not runs:
        raise PipelineError(f"{path}: no runs logged yet")
    if spec == "latest":
        return runs[-1:]
    if spec == "all":
        return runs
    chosen = []
    for wanted in filter(None, (w.strip() for w in spec.split(","))):
        matches = [r for r in runs if r.id == wanted] or [r for r in runs if r.id.startswith(wanted)]
        if len(matches) != 1:
            known = ", ".join(r.id for r in runs)
            raise PipelineError(f"--runs {wanted}: {'ambiguous' if matches else 'no such run'}; runs are {known}")
        chosen.append(matches[0])
    return chosen


def read_streams(db: sqlite3.Connection, run: Run) -> list[Stream]:
    """The streams of ``run`` with their frames and faces, ordered by frame."""
    frames = db.execute(
        "SELECT run, stream, frame, ts, media_ts, faces, file FROM frames WHERE run = ? ORDER BY stream, frame", (run.id,)
    ).fetchall()
    faces = db.execute("SELECT * FROM detections WHERE run = ? ORDER BY stream, frame, face", (run.id,)).fetchall()
    streams: dict[str, Stream] = {}
    for name in sorted({r["stream"] for r in frames} | {r["stream"] for r in faces} | set(run.sources)):
        kind = (run.sources.get(name) or {}).get("kind") or "unknown"
        streams[name] = Stream(run, name, kind, "media" if kind in MEDIA_KINDS else "wall")
    for r in frames:
        streams[r["stream"]].frames.append(dict(r))
    for r in faces:
        streams[r["stream"]].faces.append(dict(r))
    for stream in streams.values():
        _set_times(stream)
        files = {r["frame"]: r["file"] for r in stream.frames if r["file"]}
        for r in stream.faces:  # image folders: which file each face is in, for detections.csv
            r["file"] = files.get(r["frame"])
    return [s for s in streams.values() if s.frames or s.faces]


def _set_times(stream: Stream) -> None:
    """``t`` of every frame and face: media time, or wall-clock since the stream's first frame."""
    rows = stream.frames or stream.faces
    if stream.clock == "media":
        for r in (*stream.frames, *stream.faces):
            r["t"] = r["media_ts"] if r["media_ts"] is not None else r["ts"] - rows[0]["ts"]
        return
    t0 = min(r["ts"] for r in rows)
    for r in (*stream.frames, *stream.faces):
        r["t"] = r["ts"] - t0


def read_log(path: Path, spec: str = "latest") -> tuple[list[Run], list[Stream], list[str]]:
    """The chosen runs, their streams and the log's class names."""
    db = schema.open_for_reading(path)
    try:
        stored = db.execute("SELECT value FROM meta WHERE key = 'classes'").fetchone()
        classes = json.loads(stored[0]) if stored else []
        runs = select_runs(read_runs(db), spec, path)
        streams = [s for run in runs for s in read_streams(db, run)]
    except sqlite3.Error as exc:
        raise PipelineError(f"{path}: cannot read the emotion log: {exc}") from exc
    finally:
        db.close()
    return runs, streams, classes
