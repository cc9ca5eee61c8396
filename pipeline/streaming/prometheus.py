"""Per-stage metrics in Prometheus' text format, served by the launcher (``run --metrics-port``)."""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import REGISTRY, Collector

BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000)


class StageCollector(Collector):
    """Exposes the latest figures each worker sent to the launcher."""

    def __init__(self) -> None:
        self._stats: dict[tuple[str, int], dict[str, Any]] = {}
        self._lock = threading.Lock()

    def update(self, event: dict[str, Any]) -> None:
        """Feed launcher events (``Launcher(on_event=...)``)."""
        if event.get("event") in ("stats", "done"):
            with self._lock:
                self._stats[(event["stage"], event["worker"])] = event["stats"]

    def collect(self):
        with self._lock:
            stats = dict(self._stats)
        counters = {
            key: CounterMetricFamily(f"emotion_pipeline_{key}", help_text, labels=["stage", "worker"])
            for key, help_text in (
                ("frames_in", "Frames received by the stage"),
                ("frames_out", "Frames sent on by the stage"),
                ("dropped", "Frames dropped by a drop-oldest link"),
                ("errors", "Malformed messages and exceptions in process()"),
            )
        }
        rss = GaugeMetricFamily("emotion_pipeline_rss_mib", "Resident memory of the worker process", labels=["stage", "worker"])
        hist = HistogramMetricFamily(
            "emotion_pipeline_process_ms", "Time in process() over recent frames", labels=["stage", "worker"]
        )
        for (stage, worker), s in stats.items():
            labels = [stage, str(worker)]
            for key, family in counters.items():
                family.add_metric(labels, s[key])
            rss.add_metric(labels, s["rss_mib"])
            times = s["process_ms"]
            buckets = [(str(b), sum(t <= b for t in times)) for b in BUCKETS_MS] + [("+Inf", len(times))]
            hist.add_metric(labels, buckets, sum_value=sum(times))
        yield from counters.values()
        yield rss
        yield hist


def serve(port: int, host: str = "127.0.0.1") -> StageCollector:
    """Start the HTTP endpoint (``/metrics``) in a thread and return the collector to feed."""
    from prometheus_client import start_http_server

    collector = StageCollector()
    REGISTRY.register(collector)
    start_http_server(port, addr=host)
    return collector
