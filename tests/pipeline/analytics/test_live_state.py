"""The live view's figures, without a pipeline: faces now, the last minute, and the log sink's rate."""

import time

import numpy as np

from pipeline.analytics.live import DASHBOARD, LiveState, LogProgress
from pipeline.streaming.message import Message
from pipeline.vision.emotions import COLOURS
from pipeline.vision.record import FACES, Face
from tests.pipeline.analytics.test_report import write_log


def frame(emotion: str) -> Message:
    face = Face(box=[0, 0, 8, 8], track=4, emotion=emotion, confidence=0.75)
    return Message(stream="cam", seq=0, ts=time.time(), stamps={"capture": time.time()}, fields={FACES: [face]})


def test_stats_list_the_current_faces_and_the_last_minute():
    state = LiveState()
    image = np.zeros((8, 8, 3), np.uint8)
    for emotion in ("happy", "happy", "sad"):
        state.publish(image, frame(emotion))
    stats = state.stats()
    assert stats["faces"] == [{"stream": "cam", "track": 4, "emotion": "sad", "confidence": 0.75}]
    assert len(stats["minute"]) == 12 and stats["minute"][-1] == {"happy": 2, "sad": 1}
    assert stats["emotions"] == {"happy": 2, "sad": 1}


def test_the_log_sink_rate_comes_from_the_rows_it_committed(tmp_path):
    progress = LogProgress(tmp_path / "emotions.sqlite", "r1")
    assert progress.fps() is None  # no log yet
    stage = write_log(tmp_path, frames=10, streams=("b",))
    stage.flush()
    progress.fps()
    progress._samples[-1] = (progress._samples[-1][0] - 2.0, 0)  # as if read 2 s ago, before any row
    assert progress.fps() == 5.0  # 10 frames in 2 s
    stage.on_stop()
    state = LiveState(progress)
    assert "log" in state.stats()["fps"]


def test_dashboard_uses_the_overlay_colours():
    assert COLOURS["happy"] in DASHBOARD and "__COLOURS__" not in DASHBOARD
