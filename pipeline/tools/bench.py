"""Benchmark: the pipeline as fast as possible, paced, overloaded, and a sequential baseline.

All four runs happen in one call, on one machine, so their ratios are comparable even on a
noisy machine. See ``run_pipeline.py bench --help``.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import PipelineError
from pipeline.streaming.launcher import ProcessLauncher, RunResult
from pipeline.streaming.metrics import percentile
from pipeline.streaming.stage import StageContext
from pipeline.streaming.topology import InputConfig, Topology, load_topology

log = logging.getLogger(__name__)


def _percentiles(values: list[float]) -> dict[str, float | None]:
    return {f"p{q}": _round(percentile(values, q)) for q in (50, 95, 99)}


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def _with_links(topology: Topology, **changes: Any) -> Topology:
    """The same topology with these fields of every link replaced (``policy``, ``hwm``, ``codec``)."""
    stages = [
        stage.model_copy(
            update={"inputs": [InputConfig(**{**link.model_dump(by_alias=True), **changes}) for link in stage.inputs]}
        )
        for stage in topology.config.stages
    ]
    return Topology(topology.config.model_copy(update={"stages": stages}), topology.runtime_dir)


def pipeline_run(topology: Topology, out: Path, context: dict[str, Any]) -> dict[str, Any]:
    """Run the topology once in processes and reduce its figures."""
    rss_seen: dict[str, list[float]] = {}

    def on_event(event: dict) -> None:
        if event.get("event") == "stats":
            rss_seen.setdefault(event["stage"], []).append(event["stats"]["rss_mib"])

    result: RunResult = ProcessLauncher(topology, {**context, "out": str(out)}, on_event=on_event).run()
    if result.code != 0:
        raise PipelineError(f"benchmark run {out.name} failed with exit code {result.code}")
    sink = sink_figures(topology, result)
    series, fps = sink.pop("series"), sink["fps"]
    first_capture = series[0][0]
    # A stage's cost is all the CPU its processes spent per frame once frames flowed: process(),
    # the codec and ZeroMQ, and library threads (video decoding and encoding); start-up excluded.
    cpu = {name: row["cpu_ms_per_frame"] for name, row in result.stages.items()}
    per_frame_cost = sum(v for v in cpu.values() if v)
    ideal = (os.cpu_count() or 1) * 1000 / per_frame_cost if per_frame_cost else None
    return {
        **sink,
        "dropped": sum(row["dropped"] + row["late"] for row in result.stages.values()),
        "cpu_ms_per_frame": {k: _round(v) for k, v in cpu.items()},
        "work_ms_per_frame": {name: _round(row["work_ms_per_frame"]) for name, row in result.stages.items()},
        "ideal_fps": _round(ideal, 1),
        "efficiency": _round(fps / ideal if ideal else None, 3),
        "rss_mib": {name: _round(row["rss_mib"], 1) for name, row in result.stages.items()},
        "rss_growth_mib": {name: _round(v[-1] - v[min(2, len(v) - 1)], 1) for name, v in rss_seen.items() if v},
        "first_frame_s": _round(min(s["first_ts"] for s in _sinks(topology, result) if s["first_ts"]) - result.started),
        "latency_series": [[round(ts - first_capture, 4), round(ms, 2)] for ts, ms in series],
        "one_face_share": _one_face_share(_database(topology, out)),
    }


def sink_figures(topology: Topology, result: RunResult) -> dict[str, Any]:
    """Frames, frames/s and capture-to-sink latency seen by the sinks of a finished run.

    Frames/s runs from the first capture to the last frame done at a sink, so start-up (model
    loading) is left out. The capture times come from the source's clock: across machines,
    latency is only as good as their clock synchronisation.
    """
    sinks = _sinks(topology, result)
    series = sorted(p for s in sinks for p in s["latency_series"])
    if not series:
        raise PipelineError("no frame reached a sink")
    frames = max(s["frames_in"] for s in sinks)
    last_done = max(ts + ms / 1000 for ts, ms in series)
    fps = (frames - 1) / (last_done - series[0][0]) if frames > 1 else 0.0
    latencies = [ms for s in sinks for ms in s["latency_ms"]]
    return {"frames": frames, "fps": _round(fps, 1), "latency_ms": _percentiles(latencies), "series": series}


def _sinks(topology: Topology, result: RunResult) -> list[dict[str, Any]]:
    return [s for s in result.snapshots if topology.classes[s["stage"]].is_sink]


def _database(topology: Topology, out: Path) -> Path | None:
    """The emotion log a sink of this topology writes, if one does (a sink with a ``database`` param)."""
    files = [getattr(topology.params[n], "database", None) for n in topology.order if topology.classes[n].is_sink]
    return next((out / f for f in files if f), None)


def _source_name(topology: Topology) -> str:
    sources = [n for n in topology.order if topology.classes[n].is_source]
    if len(sources) != 1:
        raise PipelineError(f"bench needs a topology with one source stage, got {len(sources)}")
    return sources[0]


def _one_face_share(db_path: Path | None) -> float | None:
    if db_path is None or not db_path.exists():
        return None
    with sqlite3.connect(db_path) as db:
        counts = [r[0] for r in db.execute("SELECT faces FROM frames")]
    return round(float(np.mean([c == 1 for c in counts])), 4) if counts else None


def sequential_run(topology: Topology, out: Path, context: dict[str, Any], opencv_threads: int = 1) -> dict[str, Any]:
    """The same stage code in this one process, one frame through every stage at a time, no ZeroMQ.

    With ``opencv_threads=1`` it computes on one core, like each worker of the pipeline: the
    baseline the process design is measured against. With OpenCV's default thread pool, the
    Haar detector itself spreads over the cores: what a one-process program gets for free.
    """
    import cv2

    default_threads = cv2.getNumThreads()
    cv2.setNumThreads(opencv_threads if opencv_threads > 0 else default_threads)
    stages = {
        name: topology.classes[name](
            topology.params[name],
            name=name,
            context=StageContext(
                out=str(out),
                label=name,
                stream=topology.stream_id(name),
                streams=tuple(topology.streams[name]),
                run=topology.metadata[name],
            ),
        )
        for name in topology.order
    }
    for stage in stages.values():
        stage.on_start()
    source_name = next(n for n in topology.order if topology.classes[n].is_source)
    rest = [n for n in topology.order if n != source_name]
    frames = 0
    try:
        t0 = time.perf_counter()
        for seq, msg in enumerate(stages[source_name].generate()):
            msg.stream, msg.seq = topology.stream_id(source_name), seq
            outputs = {source_name: msg}
            for name in rest:
                upstream = outputs.get(topology.stages[name].inputs[0].source)
                outputs[name] = None if upstream is None else stages[name].process(upstream)
            frames += 1
        seconds = time.perf_counter() - t0
    finally:
        for stage in stages.values():
            stage.on_stop()
        cv2.setNumThreads(default_threads)
    return {"frames": frames, "fps": _round(frames / seconds, 1)}


def run_bench(
    config: str,
    source: str,
    paced_fps: float | None = None,
    frames: int | None = None,
    codec: str | None = None,
    detect_data: str | Path | None = None,
) -> dict[str, Any]:
    """Run (a) max speed, (b) paced at the source's fps, (c) paced at twice that with drop-oldest
    links, and (d) the sequential baseline, on one thread and with OpenCV's threads; return the figures.

    ``codec`` forces every link's image codec (``raw`` against ``shm``: what shared memory saves).
    With ``detect_data`` (the WIDER FACE folder), the config's detect stage is also scored on a
    generated clip of the source's frame size, so a faster setting shows what it costs in recall.
    """
    context = {"log_level": logging.WARNING, "log_format": "%(asctime)s %(levelname)s %(processName)s: %(message)s"}
    with tempfile.TemporaryDirectory(prefix="emobench-") as tmp:
        tmp_path = Path(tmp)

        src = _source_name(load_topology(config, tmp_path / "rt", [], source))

        def topology(name: str, overrides: list[str]) -> Topology:
            overrides = [o.replace("SOURCE.", f"{src}.") for o in overrides]
            limit = [f"{src}.max_frames={frames}"] if frames else []
            loaded = load_topology(config, tmp_path / f"rt-{name}", overrides + limit, source)
            return _with_links(loaded, codec=codec) if codec else loaded

        runs: dict[str, dict[str, Any]] = {}
        log.info("bench: as fast as possible")
        runs["max"] = pipeline_run(topology("max", ["SOURCE.pacing=max"]), tmp_path / "max", context)
        native = paced_fps or _native_fps(source)
        log.info("bench: paced at %.1f fps", native)
        runs["paced"] = pipeline_run(
            topology("paced", ["SOURCE.pacing=realtime", f"SOURCE.fps={native}"]), tmp_path / "paced", context
        )
        log.info("bench: paced at %.1f fps with drop-oldest links", 2 * native)
        overload = topology("overload", ["SOURCE.pacing=realtime", f"SOURCE.fps={2 * native}"])
        overload = _with_links(overload, policy="drop-oldest", hwm=2)
        runs["overload"] = pipeline_run(overload, tmp_path / "overload", context)
        log.info("bench: sequential baseline, one thread")
        baseline = sequential_run(topology("seq", ["SOURCE.pacing=max"]), tmp_path / "seq", context)
        log.info("bench: sequential, OpenCV's default threads")
        threaded = sequential_run(topology("seq-mt", ["SOURCE.pacing=max"]), tmp_path / "seq-mt", context, opencv_threads=0)

    detection = None
    if detect_data is not None:
        from pipeline.tools.yardstick import clip_recall

        log.info("bench: detection recall on a generated clip")
        detection = clip_recall(config, detect_data, _frame_size(source))
        detection.pop("per_size")
    summary = _summary(runs, baseline, threaded, detection)
    return {"config": config, "source": source, "codec": codec or "as configured", "paced_fps": native, **summary}


def _summary(runs: dict[str, dict], baseline: dict, threaded: dict, detection: dict | None) -> dict[str, Any]:
    """The headline figures of the runs, in the order ``format_bench`` prints them."""
    fast = runs["max"]
    return {
        "machine": f"{os.cpu_count()} cores, {os.uname().machine}",
        "fps": fast["fps"],
        "baseline_fps": baseline["fps"],
        "speedup": _round(fast["fps"] / baseline["fps"], 2) if baseline["fps"] else None,
        "baseline_threaded_fps": threaded["fps"],
        "latency_ms": runs["paced"]["latency_ms"],
        "efficiency": fast["efficiency"],
        "ideal_fps": fast["ideal_fps"],
        "dropped": runs["paced"]["dropped"],
        "rss_mib": fast["rss_mib"],
        "first_frame_s": fast["first_frame_s"],
        "one_face_share": fast["one_face_share"],
        "detection": detection,
        "cpu_ms_per_frame": fast["cpu_ms_per_frame"],
        "work_ms_per_frame": fast["work_ms_per_frame"],
        "overload": {k: runs["overload"][k] for k in ("fps", "latency_ms", "dropped", "rss_mib", "rss_growth_mib")},
        "runs": runs,
        "baseline": baseline,
    }


def _native_fps(source: str) -> float:
    import cv2

    cap = cv2.VideoCapture(source)
    fps = cap.get(cv2.CAP_PROP_FPS) if cap.isOpened() else 0
    cap.release()
    return fps if fps and fps < 1000 else 30.0


def _frame_size(source: str) -> tuple[int, int]:
    import cv2

    cap = cv2.VideoCapture(source)
    ok, frame = cap.read()
    cap.release()
    if not ok:
        raise PipelineError(f"{source}: cannot read a frame")
    return frame.shape[1], frame.shape[0]


def _detection_line(d: dict[str, Any] | None) -> str:
    if d is None:
        return "detection recall: not measured (give --detect-data, the WIDER FACE folder)"
    return (
        f"detection on a generated {d['size'][0]}x{d['size'][1]} clip ({len(d['photos'])} WIDER photos, "
        f"{d['scored_frames']} frames): recall {d['recall']:.1%}, precision {d['precision']:.1%}; "
        f"detect {d['ms_per_frame']['mean']} ms of CPU a frame (p99 {d['ms_per_frame']['p99']})"
    )


def format_bench(b: dict[str, Any]) -> str:
    """The figures as a readable block."""
    lat, ov = b["latency_ms"], b["overload"]
    lines = [
        f"{b['config']} on {b['source']} ({b['machine']}); link codec: {b['codec']}",
        f"as fast as possible: {b['fps']} frames/s; sequential baseline (one process, one thread) {b['baseline_fps']} frames/s; "
        f"speedup {b['speedup']}x",
        _detection_line(b.get("detection")),
        f"sequential with OpenCV's default threads: {b['baseline_threaded_fps']} frames/s",
        f"ideal from stage costs ({b['machine'].split(',')[0]} / sum of CPU ms per frame): {b['ideal_fps']} frames/s; "
        f"efficiency {b['efficiency']}",
        f"paced at {b['paced_fps']:.1f} fps: latency p50 {lat['p50']} ms, p95 {lat['p95']} ms, p99 {lat['p99']} ms; "
        f"dropped {b['dropped']}",
        f"paced at {2 * b['paced_fps']:.1f} fps, drop-oldest: {ov['fps']} frames/s out, "
        f"latency p99 {ov['latency_ms']['p99']} ms, "
        f"dropped {ov['dropped']}, RSS growth {ov['rss_growth_mib']} MiB",
        f"first frame out after {b['first_frame_s']} s; one face in {b['one_face_share']:.1%} of frames",
        "stage        CPU ms/frame (process)   of it in process()   RSS MiB",
    ]
    for name, cpu in b["cpu_ms_per_frame"].items():
        work = b["work_ms_per_frame"].get(name)
        cells = ("-" if v is None else v for v in (cpu, work))
        lines.append(f"{name:<12}{next(cells):>23}{next(cells):>21}{b['rss_mib'].get(name, 0):>10}")
    return "\n".join(lines)


def plot_bench(b: dict[str, Any], path: Path) -> None:
    """Latency over time for the paced and overloaded runs, and throughput per configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_lat, ax_fps) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [2, 1]})
    for key, label in (
        ("paced", f"paced {b['paced_fps']:.0f} fps"),
        ("overload", f"paced {2 * b['paced_fps']:.0f} fps, drop-oldest"),
        ("max", "as fast as possible"),
    ):
        series = np.asarray(b["runs"][key]["latency_series"])
        if len(series):
            ax_lat.plot(series[:, 0], series[:, 1], label=label, lw=1)
    ax_lat.set_xlabel("capture time (s)")
    ax_lat.set_ylabel("capture-to-sink latency (ms)")
    ax_lat.set_yscale("log")
    ax_lat.legend()
    ax_lat.grid(alpha=0.3)
    names = ["sequential\n1 thread", "sequential\nOpenCV threads", "pipeline\n(processes)"]
    values = [b["baseline_fps"], b["baseline_threaded_fps"], b["fps"]]
    ax_fps.bar(names, values, color=["#999999", "#bbbbbb", "#3b7dd8"])
    for i, v in enumerate(values):
        ax_fps.text(i, v, f"{v:.0f}", ha="center", va="bottom")
    ax_fps.set_ylabel("frames/s")
    ax_fps.set_title("throughput, as fast as possible")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
