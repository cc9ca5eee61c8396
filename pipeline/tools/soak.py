"""Soak: a looped source through the pipeline for minutes, with latency and memory per minute.

What a long run shows and a benchmark does not: latency that creeps up, memory that grows,
drops that start after a while. See ``run_pipeline.py soak --help``.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError
from pipeline.streaming.launcher import ProcessLauncher, install_signal_handlers
from pipeline.streaming.metrics import percentile
from pipeline.streaming.topology import Topology, load_topology


class _PerMinute:
    """Collects the workers' periodic figures into one-minute buckets."""

    def __init__(self, topology: Topology):
        self.topology = topology
        self.t0 = time.time()
        self.latency: dict[float, float] = {}  # capture time -> ms at a sink (each frame once)
        self.rss: dict[int, dict[str, float]] = defaultdict(dict)
        self.dropped: dict[tuple[str, int], int] = {}

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("event") not in ("stats", "done"):
            return
        stats, minute = event["stats"], int((time.time() - self.t0) // 60)
        stage = event["stage"]
        self.rss[minute][stage] = max(self.rss[minute].get(stage, 0.0), stats["rss_mib"])
        self.dropped[(stage, event["worker"])] = stats["dropped"]
        for ts, ms in stats.get("latency_series", []):
            self.latency[ts] = ms

    def table(self) -> list[dict[str, Any]]:
        by_minute: dict[int, list[float]] = defaultdict(list)
        for ts, ms in self.latency.items():
            by_minute[int((ts - self.t0) // 60)].append(ms)
        return [
            {
                "minute": m,
                "frames": len(by_minute.get(m, [])),
                "latency_ms": {f"p{q}": _round(percentile(by_minute.get(m, []), q)) for q in (50, 95, 99)},
                "rss_mib": {stage: round(v, 1) for stage, v in sorted(self.rss[m].items())},
            }
            for m in sorted(set(by_minute) | set(self.rss))
        ]


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def run_soak(config: str, source: str, minutes: float, overrides: list[str] | None = None) -> dict[str, Any]:
    """Loop ``source`` through ``config`` for ``minutes``, paced at its own rate; return the per-minute figures."""
    with tempfile.TemporaryDirectory(prefix="emosoak-") as tmp:
        topology = load_topology(config, Path(tmp) / "rt", overrides or [], source)
        sources = [n for n in topology.order if topology.classes[n].is_source]
        if len(sources) != 1:
            raise PipelineError(f"soak needs a topology with one source stage, got {len(sources)}")
        fps = getattr(topology.params[sources[0]], "fps", None) or 30.0
        frames = max(1, round(minutes * 60 * fps))
        topology = load_topology(config, Path(tmp) / "rt", [*(overrides or []), f"{sources[0]}.loop=true",
                                 f"{sources[0]}.max_frames={frames}", f"{sources[0]}.fps={fps}"], source)  # fmt: skip
        collector = _PerMinute(topology)
        settings = {"out": str(Path(tmp) / "out"), "log_level": logging.WARNING}
        launcher = ProcessLauncher(topology, settings, on_event=collector)
        install_signal_handlers(launcher)
        result = launcher.run()
    return {
        "config": config,
        "source": source,
        "minutes": minutes,
        "exit_code": int(result.code),
        "lost": result.lost,
        "dropped": sum(collector.dropped.values()),
        "per_minute": collector.table(),
    }


def format_soak(s: dict[str, Any]) -> str:
    """The per-minute table."""
    stages = sorted({stage for row in s["per_minute"] for stage in row["rss_mib"]})
    lines = [
        f"soak: {s['config']} on {s['source']} looped for {s['minutes']} min: exit {s['exit_code']}, dropped {s['dropped']}",
        f"{'minute':>6}{'frames':>8}{'p50 ms':>8}{'p95 ms':>8}{'p99 ms':>8}  RSS MiB: " + " ".join(f"{n:>9}" for n in stages),
    ]
    for row in s["per_minute"]:
        lat = row["latency_ms"]
        cells = "".join(f"{'-' if lat[k] is None else lat[k]:>8}" for k in ("p50", "p95", "p99"))
        rss = " ".join(f"{row['rss_mib'].get(n, '-'):>9}" for n in stages)
        lines.append(f"{row['minute']:>6}{row['frames']:>8}{cells}           {rss}")
    lines += [f"lost: {line}" for line in s["lost"]]
    return "\n".join(lines)
