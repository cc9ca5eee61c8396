"""The detect stage measured: on annotated photos (``evaluate-detect``) and on generated clips.

Photos go through the detect stage's own code in full-scan mode, built from a topology's
detect stage with its overrides, so what is measured is what runs. Clips either go through
the whole pipeline in processes (``evaluate_clip``: recall and precision per frame from the
log database, with latency and drops), or through the detect stage alone, in video mode, in
this process (``scan_clip``: quick, for ``bench``).
"""

from __future__ import annotations

import sqlite3
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pipeline.errors import PipelineError
from pipeline.tools.clips import clip_segments, read_truth
from pipeline.vision.detection_eval import SIZE_BANDS, ImageTruth, evaluate_detect, match, size_band


def detect_stage(config: str, overrides: Sequence[str] = ()) -> Any:
    """The first ``detect`` stage of ``config`` with ``overrides`` applied, started (cascades loaded)."""
    from pipeline.streaming.topology import load_topology

    with tempfile.TemporaryDirectory(prefix="emodetect-") as tmp:
        topology = load_topology(config, tmp, list(overrides))
    names = [n for n in topology.order if topology.stages[n].type == "detect"]
    if not names:
        raise PipelineError(f"{config}: no stage of type detect")
    stage = topology.classes[names[0]](topology.params[names[0]], name=names[0])
    stage.on_start()
    return stage


def evaluate_photos(config: str, data: str | Path, overrides: Sequence[str] = (), limit: int | None = None) -> dict[str, Any]:
    """Recall, precision, recall by face size and ms a photo of ``config``'s detect stage, full scan.

    OpenCV runs on one thread, as in a pipeline worker. Besides ``ms_per_image`` (wall
    time), ``cpu_ms_per_image`` is the median CPU time: on a machine shared with other jobs
    the wall time measures the neighbours as much as the detector.
    """
    stage = detect_stage(config, overrides)
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    cpu: list[float] = []

    def detect(gray: np.ndarray) -> list[list[int]]:
        start = time.thread_time()
        boxes = stage.detect(gray, still=True)
        cpu.append((time.thread_time() - start) * 1000)
        return boxes

    try:
        settings = {"config": config, "stage": stage.name, **stage.params.model_dump()}
        result = evaluate_detect(data, detect, limit, settings=settings)
    finally:
        cv2.setNumThreads(threads)
    result["cpu_ms_per_image"] = round(float(np.median(cpu)), 1) if cpu else 0.0
    return result


def score_frames(detections: dict[int, list[list[int]]], truth: dict[int, ImageTruth], frames: int) -> dict[str, Any]:
    """Recall and precision over the frames ``0..frames-1`` (a face in a frame is one face)."""
    hits = false = n_faces = 0
    band_n = {label: 0 for label, _, _ in SIZE_BANDS}
    band_hits = dict(band_n)
    for i in range(frames):
        t = truth.get(i, ImageTruth())
        result = match(detections.get(i, []), t.faces, t.ignores)
        hits, false, n_faces = hits + result.hits, false + result.false_positives, n_faces + len(t.faces)
        for face, hit in zip(t.faces, result.face_hit):
            band = size_band(face[2])
            if band:
                band_n[band], band_hits[band] = band_n[band] + 1, band_hits[band] + hit
    return {
        "recall": hits / n_faces if n_faces else 0.0,
        "precision": hits / (hits + false) if hits + false else 1.0,
        "n_faces": n_faces,
        "hits": hits,
        "false_positives": false,
        "scored_frames": frames,
        "per_size": {k: {"n": band_n[k], "recall": band_hits[k] / band_n[k] if band_n[k] else None} for k in band_n},
    }


def logged_detections(db_path: str | Path) -> tuple[dict[int, list[list[int]]], list[int]]:
    """Boxes per frame from an emotion log, and the faces counted in every logged frame."""
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as db:
        detections: dict[int, list[list[int]]] = {}
        for frame, x, y, w, h in db.execute("SELECT frame, x, y, w, h FROM detections"):
            detections.setdefault(frame, []).append([x, y, w, h])
        counts = [n for (n,) in db.execute("SELECT faces FROM frames ORDER BY frame")]
    return detections, counts


