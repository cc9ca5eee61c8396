"""Faults injected into the real pipeline on the real clip: killed stages, a killed launcher, signals,
hostile messages, a locked database, a full disk, broken inputs. Each test asserts the figures
(frames and rows lost, duplicates, crashes, exit code, leftovers) and prints them."""

from __future__ import annotations

import os
import random
import re
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import cv2
import msgpack
import pytest
import zmq

import pipeline.vision.record  # noqa: F401 - registers the faces field, as the stages do
from pipeline.errors import MessageError
from pipeline.streaming import shm
from pipeline.streaming.message import FORMAT_VERSION, decode
from tests.conftest import PYTHON, ROOT
from tests.faults.messages import random_message
from tests.test_integration import CLIP_FRAMES, start_cli, video_frames, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.faults]

# Frames a killed worker may take with it: those queued for it and the one it was processing.
# Frames move between processes on this machine as references to the source's shared-memory
# ring of 32 slots, which holds the source back when full: that bounds the frames in flight.
IN_FLIGHT = 34


def cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "run_pipeline.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def run_to_end(proc: subprocess.Popen, lines: list[str], timeout: float = 240) -> str:
    try:
        rest, _ = proc.communicate(timeout=timeout)
    finally:
        proc.kill()
    return "".join(lines) + rest


def logged_frames(out: Path) -> list[int]:
    with sqlite3.connect(out / "emotions.sqlite") as db:
        return [r[0] for r in db.execute("SELECT frame FROM frames ORDER BY rowid")]


def leftovers(pids: list[int]) -> list[str]:
    rings = [p.name for pid in pids for p in shm.ROOT.glob(f"{shm.PREFIX}{pid}-*")]
    return rings


def started_pids(output: str) -> list[int]:
    return [int(p) for p in re.findall(r"started in process (\d+)", output)]


@pytest.mark.parametrize("stage", ["capture", "detect", "segment", "classify", "track", "render", "log"])
def test_a_killed_stage_is_restarted_and_loses_at_most_its_frames_in_flight(stage, video, model_dir, tmp_path, figures):
    proc = start_cli("run", "configs/local.yaml", "--source", str(video), "--out", str(tmp_path))
    lines: list[str] = []
    pid = int(wait_for(proc, rf"{stage}: started in process (\d+)", lines).group(1))
    if stage != "capture":  # the source starts last, once everything downstream is ready
        wait_for(proc, r"capture: started", lines)
    time.sleep(5)  # a third into the clip, paced in real time
    os.kill(pid, signal.SIGKILL)
    output = run_to_end(proc, lines)
    logged = logged_frames(tmp_path)
    rendered = len(video_frames(tmp_path / "annotated.mp4"))
    # The log commits every second: rows it received but had not committed die with it.
    window = IN_FLIGHT + (35 if stage == "log" else 0) + (65 if stage == "render" else 0)
    duplicates, lost = len(logged) - len(set(logged)), CLIP_FRAMES - min(len(set(logged)), rendered)
    figures.append(f"SIGKILL {stage}: exit {proc.returncode}; log {len(logged)} frames ({duplicates} duplicates); "
                   f"video {rendered} frames; lost at most {lost}")  # fmt: skip
    assert proc.returncode == 0, output[-3000:]
    assert re.search(rf"{stage}\[0\] crashed \(exit -9\); restarting \(1/3\)", output), output[-3000:]
    assert len(logged) == len(set(logged)), "duplicated frames in the log"
    assert logged == sorted(logged), "frames logged out of order"
    assert CLIP_FRAMES - window <= len(logged) <= CLIP_FRAMES
    assert CLIP_FRAMES - window <= rendered <= CLIP_FRAMES
    assert not leftovers(started_pids(output))


def test_past_the_restart_limit_the_run_fails_and_says_why(video, model_dir, tmp_path):
    proc = start_cli("run", "configs/local.yaml", "--source", str(video), "--out", str(tmp_path), "--max-restarts", "0")
    lines: list[str] = []
    pid = int(wait_for(proc, r"classify: started in process (\d+)", lines).group(1))
    wait_for(proc, r"capture: started", lines)
    time.sleep(3)
    os.kill(pid, signal.SIGKILL)
    output = run_to_end(proc, lines, timeout=60)
    assert proc.returncode == 1, output[-3000:]
    assert "lost: classify[0]: crashed more than --max-restarts 0 times" in output
    assert not leftovers(started_pids(output))


