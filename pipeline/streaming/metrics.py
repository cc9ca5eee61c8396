"""Per-stage counters and timings, kept by the runner and summarised by the launcher."""

from __future__ import annotations

import os
import resource
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import numpy as np


def percentile(values, q: float) -> float | None:
    """The q-th percentile of values, or None when there are none."""
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else None


def process_cpu_s() -> float:
    """CPU seconds this process has used (user + system, all threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class StageMetrics:
    """What one worker counted. Timings keep the last 20,000 frames, enough for any percentile."""

    stage: str
    worker: int
    frames_in: int = 0
    frames_out: int = 0
    dropped: int = 0  # drop-oldest: older frames discarded at this stage's input or output
    late: int = 0  # frames that arrived after the reorder buffer had moved past them
    errors: int = 0  # malformed messages and exceptions in process()
    malformed: int = 0  # of the errors, messages that could not be decoded (not frames of this run)
    busy_s: float = 0.0  # time spent in process(), for CPU share and ideal throughput
    cpu_s: float = 0.0  # the whole process: stage, transport, library threads
    cpu_at_first_frame_s: float | None = None  # cpu_s when the first frame came: start-up cost excluded
    rss_mib: float = 0.0
    first_ts: float | None = None  # when the first frame left this stage (sinks: was written)
    process_ms: deque = field(default_factory=lambda: deque(maxlen=20_000))
    cpu_ms: deque = field(default_factory=lambda: deque(maxlen=20_000))  # thread CPU time in process()
    wait_ms: deque = field(default_factory=lambda: deque(maxlen=20_000))
    latency_ms: deque = field(default_factory=lambda: deque(maxlen=20_000))  # capture -> here (sinks)
    latency_series: deque = field(default_factory=lambda: deque(maxlen=20_000))  # (capture ts, ms) at sinks

    @contextmanager
    def timed(self) -> Iterator[None]:
        """Count the enclosed work (wall and thread CPU time) as processing of one frame.

        Nothing is counted when the block raises: a failed frame is an error, not a timing.
        """
        t0, c0 = time.perf_counter(), time.thread_time()
        yield
        busy = time.perf_counter() - t0
        self.busy_s += busy
        self.process_ms.append(busy * 1000)
        self.cpu_ms.append((time.thread_time() - c0) * 1000)

    def first_frame(self) -> None:
        """Mark the start of steady state: CPU spent before (start-up, model loading) is left out."""
        if self.cpu_at_first_frame_s is None:
            self.cpu_at_first_frame_s = process_cpu_s()

    def sample_resources(self) -> None:
        """Update the process's CPU time and resident memory."""
        self.cpu_s = process_cpu_s()
        try:
            with open("/proc/self/statm") as f:
                self.rss_mib = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        except OSError:
            self.rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def frame_in(self, queued_s: float) -> None:
        """Count a frame received, after ``queued_s`` seconds between the stage upstream and here."""
        self.first_frame()
        self.frames_in += 1
        self.wait_ms.append(max(0.0, queued_s) * 1000)

    def sent(self, delivered: bool, dropped: int, sink: bool) -> None:
        """Count a frame sent on (``delivered`` on some link; ``dropped`` by as many), or consumed by a sink."""
        self.frames_out += delivered or sink
        self.dropped += dropped

    def sink_latency(self, capture_ts: float) -> None:
        """Record a frame's end-to-end latency, from capture to done at this sink."""
        now = time.time()
        self.first_ts = self.first_ts or now
        self.latency_ms.append((now - capture_ts) * 1000)
        self.latency_series.append((capture_ts, (now - capture_ts) * 1000))

    def snapshot(self, recent: int | None = None) -> dict[str, Any]:
        """A JSON-able summary sent to the launcher; with ``recent``, only the last timings."""

        def last(values: deque) -> list:
            return list(islice(reversed(values), recent))[::-1] if recent else list(values)

        return {
            "stage": self.stage,
            "worker": self.worker,
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "dropped": self.dropped,
            "late": self.late,
            "errors": self.errors,
            "malformed": self.malformed,
            "busy_s": round(self.busy_s, 4),
            "cpu_s": round(self.cpu_s, 3),
            "cpu_steady_s": round(self.cpu_s - (self.cpu_at_first_frame_s or self.cpu_s), 3),
            "rss_mib": round(self.rss_mib, 1),
            "first_ts": self.first_ts,
            "process_ms": last(self.process_ms),
            "cpu_ms": last(self.cpu_ms),
            "wait_ms": last(self.wait_ms),
            "latency_ms": last(self.latency_ms),
            "latency_series": [list(p) for p in last(self.latency_series)],
        }


def summarise(snapshots: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Merge worker snapshots into one row per stage."""
    rows: dict[str, dict[str, Any]] = {}
    seen: set[tuple[str, int]] = set()
    for snap in snapshots:
        row = rows.setdefault(
            snap["stage"],
            {
                "workers": 0,
                "frames_in": 0,
                "frames_out": 0,
                "dropped": 0,
                "late": 0,
                "errors": 0,
                "busy_s": 0.0,
                "cpu_s": 0.0,
                "cpu_steady_s": 0.0,
                "rss_mib": 0.0,
                "first_ts": None,
                "process_ms": [],
                "cpu_ms": [],
                "wait_ms": [],
                "latency_ms": [],
            },
        )
        row["workers"] += (snap["stage"], snap["worker"]) not in seen  # a restarted worker's starts count once
        seen.add((snap["stage"], snap["worker"]))
        for key in ("frames_in", "frames_out", "dropped", "late", "errors", "busy_s", "cpu_s", "cpu_steady_s"):
            row[key] += snap[key]
        row["rss_mib"] = max(row["rss_mib"], snap["rss_mib"])
        if snap.get("first_ts") is not None:
            row["first_ts"] = min(row["first_ts"] or snap["first_ts"], snap["first_ts"])
        for key in ("process_ms", "cpu_ms", "wait_ms", "latency_ms"):
            row[key] = row[key] + snap.get(key, [])
    for row in rows.values():
        cpu = row.pop("cpu_ms")
        row["work_ms_per_frame"] = float(np.mean(cpu)) if cpu else None
        frames = max(row["frames_in"], row["frames_out"])
        row["cpu_ms_per_frame"] = 1000 * row["cpu_steady_s"] / frames if frames else None
        for key in ("process_ms", "wait_ms", "latency_ms"):
            values = row.pop(key)
            row[f"{key[:-3]}_p50_ms"] = percentile(values, 50)
            row[f"{key[:-3]}_p95_ms"] = percentile(values, 95)
            if key == "latency_ms":
                row["latency_p99_ms"] = percentile(values, 99)
    return rows


def format_table(rows: dict[str, dict[str, Any]]) -> str:
    """A fixed-width table of the per-stage summary."""

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    head = (
        f"{'stage':<12}{'workers':>8}{'in':>7}{'out':>7}{'dropped':>8}{'late':>5}{'errors':>7}"
        f"{'p50 ms':>8}{'p95 ms':>8}{'wait p50':>9}{'RSS MiB':>9}"
    )
    lines = [head]
    for name, r in rows.items():
        lines.append(
            f"{name:<12}{r['workers']:>8}{r['frames_in']:>7}{r['frames_out']:>7}{r['dropped']:>8}{r['late']:>5}{r['errors']:>7}"
            f"{ms(r['process_p50_ms']):>8}{ms(r['process_p95_ms']):>8}{ms(r['wait_p50_ms']):>9}{r['rss_mib']:>9.0f}"
        )
    return "\n".join(lines)
