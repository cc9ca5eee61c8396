"""The Ray launcher on a real two-node Ray cluster (see conftest.py): the real clip end to end,
capture and classify pinned to different nodes, links between the nodes CurveZMQ (a packet
capture on the link finds no pixels, an intruder's key is refused), a stage scaled over both
nodes, an actor killed mid-run and restarted by Ray, a placement no node satisfies, Ctrl-C,
and the start-up overhead against the process launcher."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
import zmq.auth
from zmq.utils import z85

from pipeline.tools.netns import Host
from tests.cluster.conftest import RayCluster, start_compute_node
from tests.conftest import PYTHON, ROOT
from tests.netns import JFIF_START
from tests.test_integration import CLIP_FRAMES, check_outputs, video_frames, wait_for
from tests.test_netns import Capture, source_rows

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


def start_driver(cluster: RayCluster, *args: str, prefix: list[str] | None = None) -> subprocess.Popen:
    """``run_pipeline.py ARGS`` where it reaches the cluster (by default in the head node's namespace)."""
    return subprocess.Popen(
        [*(cluster.prefix if prefix is None else prefix), PYTHON, "run_pipeline.py", *args],
        cwd=ROOT,
        env={**os.environ, **cluster.env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def run_driver(cluster: RayCluster, *args: str, timeout: float = 240, prefix: list[str] | None = None) -> tuple[int, str]:
    proc = start_driver(cluster, *args, prefix=prefix)
    try:
        output, _ = proc.communicate(timeout=timeout)
    finally:
        proc.kill()
    return proc.returncode, output


def rest_of(proc: subprocess.Popen, timeout: float = 240) -> str:
    """The driver's output after ``wait_for`` until it exits (killed after ``timeout``).

    Unlike ``communicate(timeout=...)``, which reads the pipe itself, this keeps what ``readline``
    had already buffered: the lines right after the one waited for.
    """
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        rest = proc.stdout.read()
        proc.wait()
    finally:
        timer.cancel()
    return rest


def ray_run(cluster: RayCluster, video: Path, out: Path, *extra: str) -> list[str]:
    return ["run", "configs/ray.yaml", "--launcher", "ray", "--address", cluster.address,
            "--source", str(video), "--out", str(out), *extra]  # fmt: skip


def nodes_of(output: str) -> dict[str, str]:
    """Worker label -> the node address it last ran on, from the launcher's log."""
    return dict(re.findall(r"(\S+): running in process \d+ on node (\S+)", output))


def first_frame_s(output: str) -> float:
    return float(re.search(r"first frame out after ([\d.]+)s", output).group(1))


def curve_inputs(output: str) -> dict[str, int]:
    """Worker label -> the port of its input, for the inputs the launcher says are CurveZMQ."""
    return {w: int(port) for w, port in re.findall(r"(\S+): input at tcp://[\d.]+:(\d+) is CurveZMQ", output)}


def crossing(nodes: dict[str, str], consumer: str, producers: list[str]) -> bool:
    return any(nodes[p] != nodes[consumer] for p in producers)


PRODUCERS = {"detect": ["capture"], "segment": ["detect"], "classify": ["segment"], "track": ["classify"],
             "render": ["track"], "log": ["track"]}  # fmt: skip


def test_the_clip_runs_through_two_nodes_with_capture_and_classify_apart(ray_cluster, video, model_dir, tmp_path, figures):
    code, output = run_driver(ray_cluster, *ray_run(ray_cluster, video, tmp_path, "--set", "capture.pacing=max"))
    assert code == 0, output[-4000:]
    nodes = nodes_of(output)
    assert set(nodes) == {"capture", "detect", "segment", "classify", "track", "render", "log"}, output[-4000:]
    assert nodes["capture"] == ray_cluster.nodes["camera"]  # placement: camera (a custom resource)
    assert nodes["classify"] == ray_cluster.nodes["compute"]  # placement: role=compute (a label)
    # Every input fed from the other node is CurveZMQ (keys made for the run), the others ipc://.
    assert set(curve_inputs(output)) == {c for c, ps in PRODUCERS.items() if crossing(nodes, c, ps)} != set(), output[-4000:]
    assert "each worker's own, made on its node" in output and "plain tcp://" not in output
    check_outputs(tmp_path, video)
    assert re.search(r"^capture\s+1\s+0\s+464\b", output, re.M), output[-2000:]
    figures.append(f"clip through 2 Ray nodes: {CLIP_FRAMES} frames, first frame out after {first_frame_s(output)} s; "
                   f"nodes {nodes}; CurveZMQ inputs {sorted(curve_inputs(output))}")  # fmt: skip


def camera_host(cluster: RayCluster) -> Host:
    """The head node's namespace, as the netns tests' helpers see a host; its veth sees every packet between the nodes."""
    if not cluster.namespaces:
        pytest.skip("needs the nodes in network namespaces: a capture on their link")
    return Host(cluster.namespaces[0], cluster.nodes["camera"], f"{cluster.namespaces[0]}0")


def worker_secrets(since: float) -> list[bytes]:
    """The secret keys the workers of a run started after ``since`` made in their nodes' run folders."""
    files = Path(tempfile.gettempdir()).glob("emopipe-ray-*/*.key_secret")
    return [zmq.auth.load_certificate(f)[1] for f in files if f.stat().st_mtime >= since]


@pytest.mark.parametrize("secure", [True, False])
def test_the_link_between_nodes_shows_no_pixels_unless_insecure(secure, ray_cluster, video, model_dir, tmp_path, figures):
    """60 frames; the control run marks every stage insecure: true, and the same capture finds the pixels."""
    frames, sets = 60, ["--set", "capture.pacing=max", "--set", "capture.max_frames=60"]
    if not secure:
        sets += [arg for stage in PRODUCERS for arg in ("--set", f"{stage}.insecure=true")]
    since, lines = time.time(), []
    with Capture(camera_host(ray_cluster), tmp_path / "capture") as capture:
        proc = start_driver(ray_cluster, *ray_run(ray_cluster, video, tmp_path / "out", *sets))
        try:
            wait_for(proc, r"workers placed and their actors up", lines)
            secrets = worker_secrets(since)  # read from the nodes' run folders while they exist
            rest = rest_of(proc)
        finally:
            proc.kill()
    output = "".join(lines) + rest
    assert proc.returncode == 0, output[-4000:]
    with sqlite3.connect(tmp_path / "out" / "emotions.sqlite") as db:
        assert [r[0] for r in db.execute("SELECT frame FROM frames ORDER BY rowid")] == list(range(frames))
    wire = b"".join(f.read_bytes() for f in sorted((tmp_path / "capture").glob("*.bin")))  # every flow between the nodes
    ports = set(curve_inputs(output).values()) if secure else set(map(int, re.findall(r"at tcp://[\d.]+:(\d+) is plain", output)))
    frames_bytes = sum(len(capture.payload(port)) for port in ports)
    runs = source_rows(video, 10)
    pixels_seen, jpegs_seen = sum(run in wire for run in runs), wire.count(JFIF_START)
    figures.append(f"{'curve' if secure else 'plain'} links between Ray nodes: {frames_bytes / 1e6:.0f} MB of frames on "
                   f"the wire, {pixels_seen}/{len(runs)} pixel runs, {jpegs_seen} JPEG headers")  # fmt: skip
    links = "\n".join(line for line in output.splitlines() if "input at" in line)
    assert frames_bytes > 20_000_000, f"only {frames_bytes} bytes of frames captured to {ports}:\n{links}"  # 60 raw frames: 55 MB
    assert len(secrets) == 7 and not [k for k in secrets if k in wire or z85.decode(k) in wire]  # keys made on their node
    if secure:
        assert pixels_seen == 0 and jpegs_seen == 0
    else:
        assert pixels_seen >= 0.9 * len(runs), f"the capture missed plain pixels: {pixels_seen} of {len(runs)}"


def test_a_stage_scaled_over_both_nodes_delivers_every_frame_in_order(ray_cluster, video, model_dir, tmp_path, figures):
    code, output = run_driver(ray_cluster, *ray_run(ray_cluster, video, tmp_path, "--set", "capture.pacing=max",
                                                    "--set", "detect.workers=2"))  # fmt: skip
    assert code == 0, output[-4000:]
    nodes = nodes_of(output)
    assert {nodes["detect[0]"], nodes["detect[1]"]} == set(ray_cluster.nodes.values()), nodes  # spread: one on each
    away = next(w for w in ("detect[0]", "detect[1]") if nodes[w] != nodes["capture"])
    assert away in curve_inputs(output), output[-4000:]  # the detect worker away from capture: CurveZMQ
    check_outputs(tmp_path, video)  # all 464 frames, back in capture order
    figures.append(f"detect.workers=2 over 2 Ray nodes: {CLIP_FRAMES} frames in order; nodes {nodes}")


def intruders(cluster: RayCluster, endpoint: str, server_key: bytes, seconds: float) -> dict[str, subprocess.Popen]:
    """From the head node: one client with a key of its own (CurveZMQ) and one in plain ZeroMQ, pushing forged frames."""
    args = [*cluster.prefix, PYTHON, "-m", "tests.netns", "intrude", endpoint, str(seconds)]
    return {
        name: subprocess.Popen(args + extra, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for name, extra in (("curve", [f"--curve-server={server_key.decode()}"]), ("plain", []))  # a key may start with "-"
    }


def test_with_a_key_directory_an_unknown_key_gets_no_frame_in(ray_cluster, video, model_dir, tmp_path, figures):
    """``keys: DIR`` and a host per stage; classify on the compute node at a port the file gives."""
    if not ray_cluster.namespaces:
        pytest.skip("needs the nodes in network namespaces: the intruders reach classify from the other node")
    keys = tmp_path / "keys"
    for host in ("camera", "compute"):
        assert subprocess.run([PYTHON, "run_pipeline.py", "keys", "new", str(keys), host], cwd=ROOT, timeout=60).returncode == 0
    hosts = [arg for stage in PRODUCERS for arg in ("--set", f"{stage}.host=compute")]
    args = ray_run(ray_cluster, video, tmp_path / "out", "--set", f"keys={keys}", "--set", "capture.host=camera", *hosts,
                   "--set", "classify.endpoint=tcp://0.0.0.0:7601", "--set", "capture.max_frames=300")  # fmt: skip
    lines: list[str] = []
    outsiders: dict[str, subprocess.Popen] = {}
    with Capture(camera_host(ray_cluster), tmp_path / "capture"):
        proc = start_driver(ray_cluster, *args)  # paced in real time: 10 s
        try:
            wait_for(proc, r"classify: input at tcp://\S+:7601 is CurveZMQ, accepting the keys of compute", lines)
            server = zmq.auth.load_certificate(keys / "compute.key")[0]
            outsiders = intruders(ray_cluster, f"tcp://{ray_cluster.nodes['compute']}:7601", server, seconds=8)
            rest = rest_of(proc)
            results = {name: json.loads(p.communicate(timeout=60)[0].strip().splitlines()[-1]) for name, p in outsiders.items()}
        finally:
            for p in (proc, *outsiders.values()):
                p.kill()
    wire = b"".join(f.read_bytes() for f in sorted((tmp_path / "capture").glob("*.bin")))
    secret = zmq.auth.load_certificate(keys / "compute.key_secret")[1]
    figures.append(f"keys: DIR on Ray: the secret key of host compute seen on the wire (in Ray's start call): {secret in wire}; "
                   f"outsiders: {results}")  # fmt: skip
    output = "".join(lines) + rest
    assert proc.returncode == 0, output[-4000:]
    with sqlite3.connect(tmp_path / "out" / "emotions.sqlite") as db:  # no forged frame, no early end-of-stream
        assert [r[0] for r in db.execute("SELECT frame FROM frames ORDER BY rowid")] == list(range(300))
    assert all("HANDSHAKE_SUCCEEDED" not in r["events"] for r in results.values()), results
    assert "HANDSHAKE_FAILED_AUTH" in results["curve"]["events"], results  # it did reach classify's authenticator
    assert "classify: refused a peer with an unknown key" in output, output[-4000:]
    assert "malformed" not in output and "unknown or finished stream" not in output


def test_an_actor_killed_mid_run_is_restarted_by_ray_and_the_run_completes(ray_cluster, video, model_dir, tmp_path):
    proc = start_driver(ray_cluster, *ray_run(ray_cluster, video, tmp_path))  # paced in real time: 15 s
    lines: list[str] = []
    try:
        match = wait_for(proc, r"classify: running in process (\d+) on node (\S+)", lines)
        pid, node = int(match.group(1)), match.group(2)
        wait_for(proc, r"capture: running in process", lines)
        time.sleep(5)  # a third into the clip
        os.kill(pid, signal.SIGKILL)
        rest, _ = proc.communicate(timeout=240)
    finally:
        proc.kill()
    output = "".join(lines) + rest
    assert proc.returncode == 0, output[-4000:]
    assert re.search(r"classify\[0\] crashed \(its actor's process died; Ray restarted the actor\); restarting \(1/3\)",
                     output), output[-4000:]  # fmt: skip
    again = re.findall(r"classify: running in process (\d+) on node (\S+)", output)
    assert len(again) == 2 and int(again[1][0]) != pid and again[1][1] == node, again  # a new process, on the same node
    with sqlite3.connect(tmp_path / "emotions.sqlite") as db:
        logged = [r[0] for r in db.execute("SELECT frame FROM frames ORDER BY rowid")]
    assert logged == sorted(set(logged)), "frames logged twice or out of order"
    assert len(logged) >= CLIP_FRAMES - 12  # at most the frames in flight at the killed worker
    assert len(video_frames(tmp_path / "annotated.mp4")) >= CLIP_FRAMES - 12


def test_a_placement_no_node_satisfies_is_reported_by_stage_name(ray_cluster, tmp_path, model_dir):
    code, output = run_driver(
        ray_cluster, "run", "configs/ray.yaml", "--launcher", "ray", "--address", ray_cluster.address,
        "--out", str(tmp_path), "--set", "classify.placement=gpu", timeout=120,
    )  # fmt: skip
    assert code == 2, output[-3000:]
    assert "error: stages[3] (classify).placement: no node of the Ray cluster has resource 'gpu'" in output, output[-3000:]


def test_ctrl_c_stops_the_run_and_its_actors(ray_cluster, video, model_dir, tmp_path):
    proc = start_driver(ray_cluster, *ray_run(ray_cluster, video, tmp_path))
    lines: list[str] = []
    try:
        wait_for(proc, r"capture: running in process", lines)
        time.sleep(4)
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    output = "".join(lines) + rest
    assert proc.returncode == 130, output[-4000:]
    pids = [int(p) for p in re.findall(r"running in process (\d+)", output)]
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{p}").exists() for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p for p in pids if Path(f"/proc/{p}").exists()], "actors outlived the run"
    logged_in = int(re.search(r"^log\s+1\s+(\d+)", output, re.M).group(1))
    with sqlite3.connect(tmp_path / "emotions.sqlite") as db:
        assert 0 < db.execute("SELECT COUNT(*) FROM frames").fetchone()[0] == logged_in < CLIP_FRAMES  # sinks flushed


def test_start_up_overhead_against_the_process_launcher(ray_cluster, video, model_dir, tmp_path, figures):
    """Time to the first frame out of a sink: the same YAML and 30 frames, the two launchers alternating twice."""
    short = ["--set", "capture.pacing=max", "--set", "capture.max_frames=30"]
    ray_s, process_s, placed = [], [], []
    for attempt in range(2):
        code, output = run_driver(ray_cluster, *ray_run(ray_cluster, video, tmp_path / f"ray{attempt}", *short))
        assert code == 0, output[-3000:]
        ray_s.append(first_frame_s(output))
        placed.append(float(re.search(r"placed and their actors up in ([\d.]+) s", output).group(1)))
        local = subprocess.run(
            [PYTHON, "run_pipeline.py", "run", "configs/ray.yaml", "--source", str(video), "--out", str(tmp_path / f"p{attempt}"),
             *short], cwd=ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert local.returncode == 0, local.stderr[-3000:]
        process_s.append(first_frame_s(local.stdout))
    overhead = sum(ray_s) / 2 - sum(process_s) / 2
    figures.append(f"first frame out: Ray launcher {ray_s} s (of which actors placed and up {placed} s), "
                   f"process launcher {process_s} s: overhead {overhead:+.1f} s on average")  # fmt: skip
    assert overhead < 30


def client_server_logs(cluster: RayCluster) -> str:
    """The tails of the head node's Ray Client server logs, to tell why a Ray Client driver failed."""
    logs = sorted((cluster.folder / "head").glob("session_2*/logs/ray_client_server*"))  # not session_latest: the same
    return "".join(f"\n--- {path.name}:\n{path.read_text(errors='replace')[-1500:]}" for path in logs)


def test_a_driver_through_ray_client_ships_the_checkout_and_runs_the_same(ray_cluster, video, model_dir, tmp_path):
    """``--address ray://HEAD:10001`` from the other node: Ray Client, the checkout sent as Ray's working_dir."""
    args = ray_run(ray_cluster, video, tmp_path, "--set", "capture.pacing=max", "--set", "capture.max_frames=30")
    args[args.index("--address") + 1] = ray_cluster.client
    code, output = run_driver(ray_cluster, *args, prefix=ray_cluster.client_prefix)
    assert code == 0, output[-4000:] + client_server_logs(ray_cluster)
    assert nodes_of(output)["capture"] == ray_cluster.nodes["camera"]
    assert "sending this checkout" in output and "as Ray's working_dir" in output
    with sqlite3.connect(tmp_path / "emotions.sqlite") as db:
        assert [r[0] for r in db.execute("SELECT frame FROM frames ORDER BY rowid")] == list(range(30))


def test_a_lost_node_stops_the_run_naming_it(ray_cluster, video, model_dir, tmp_path):
    """Every process of the compute node killed mid-run (last: it restarts that node afterwards)."""
    if not ray_cluster.namespaces:
        pytest.skip("needs the nodes in network namespaces: without them the node's processes cannot be told apart")
    proc = start_driver(ray_cluster, *ray_run(ray_cluster, video, tmp_path))
    lines: list[str] = []
    compute = ray_cluster.namespaces[1]
    try:
        wait_for(proc, r"capture: running in process", lines)
        time.sleep(3)
        for pid in subprocess.run(["ip", "netns", "pids", compute], capture_output=True, text=True).stdout.split():
            os.kill(int(pid), signal.SIGKILL)
        rest, _ = proc.communicate(timeout=180)
    finally:
        proc.kill()
        start_compute_node(ray_cluster, ray_cluster.client_prefix)
    output = "".join(lines) + rest
    assert proc.returncode == 1, output[-4000:]
    assert re.search(rf"lost: \S+: its node {re.escape(ray_cluster.nodes['compute'])} was lost", output), output[-4000:]
