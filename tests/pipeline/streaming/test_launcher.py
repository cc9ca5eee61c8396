"""The framework in threads (fast): wiring, workers, end-of-stream, ordering, drop policy."""

import sqlite3

import cv2
import numpy as np
import yaml

from pipeline.streaming.launcher import ThreadLauncher
from pipeline.streaming.topology import load_topology


def make_video(path, frames: int, step: int = 1) -> None:
    """A 64x48 clip whose frame i is uniformly gray at (i * step) % 250."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (64, 48))
    for i in range(frames):
        writer.write(np.full((48, 64, 3), (i * step) % 250, np.uint8))
    writer.release()


def topology(tmp_path, frames: int, detect: dict, capture: dict | None = None):
    make_video(tmp_path / "clip.mp4", frames)
    config = {
        "name": "threads",
        "stages": [
            {"name": "capture", "type": "capture", "params": {"source": str(tmp_path / "clip.mp4"), "pacing": "max",
                                                             **(capture or {})}},
            {"name": "detect", "type": "detect", "inputs": [{"from": "capture", **detect.pop("link", {})}], **detect},
            {"name": "log", "type": "log", "inputs": ["detect"]},
        ],
    }  # fmt: skip
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(config))
    return load_topology(tmp_path / "t.yaml", tmp_path / "rt")


def logged_frames(tmp_path) -> list[int]:
    with sqlite3.connect(tmp_path / "out" / "emotions.sqlite") as db:
        return [r[0] for r in db.execute("SELECT frame FROM frames ORDER BY rowid")]


def test_three_workers_deliver_every_frame_in_order(tmp_path):
    result = ThreadLauncher(topology(tmp_path, 40, {"workers": 3}), {"out": str(tmp_path / "out")}).run()
    assert result.code == 0
    assert result.stages["detect"]["workers"] == 3 and result.stages["detect"]["frames_in"] == 40
    assert logged_frames(tmp_path) == list(range(40))


def test_drop_oldest_link_drops_and_counts_but_still_ends(tmp_path):
    # A fast source into a leaky link of one message: the detector cannot keep up, frames are dropped.
    topo = topology(tmp_path, 120, {"link": {"policy": "drop-oldest", "hwm": 1}, "params": {"detect_width": None}})
    result = ThreadLauncher(topo, {"out": str(tmp_path / "out")}).run()
    assert result.code == 0
    dropped = result.stages["capture"]["dropped"] + result.stages["detect"]["dropped"]
    frames = logged_frames(tmp_path)
    assert dropped > 0 and len(frames) + dropped == 120
    assert frames == sorted(frames)
