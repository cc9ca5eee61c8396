"""The Ray launcher on a real two-node Ray cluster (see conftest.py): the real clip end to end,
capture and classify pinned to different nodes, an actor killed mid-run and restarted by Ray,
a placement no node satisfies, Ctrl-C, and the start-up overhead against the process launcher."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from tests.cluster.conftest import RayCluster, start_compute_node
from tests.conftest import PYTHON, ROOT
from tests.test_integration import CLIP_FRAMES, check_outputs, video_frames, wait_for

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


def ray_run(cluster: RayCluster, video: Path, out: Path, *extra: str) -> list[str]:
    return ["run", "configs/ray.yaml", "--launcher", "ray", "--address", cluster.address,
            "--source", str(video), "--out", str(out), *extra]  # fmt: skip


def nodes_of(output: str) -> dict[str, str]:
    """Worker label -> the node address it last ran on, from the launcher's log."""
    return dict(re.findall(r"(\S+): running in process \d+ on node (\S+)", output))


def first_frame_s(output: str) -> float:
    return float(re.search(r"first frame out after ([\d.]+)s", output).group(1))


def test_the_clip_runs_through_two_nodes_with_capture_and_classify_apart(ray_cluster, video, model_dir, tmp_path, figures):
    code, output = run_driver(ray_cluster, *ray_run(ray_cluster, video, tmp_path, "--set", "capture.pacing=max"))
    assert code == 0, output[-4000:]
    nodes = nodes_of(output)
    assert set(nodes) == {"capture", "detect", "segment", "classify", "track", "render", "log"}, output[-4000:]
    assert nodes["capture"] == ray_cluster.nodes["camera"]  # placement: camera (a custom resource)
    assert nodes["classify"] == ray_cluster.nodes["compute"]  # placement: role=compute (a label)
    check_outputs(tmp_path, video)
    assert re.search(r"^capture\s+1\s+0\s+464\b", output, re.M), output[-2000:]
    figures.append(f"clip through 2 Ray nodes: {CLIP_FRAMES} frames, first frame out after {first_frame_s(output)} s; "
                   f"nodes {nodes}")  # fmt: skip


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


def test_a_driver_through_ray_client_ships_the_checkout_and_runs_the_same(ray_cluster, video, model_dir, tmp_path):
    """``--address ray://HEAD:10001`` from the other node: Ray Client, the checkout sent as Ray's working_dir."""
    args = ray_run(ray_cluster, video, tmp_path, "--set", "capture.pacing=max", "--set", "capture.max_frames=30")
    args[args.index("--address") + 1] = ray_cluster.client
    code, output = run_driver(ray_cluster, *args, prefix=ray_cluster.client_prefix)
    assert code == 0, output[-4000:]
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