def evaluate_clip(
    config: str, clip: str | Path, truth: str | Path | None = None, overrides: Sequence[str] = (), pacing: str = "realtime"
) -> dict[str, Any]:
    """Run ``config`` on ``clip`` in processes, paced at the clip's fps, and score its log.

    Returns:
        The run's figures (``fps``, ``latency_ms``, ``dropped``, ``cpu_ms_per_frame``), the
        share of frames with exactly one face, and with ``truth``, recall and precision over
        the frames (``score_frames``).
    """
    from pipeline.streaming.topology import load_topology
    from pipeline.tools.bench import _database, _source_name, pipeline_run

    with tempfile.TemporaryDirectory(prefix="emoclip-") as tmp:
        tmp_path = Path(tmp)
        src = _source_name(load_topology(config, tmp_path / "rt0", list(overrides), str(clip)))
        topology = load_topology(config, tmp_path / "rt", [*overrides, f"{src}.pacing={pacing}"], str(clip))
        run = pipeline_run(topology, tmp_path / "out", {"log_level": 30})
        db = _database(topology, tmp_path / "out")
        if db is None:
            raise PipelineError(f"{config}: no sink writes an emotion log to score")
        detections, counts = logged_detections(db)
    result = {k: run[k] for k in ("frames", "fps", "latency_ms", "dropped", "cpu_ms_per_frame", "first_frame_s")}
    result["one_face_share"] = round(float(np.mean([c == 1 for c in counts])), 4) if counts else None
    if truth is not None:
        result.update(score_frames(detections, read_truth(truth), len(counts)))
    return result


def scan_clip(stage: Any, frames: Iterator[tuple[np.ndarray, ImageTruth]]) -> dict[str, Any]:
    """Run a started detect stage over ``(frame, truth)`` pairs as one video stream; score per frame.

    Returns:
        ``score_frames`` figures and ``ms_per_frame``: mean and p99 of the stage's CPU time a frame.
    """
    detections, truth, times = {}, {}, []
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        for i, (frame, frame_truth) in enumerate(frames):
            gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
            start = time.thread_time()  # CPU time: wall time on a shared machine measures the neighbours
            detections[i] = stage.detect(gray, "clip")
            times.append((time.thread_time() - start) * 1000)
            truth[i] = frame_truth
    finally:
        cv2.setNumThreads(threads)
    result = score_frames(detections, truth, len(times))
    result["ms_per_frame"] = {"mean": round(float(np.mean(times)), 2), "p99": round(float(np.percentile(times, 99)), 2)}
    return result


def clip_recall(
    config: str, data: str | Path, size: tuple[int, int], overrides: Sequence[str] = (), photos: int = 4, seconds: float = 2.0
) -> dict[str, Any]:
    """Recall and precision of ``config``'s detect stage, in video mode, on a generated clip of ``size``.

    The clip (``photos`` WIDER photos, ``seconds`` each at 30 frames/s, seed 0) is made in
    memory, without video compression; the stage runs in this process on one thread.
    """
    names, frames = clip_segments(data, size, photos, round(seconds * 30), seed=0)
    result = scan_clip(detect_stage(config, overrides), frames)
    result.update(size=list(size), photos=names)
    return result


def format_detection(result: dict[str, Any], what: str) -> str:
    """Recall, precision and recall by face width as a few readable lines."""
    lines = [
        f"{what}: recall {result['recall']:.1%}, precision {result['precision']:.1%} "
        f"({result['hits']} of {result['n_faces']} faces, {result['false_positives']} false positives)"
    ]
    bands = [f"{k} px {v['recall']:.0%} of {v['n']}" for k, v in result["per_size"].items() if v["n"]]
    lines.append("recall by face width: " + ", ".join(bands))
    return "\n".join(lines)