# pacing max: the source runs ahead, so workers are caught waiting for a full ring or a full queue of a
# consumer that has already left (those waits once ran to their 30 s and 60 s bounds).
@pytest.mark.parametrize("pacing", ["realtime", "max"])
def test_a_killed_launcher_takes_its_workers_and_leaves_nothing_behind(pacing, video, model_dir, tmp_path):
    proc = start_cli(
        "run", "configs/local.yaml", "--source", str(video), "--out", str(tmp_path), "--set", f"capture.pacing={pacing}"
    )
    lines: list[str] = []
    wait_for(proc, r"capture: started", lines)
    time.sleep(3)
    proc.kill()
    t0, pids = time.monotonic(), started_pids("".join(lines))
    try:
        proc.communicate(timeout=30)  # EOF once every worker, holding the launcher's stdout, has exited
    except subprocess.TimeoutExpired:
        for pid in filter(_alive, pids):  # not into the next tests
            os.kill(pid, signal.SIGKILL)
        pytest.fail("workers still running 30 s after their launcher was killed")
    print(f"launcher killed: its workers gone after {time.monotonic() - t0:.1f} s")
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(p) for p in pids), "workers outlived their launcher"
    stale = list(Path("/tmp").glob(f"emopipe-{proc.pid}-*"))
    # The next run removes the socket folder a killed launcher left, and workers remove their rings.
    cli("run", "configs/local.yaml", "--source", str(video), "--out", str(tmp_path / "2"), "--set", "capture.max_frames=5")
    assert not any(p.exists() for p in stale)
    assert not leftovers(pids)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"  # a zombie has exited


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_the_run_and_keeps_every_row_received(sig, code, video, model_dir, tmp_path):
    proc = start_cli("run", "configs/local.yaml", "--source", str(video), "--out", str(tmp_path))
    lines: list[str] = []
    wait_for(proc, r"capture: started", lines)
    time.sleep(5)
    proc.send_signal(sig)
    output = run_to_end(proc, lines, timeout=60)
    assert proc.returncode == code, output[-3000:]
    logged_in = int(re.search(r"^log\s+1\s+(\d+)", output, re.M).group(1))
    assert len(logged_frames(tmp_path)) == logged_in > 30


def fuzz_stage(runtime: Path, stage: str, count: int, seed: int) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDTIMEO, 30_000)
    sock.connect(f"ipc://{runtime / stage}")
    rng = random.Random(seed)
    try:
        sent = 0
        while sent < count:
            frames = random_message(rng)
            if _decodes(frames):  # a well-formed frame is an injected one: what CurveZMQ keeps out between machines
                continue
            sock.send_multipart(frames)
            sent += 1
    finally:
        sock.close(linger=5000)
        ctx.term()


def _decodes(frames: list[bytes]) -> bool:
    try:
        decode(frames)
    except MessageError:
        return False
    return True


