from prometheus_client import CollectorRegistry, generate_latest

from pipeline.streaming.prometheus import StageCollector


def test_worker_figures_become_prometheus_metrics():
    collector = StageCollector()
    registry = CollectorRegistry()
    registry.register(collector)
    stats = {"frames_in": 10, "frames_out": 9, "dropped": 1, "errors": 0, "rss_mib": 80.5, "process_ms": [1.5, 3.0, 30.0]}
    collector.update({"event": "stats", "stage": "detect", "worker": 1, "stats": stats})
    text = generate_latest(registry).decode()
    assert 'emotion_pipeline_frames_in_total{stage="detect",worker="1"} 10.0' in text
    assert 'emotion_pipeline_dropped_total{stage="detect",worker="1"} 1.0' in text
    assert 'emotion_pipeline_process_ms_bucket{le="5",stage="detect",worker="1"} 2.0' in text
    assert 'emotion_pipeline_rss_mib{stage="detect",worker="1"} 80.5' in text
