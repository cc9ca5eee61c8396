import time

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from pipeline.errors import SourceError
from pipeline.streaming.stage import StageContext
from stages.capture import Capture, CaptureParams, read_frames


def make_video(path, frames: int = 12, size=(64, 48), fps: float = 25.0) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    for i in range(frames):
        writer.write(np.full((size[1], size[0], 3), i * 20, np.uint8))
    writer.release()


def frames_of(tmp_path, pacing: str = "max", **params) -> tuple[Capture, list]:
    stage = Capture(CaptureParams(pacing=pacing, **params), name="capture", context=StageContext(out=str(tmp_path)))
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


@pytest.mark.parametrize("threads", [1, 2])
def test_files_are_decoded_on_the_threads_asked_for_with_the_same_frames(tmp_path, threads):
    make_video(tmp_path / "clip.mp4")
    stage = Capture(CaptureParams(source=str(tmp_path / "clip.mp4"), decode_threads=threads), name="capture")
    stage.on_start()
    try:
        assert stage._source.get(cv2.CAP_PROP_N_THREADS) == threads
        images = [m.image for m in stage.generate()]
    finally:
        stage.on_stop()
    _, default = frames_of(tmp_path, source=str(tmp_path / "clip.mp4"))
    assert len(images) == len(default) == 12 and all(np.array_equal(a, b.image) for a, b in zip(images, default))


def test_image_folder_skips_unreadable_files_and_names_each_frame(tmp_path):
    (tmp_path / "0.jpg").write_bytes(b"broken")
    for i in range(1, 4):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((10, 20, 3), i, np.uint8))
    _, msgs = frames_of(tmp_path, source=str(tmp_path), fps=10)
    assert len(msgs) == 3 and msgs[0].image.shape == (10, 20, 3)
    assert [m.meta["file"] for m in msgs] == ["1.png", "2.png", "3.png"]
    assert [m.media_ts for m in msgs] == pytest.approx([0.1, 0.2, 0.3])  # its place in the folder, at fps
    assert msgs[0].meta["kind"] == "folder" and msgs[0].meta["source"] == str(tmp_path.resolve())


def test_file_media_time_is_the_same_paced_and_as_fast_as_possible(tmp_path):
    make_video(tmp_path / "clip.mp4", frames=12, fps=25.0)
    _, fast = frames_of(tmp_path, source=str(tmp_path / "clip.mp4"))
    _, paced = frames_of(tmp_path, pacing="realtime", source=str(tmp_path / "clip.mp4"))
    assert [m.media_ts for m in fast] == pytest.approx([i / 25 for i in range(12)], abs=1e-3)
    assert [m.media_ts for m in paced] == [m.media_ts for m in fast]
    # The capture clock differs: paced frames are spread over the clip's 0.44 s, fast ones are not.
    assert paced[-1].ts - paced[0].ts > 0.35 > fast[-1].ts - fast[0].ts
    _, skipped = frames_of(tmp_path, source=str(tmp_path / "clip.mp4"), skip=2, max_frames=3)
    assert [m.media_ts for m in skipped] == pytest.approx([0, 0.12, 0.24], abs=1e-3)


class FakeCamera:
    """A live source: frames without a position of their own."""

    def read(self):
        return True, np.zeros((4, 4, 3), np.uint8)

    def get(self, prop):
        return 0.0


def test_live_media_time_is_the_time_since_the_run_started():
    frame = next(read_frames(FakeCamera(), 30.0, live_since=time.time() - 5.0))
    assert frame.media_ts == pytest.approx(5.0, abs=0.5)


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
