"""Two halves of configs/distributed.yaml on separate network hosts (namespaces joined by veth).

The camera host (10.77.1.1) runs capture and detect, the compute host (10.77.1.2) the rest;
an outsider (10.77.2.1) reaches the compute host over its own link. A raw packet capture on
the camera host's link shows what travels on the wire.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import cv2
import pytest

from pipeline.tools.netns import Host, netns_unavailable, network
from tests.conftest import PYTHON, ROOT
from tests.netns import JFIF_START
from tests.test_integration import check_outputs, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.netns]

SEGMENT_PORT = 5556  # configs/distributed.yaml
COMPUTE_STAGES = "segment,classify,track,render,log"


@pytest.fixture(scope="module")
def hosts() -> Iterator[dict[str, Host]]:
    reason = netns_unavailable()
    if reason:
        print(f"skipping network-namespace tests: {reason}")
        pytest.skip(reason)
    with network(str(os.getpid())) as made:
        yield made


@pytest.fixture
def keys(tmp_path) -> dict[str, Path]:
    """Each host's key directory: its own pair and the other host's public key, as the README says."""
    dirs = {host: tmp_path / f"{host}-keys" for host in ("camera", "compute")}
    for host, folder in dirs.items():
        made = subprocess.run([PYTHON, "run_pipeline.py", "keys", "new", str(folder), host], cwd=ROOT, timeout=60)
        assert made.returncode == 0
    shutil.copy(dirs["camera"] / "camera.key", dirs["compute"])
    shutil.copy(dirs["compute"] / "compute.key", dirs["camera"])
    return dirs


def start(host: Host, *args: str) -> subprocess.Popen:
    return subprocess.Popen(host.command(PYTHON, *args), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run_halves(hosts, keys, out: Path, video: Path, *sets: str, during=contextlib.nullcontext) -> tuple[str, str]:
    """Start the compute half, then (within ``during()``) the camera half; return both outputs."""
    common = [arg for s in sets for arg in ("--set", s)]
    compute = start(hosts["compute"], "run_pipeline.py", "run", "configs/distributed.yaml", "--stages", COMPUTE_STAGES,
                    "--out", str(out), "--set", f"keys={keys['compute']}", *common)  # fmt: skip
    camera = None
    lines: list[str] = []
    try:
        wait_for(compute, r"segment: started", lines, timeout=120)
        with during():
            camera = start(hosts["camera"], "run_pipeline.py", "run", "configs/distributed.yaml", "--stages",
                           "capture,detect", "--source", str(video), "--out", str(out / "camera"),
                           "--set", f"keys={keys['camera']}", "--set", f"segment.endpoint=tcp://10.77.1.2:{SEGMENT_PORT}",
                           "--set", "capture.pacing=max", *common)  # fmt: skip
            camera_out, _ = camera.communicate(timeout=300)
            compute_rest, _ = compute.communicate(timeout=120)
    finally:
        for proc in (camera, compute):
            if proc is not None:
                proc.kill()
    compute_out = "".join(lines) + compute_rest
    assert camera.returncode == 0, camera_out[-3000:]
    assert compute.returncode == 0, compute_out[-3000:]
    return camera_out, compute_out


class Capture:
    """A raw packet capture on a host's link for the duration of a ``with`` block."""

    def __init__(self, host: Host, folder: Path):
        self.host, self.folder = host, folder

    def __enter__(self) -> Capture:
        self.proc = start(self.host, "-m", "tests.netns", "capture", self.host.device, str(self.folder))
        wait_for(self.proc, r"^ready", [], timeout=30)
        return self

    def __exit__(self, *exc) -> bool:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.communicate(timeout=60)
        finally:
            self.proc.kill()
        return False

    def payload(self, port: int) -> bytes:
        """Everything sent to ``port``, flow by flow."""
        return b"".join(p.read_bytes() for p in sorted(self.folder.glob(f"*-*.{port}.bin")))


