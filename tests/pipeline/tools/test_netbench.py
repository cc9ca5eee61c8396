"""The cross-host benchmark's report: medians per variant and what Curve costs (the runs themselves need root)."""

from pipeline.tools.netbench import _medians, format_netbench


def run(fps: float, p50: float, detect: float) -> dict:
    figures = {"fps": fps, "latency_ms": {"p50": p50, "p95": 2 * p50}, "wire_kb_per_frame": 30.0}
    return {"max": {**figures, "cpu_ms_per_frame": {"detect": detect, "segment": 4.0, "log": None}}, "paced": figures}


def test_medians_and_the_cost_of_curve_per_codec():
    result = {
        "jpeg curve": _medians([run(45, 40, 15.5), run(47, 44, 15.1), run(20, 400, 15.3)]),
        "jpeg plain": _medians([run(50, 39, 15.0), run(48, 41, 15.2), run(49, 40, 14.8)]),
    }
    assert result["jpeg curve"]["fps"] == 45 and result["jpeg curve"]["latency_p50_ms"] == 44
    assert result["jpeg curve"]["cpu_ms_per_frame"] == {"detect": 15.3, "segment": 4.0}  # stages with figures only
    table = format_netbench(result)
    assert "jpeg: CurveZMQ costs 8.2 % of frames/s" in table
    assert table.splitlines()[1].split() == ["jpeg", "curve", "45", "44", "88", "30.0", "15.3", "4.0"]
