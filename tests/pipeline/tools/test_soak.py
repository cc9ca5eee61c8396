import json
import subprocess

import pytest

from tests.conftest import PYTHON, ROOT

pytestmark = pytest.mark.slow


def test_soak_reports_latency_and_memory_per_minute(video, model_dir):
    result = subprocess.run(
        [PYTHON, "run_pipeline.py", "soak", "configs/local.yaml", "--source", str(video), "--minutes", "0.25", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    soak = json.loads(result.stdout)
    first = soak["per_minute"][0]
    assert first["frames"] >= 0.8 * 0.25 * 60 * 30  # a quarter of a minute at the clip's 30 fps, looped
    assert first["latency_ms"]["p50"] <= first["latency_ms"]["p99"]  # figures, not a speed target (bench has those)
    assert {"capture", "detect", "classify", "log"} <= set(first["rss_mib"])
    assert soak["dropped"] == 0 and soak["lost"] == []