def test_ten_thousand_hostile_messages_per_stage_type_crash_nothing_and_lose_no_frame(video, model_dir, tmp_path, figures):
    runtime = tmp_path / "runtime"
    # Paced at 10 fps (46 s) so that the clip is still flowing while the messages arrive.
    proc = start_cli("run", "configs/local.yaml", "--source", str(video), "--out", str(tmp_path), "--runtime-dir", str(runtime),
                     "--set", "capture.fps=10")  # fmt: skip
    lines: list[str] = []
    wait_for(proc, r"capture: started", lines)
    stages = ["detect", "segment", "classify", "track", "render", "log"]
    senders = [threading.Thread(target=fuzz_stage, args=(runtime, stage, 10_000, i)) for i, stage in enumerate(stages)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join()
    output = run_to_end(proc, lines, timeout=300)
    refused = {s: int(re.search(rf"^{s}\s+(?:\S+\s+){{5}}(\d+)", output, re.M).group(1)) for s in stages}
    figures.append(f"10,000 hostile messages to each of {', '.join(stages)}: refused {refused}; exit {proc.returncode}")
    assert proc.returncode == 0, output[-3000:]
    assert "crashed" not in output
    assert logged_frames(tmp_path) == list(range(CLIP_FRAMES)), "real frames were lost or duplicated"
    assert len(video_frames(tmp_path / "annotated.mp4")) == CLIP_FRAMES


def test_an_end_of_stream_from_no_producer_is_ignored(video, model_dir, tmp_path):
    runtime = tmp_path / "runtime"
    proc = start_cli("run", "configs/local.yaml", "--source", str(video), "--out", str(tmp_path), "--runtime-dir", str(runtime))
    lines: list[str] = []
    wait_for(proc, r"capture: started", lines)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.connect(f"ipc://{runtime / 'segment'}")
    forged = {
        "v": FORMAT_VERSION,
        "kind": "eos",
        "stream": "capture",
        "seq": 3,
        "ts": 0.0,
        "media_ts": 0.0,
        "meta": {"from": "intruder:0"},
    }
    sock.send_multipart([msgpack.packb(forged)])
    sock.close(linger=2000)
    ctx.term()
    output = run_to_end(proc, lines)
    assert proc.returncode == 0, output[-3000:]
    assert "end-of-stream of 'capture' from 'intruder:0' ignored" in output
    assert logged_frames(tmp_path) == list(range(CLIP_FRAMES))


def test_a_database_locked_across_the_end_of_the_clip_loses_no_row(video, model_dir, tmp_path):
    proc = start_cli("run", "configs/local.yaml", "--source", str(video), "--out", str(tmp_path))
    lines: list[str] = []
    wait_for(proc, r"capture: started", lines)
    time.sleep(9)
    with sqlite3.connect(tmp_path / "emotions.sqlite", timeout=30) as db:
        db.execute("BEGIN EXCLUSIVE")  # held over the end of the clip (about 15.5 s in)
        time.sleep(12)
        db.rollback()
    output = run_to_end(proc, lines)
    assert proc.returncode == 0, output[-3000:]
    assert logged_frames(tmp_path) == list(range(CLIP_FRAMES))
    assert re.search(r"^render\s+1\s+464\s+", output, re.M), "frames were dropped while the database was locked"


def test_a_full_disk_ends_non_zero_and_says_what_was_lost(video, model_dir, tmp_path, figures):
    out = tmp_path / "small"
    out.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(out)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        proc = start_cli("run", "configs/local.yaml", "--source", str(video), "--out", str(out), "--set", "capture.pacing=max")
        output = run_to_end(proc, [], timeout=240)
    finally:
        subprocess.run(["umount", "-l", str(out)], capture_output=True)
    figures.append(f"full disk: exit {proc.returncode}; " + "; ".join(re.findall(r"^lost: .*$", output, re.M)))
    assert proc.returncode == 1, output[-3000:]
    # Which sink hits the limit first depends on timing: the video, the log, or both.
    assert re.search(r"^lost: (log: \d+ rows not written|render: .*annotated.mp4 not finished)", output, re.M), output[-3000:]


def test_a_damaged_video_ends_non_zero_naming_the_frame(video, model_dir, tmp_path):
    # An AVI cut in half: its header still announces 464 frames, the data stops in the middle.
    damaged = tmp_path / "damaged.avi"
    reader, writer = cv2.VideoCapture(str(video)), None
    while (frame := reader.read()[1]) is not None:
        writer = writer or cv2.VideoWriter(str(damaged), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, frame.shape[1::-1])
        writer.write(frame)
    writer.release()
    data = damaged.read_bytes()
    damaged.write_bytes(data[: len(data) // 2])
    result = cli(
        "run", "configs/local.yaml", "--source", str(damaged), "--out", str(tmp_path / "out"), "--set", "capture.pacing=max"
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert re.search(r"lost: capture: .*damaged.avi: stopped at frame \d+ of 464", result.stderr), result.stderr[-3000:]


def test_a_folder_of_unreadable_images_ends_non_zero(model_dir, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.jpg").write_bytes(b"not a jpeg")
    result = cli("run", "configs/local.yaml", "--source", str(folder), "--out", str(tmp_path / "out"))
    assert result.returncode == 1, result.stderr[-3000:]
    assert "lost: capture: 3 unreadable images skipped" in result.stderr


def test_a_codec_that_cannot_be_written_is_refused_at_start(video, model_dir, tmp_path):
    result = cli("run", "configs/local.yaml", "--source", str(video), "--out", str(tmp_path), "--set", "render.codec=zzzz")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "render.codec: cannot write 'zzzz' videos" in result.stderr
    assert result.stderr.count("Traceback") == 0