class Intruders:
    """Two outsiders pushing forged frames and end-of-stream at the compute host: one with a key
    of its own (CurveZMQ), one in plain ZeroMQ."""

    def __init__(self, host: Host, server_key: bytes, seconds: float):
        self.host, self.server_key, self.seconds = host, server_key, seconds
        self.results: dict[str, dict] = {}

    def __enter__(self) -> Intruders:
        args = ["-m", "tests.netns", "intrude", f"tcp://10.77.2.2:{SEGMENT_PORT}", str(self.seconds)]
        self.procs = {
            "curve": start(self.host, *args, f"--curve-server={self.server_key.decode()}"),  # a key may start with "-"
            "plain": start(self.host, *args),
        }
        return self

    def __exit__(self, *exc) -> bool:
        outputs = {}
        try:
            for name, proc in self.procs.items():
                outputs[name], _ = proc.communicate(timeout=self.seconds + 60)
        finally:  # none may outlive the test: a plain intruder would feed the next test's insecure stage
            for proc in self.procs.values():
                proc.kill()
        for name, out in outputs.items():
            last = out.strip().splitlines()[-1:] or [""]
            assert self.procs[name].returncode == 0 and last[0].startswith("{"), f"intruder {name!r} failed: {out[-2000:]}"
            self.results[name] = json.loads(last[0])
        return False


def public_key(folder: Path, name: str) -> bytes:
    import zmq.auth

    return zmq.auth.load_certificate(folder / f"{name}.key")[0]


def test_the_clip_crosses_hosts_encrypted_and_an_outsider_is_refused(hosts, keys, video, model_dir, tmp_path):
    capture = Capture(hosts["camera"], tmp_path / "capture")
    intruders = Intruders(hosts["outsider"], public_key(keys["compute"], "compute"), seconds=25)

    @contextlib.contextmanager
    def during() -> Iterator[None]:
        with capture, intruders:  # both run while the camera half sends the clip
            yield

    _, compute_out = run_halves(hosts, keys, tmp_path / "out", video, during=during)
    check_outputs(tmp_path / "out", video)  # every frame, in order: no forged frame, no early end-of-stream
    for name, result in intruders.results.items():
        assert "HANDSHAKE_SUCCEEDED" not in result["events"], (name, result)
    assert "HANDSHAKE_FAILED_AUTH" in intruders.results["curve"]["events"], intruders.results  # it did reach segment
    assert all(r["attempts"] >= 5 for r in intruders.results.values()), intruders.results  # throughout the run
    assert "segment: refused a peer with an unknown key" in compute_out
    assert "malformed" not in compute_out and "unknown or finished stream" not in compute_out
    wire = capture.payload(SEGMENT_PORT)
    print(f"outsiders: {intruders.results}; {len(wire)} bytes to segment on the wire")
    assert len(wire) > 2_000_000, f"only {len(wire)} bytes captured"  # the frames did cross this link
    assert JFIF_START not in wire


def source_rows(video: Path, frames: int) -> list[bytes]:
    """64-byte runs of pixels from the middle rows of the first frames, as raw BGR on the wire."""
    cap = cv2.VideoCapture(str(video))
    runs = []
    for _ in range(frames):
        ok, frame = cap.read()
        assert ok
        h, w = frame.shape[:2]
        runs += [frame[y, w // 3 : w // 3 + 22].tobytes()[:64] for y in range(h // 4, 3 * h // 4, h // 8)]
    cap.release()
    return runs


@pytest.mark.parametrize(("codec", "secure"), [("raw", True), ("raw", False), ("jpeg", False)])
def test_the_wire_shows_pixels_and_jpeg_only_without_curve(codec, secure, hosts, keys, video, model_dir, tmp_path):
    frames = 60
    sets = [f"capture.max_frames={frames}", f"segment.inputs=[{{from: detect, codec: {codec}}}]"]
    if not secure:
        sets.append("segment.insecure=true")
    with Capture(hosts["camera"], tmp_path / "capture") as capture:
        run_halves(hosts, keys, tmp_path / "out", video, *sets)
    with sqlite3.connect(tmp_path / "out" / "emotions.sqlite") as db:
        assert [r[0] for r in db.execute("SELECT frame FROM frames ORDER BY rowid")] == list(range(frames))
    wire = capture.payload(SEGMENT_PORT)
    runs = source_rows(video, 10)
    pixels_seen = sum(run in wire for run in runs)
    jpegs_seen = wire.count(JFIF_START)
    label = f"{codec} {'curve' if secure else 'plain'}"
    print(f"{label}: {len(wire)} bytes, {pixels_seen}/{len(runs)} pixel runs, {jpegs_seen} JPEG headers")
    if secure:
        assert pixels_seen == 0 and jpegs_seen == 0
    elif codec == "raw":
        assert pixels_seen >= 0.9 * len(runs), f"the capture missed plain pixels: {pixels_seen} of {len(runs)}"
    else:
        assert jpegs_seen >= 0.9 * frames, f"the capture missed plain JPEG frames: {jpegs_seen} of {frames}"
