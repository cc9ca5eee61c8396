import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from pipeline.errors import SourceError
from stages.capture import Capture, CaptureParams


def make_video(path, frames: int = 12, size=(64, 48), fps: float = 25.0) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    for i in range(frames):
        writer.write(np.full((size[1], size[0], 3), i * 20, np.uint8))
    writer.release()


def frames_of(tmp_path, **params) -> tuple[Capture, list]:
    stage = Capture(CaptureParams(pacing="max", **params), name="capture", context={"out": str(tmp_path)})
    stage.on_start()
    try:
        return stage, list(stage.generate())
    finally:
        stage.on_stop()


def test_video_file_with_its_fps_resize_skip_and_limit(tmp_path):
    make_video(tmp_path / "clip.mp4")
    stage, msgs = frames_of(tmp_path, source=str(tmp_path / "clip.mp4"))
    assert len(msgs) == 12 and stage.fps == pytest.approx(25.0)
    assert msgs[0].image.shape == (48, 64, 3) and msgs[0].meta["fps"] == pytest.approx(25.0)
    _, msgs = frames_of(tmp_path, source=str(tmp_path / "clip.mp4"), width=32, skip=2, max_frames=3)
    assert len(msgs) == 3 and msgs[0].image.shape == (24, 32, 3)
    assert msgs[0].meta["fps"] == pytest.approx(25.0 / 3)
    # Frames 0, 3, 6 were kept: brightness 0, 60, 120 (give or take the codec).
    assert [int(m.image.mean()) // 10 for m in msgs] == pytest.approx([0, 6, 12], abs=1)


def test_image_folder_skips_unreadable_files(tmp_path):
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((10, 20, 3), i, np.uint8))
    (tmp_path / "3.jpg").write_bytes(b"broken")
    _, msgs = frames_of(tmp_path, source=str(tmp_path))
    assert len(msgs) == 3 and msgs[0].image.shape == (10, 20, 3)


def test_loop_restarts_a_file(tmp_path):
    make_video(tmp_path / "clip.mp4", frames=5)
    _, msgs = frames_of(tmp_path, source=str(tmp_path / "clip.mp4"), loop=True, max_frames=12)
    assert len(msgs) == 12


def test_missing_file_is_refused_by_validation(tmp_path):
    with pytest.raises(ValidationError, match="no such file or folder"):
        CaptureParams(source=str(tmp_path / "missing.mp4"))


def test_unopenable_source_is_a_source_error(tmp_path):
    (tmp_path / "not-a-video.mp4").write_bytes(b"garbage")
    stage = Capture(CaptureParams(source=str(tmp_path / "not-a-video.mp4")), name="capture")
    with pytest.raises(SourceError, match="cannot open video source"):
        stage.on_start()


def test_empty_folder_is_a_source_error(tmp_path):
    stage = Capture(CaptureParams(source=str(tmp_path)), name="capture")
    with pytest.raises(SourceError, match="folder has no images"):
        stage.on_start()
