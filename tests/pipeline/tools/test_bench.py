"""The bench command end to end on the first frames of the real clip (figures are printed, not asserted)."""

import json
import subprocess

import pytest

from tests.conftest import PYTHON, ROOT

pytestmark = pytest.mark.slow


def test_bench_json_has_every_figure(video, model_dir, wider_dir, tmp_path):
    plot = tmp_path / "bench.png"
    result = subprocess.run(
        [PYTHON, "run_pipeline.py", "bench", "configs/local.yaml", "--source", str(video), "--frames", "60", "--json",
         "--plot", str(plot), "--detect-data", str(wider_dir)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    bench = json.loads(result.stdout)
    keys = {"fps", "baseline_fps", "latency_ms", "efficiency", "dropped", "rss_mib", "first_frame_s", "one_face_share"}
    assert set(bench) >= keys
    assert set(bench["latency_ms"]) == {"p50", "p95", "p99"}
    stages = {"capture", "detect", "segment", "classify", "track", "render", "log"}
    assert set(bench["rss_mib"]) == set(bench["cpu_ms_per_frame"]) == stages
    assert bench["fps"] > 0 and bench["baseline_fps"] > 0 and 0 < bench["efficiency"] <= 1.5
    assert bench["dropped"] == 0  # paced at the clip's own 30 fps with blocking links
    assert bench["one_face_share"] >= 0.95  # the clip shows one face throughout
    assert plot.stat().st_size > 10_000
    detection = bench["detection"]  # recall is measured beside speed, at the source's frame size
    assert detection["size"] == [596, 336] and 0 < detection["recall"] <= 1 and 0 < detection["precision"] <= 1
