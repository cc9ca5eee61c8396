"""Throughput and latency of the two-host recipe across a real network link, with and without CurveZMQ.

Root only: the two hosts are network namespaces on this machine joined by a veth pair
(``pipeline.tools.netns``), so both share its CPU cores and clock. The camera half
(capture, detect) runs in one, the compute half in the other, as ``configs/distributed.yaml``
says; the frames cross the veth raw or as JPEG, in CurveZMQ or in plain ZeroMQ. Each variant
runs as fast as possible (frames/s) and paced (latency; ``--fps``, default the clip's rate); variants
alternate, ``--repeats`` times, and medians are reported.

    python -m pipeline.tools.netbench --source ../shared/data/video/woman2.mp4 --repeats 3 --fps 15

Frames are resized to 640 pixels wide by default (``--width``), the size the target is set for.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pipeline.streaming.keys import new_key_pair
from pipeline.tools.netns import Host, netns_unavailable, network

CONFIG = "configs/distributed.yaml"
CAMERA_STAGES, COMPUTE_STAGES = "capture,detect", "segment,classify,track,render,log"
VARIANTS = [(codec, curve) for codec in ("jpeg", "raw") for curve in (True, False)]
START_TIMEOUT_S = 120
RUN_TIMEOUT_S = 600


def _keys(folder: Path) -> dict[str, Path]:
    """Each host's key directory, holding its own pair and the other's public key."""
    dirs = {host: folder / host for host in ("camera", "compute")}
    for host, path in dirs.items():
        new_key_pair(path, host)
    shutil.copy(dirs["camera"] / "camera.key", dirs["compute"])
    shutil.copy(dirs["compute"] / "compute.key", dirs["camera"])
    return dirs


def _tx_bytes(host: Host) -> int:
    path = f"/sys/class/net/{host.device}/statistics/tx_bytes"
    return int(subprocess.run(host.command("cat", path), capture_output=True, text=True, check=True).stdout)


def _half(host: Host, stages: str, sets: list[str], out: Path) -> subprocess.Popen:
    args = [sys.executable, "-m", "pipeline.tools.netbench", "half", stages, str(out)]
    args += [arg for s in sets for arg in ("--set", s)]
    return subprocess.Popen(host.command(*args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_started(proc: subprocess.Popen, stage: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        if re.search(rf"{stage}: started", line):
            return
    raise RuntimeError(f"{stage} did not start within {START_TIMEOUT_S} s")


def one_run(hosts: dict[str, Host], keys: dict[str, Path], work: Path, variant: tuple[str, bool], sets: list[str]) -> dict:
    """One run of the two halves; the compute half's sink figures, both halves' CPU, bytes on the wire."""
    codec, curve = variant
    sets = [
        *sets,
        f"segment.endpoint=tcp://{hosts['compute'].address}:5556",
        f"segment.inputs=[{{from: detect, codec: {codec}}}]",
    ]
    sets += [] if curve else ["segment.insecure=true"]
    out = work / f"{codec}-{'curve' if curve else 'plain'}-{len(list(work.glob('*-*')))}"
    compute = _half(hosts["compute"], COMPUTE_STAGES, [*sets, f"keys={keys['compute']}"], out)
    camera = None
    try:
        _wait_started(compute, "segment")
        sent_before = _tx_bytes(hosts["camera"])
        camera = _half(hosts["camera"], CAMERA_STAGES, [*sets, f"keys={keys['camera']}"], out / "camera")
        camera_log, _ = camera.communicate(timeout=RUN_TIMEOUT_S)
        compute_log, _ = compute.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        for proc in (camera, compute):
            if proc is not None:
                proc.kill()
    if camera.returncode or compute.returncode:
        raise RuntimeError(f"{out.name} failed:\n{camera_log[-2000:]}\n{compute_log[-2000:]}")
    figures = json.loads((out / "figures.json").read_text())
    figures["wire_kb_per_frame"] = round((_tx_bytes(hosts["camera"]) - sent_before) / 1024 / figures["frames"], 1)
    figures["cpu_ms_per_frame"].update(json.loads((out / "camera" / "figures.json").read_text())["cpu_ms_per_frame"])
    return figures


def run_netbench(source: str, repeats: int, frames: int | None, width: int | None, fps: float | None) -> dict[str, Any]:
    """All variants, alternating, ``repeats`` times; medians per variant."""
    reason = netns_unavailable()
    if reason:
        raise SystemExit(f"netbench: {reason}")
    runs: dict[str, list[dict]] = {}
    clip = [f"capture.source={source}"] + ([f"capture.max_frames={frames}"] if frames else [])
    clip += [f"capture.width={width}"] if width else []
    with tempfile.TemporaryDirectory(prefix="netbench-") as tmp, network(f"b{os.getpid()}") as hosts:
        work = Path(tmp)
        keys = _keys(work / "keys")
        for _ in range(repeats):
            for codec, curve in VARIANTS:
                name = f"{codec} {'curve' if curve else 'plain'}"
                fast = one_run(hosts, keys, work, (codec, curve), [*clip, "capture.pacing=max"])
                paced = one_run(hosts, keys, work, (codec, curve), clip + ([f"capture.fps={fps}"] if fps else []))
                runs.setdefault(name, []).append({"max": fast, "paced": paced})
                logging.info("%s: %.1f frames/s, paced p50 %s ms", name, fast["fps"], paced["latency_ms"]["p50"])
    return {name: _medians(rs) for name, rs in runs.items()}


def _medians(runs: list[dict]) -> dict[str, Any]:
    def med(values: list) -> float:
        return round(statistics.median(values), 1)

    cpu = runs[0]["max"]["cpu_ms_per_frame"]
    return {
        "fps": med([r["max"]["fps"] for r in runs]),
        "fps_runs": [r["max"]["fps"] for r in runs],
        "latency_p50_ms": med([r["paced"]["latency_ms"]["p50"] for r in runs]),
        "latency_p95_ms": med([r["paced"]["latency_ms"]["p95"] for r in runs]),
        "wire_kb_per_frame": med([r["max"]["wire_kb_per_frame"] for r in runs]),
        "cpu_ms_per_frame": {k: med([r["max"]["cpu_ms_per_frame"][k] for r in runs]) for k in cpu if cpu[k] is not None},
    }


def format_netbench(result: dict[str, Any]) -> str:
    """A table: one row per variant, and what Curve costs against plain for each codec."""
    lines = [f"{'link':<14}{'frames/s':>9}{'p50 ms':>8}{'p95 ms':>8}{'KB/frame':>10}{'detect CPU':>11}{'segment CPU':>12}"]
    for name, r in result.items():
        cpu = r["cpu_ms_per_frame"]
        lines.append(
            f"{name:<14}{r['fps']:>9}{r['latency_p50_ms']:>8}{r['latency_p95_ms']:>8}{r['wire_kb_per_frame']:>10}"
            f"{cpu.get('detect', '-'):>11}{cpu.get('segment', '-'):>12}"
        )
    for codec in ("jpeg", "raw"):
        curve, plain = result.get(f"{codec} curve"), result.get(f"{codec} plain")
        if curve and plain:
            lines.append(f"{codec}: CurveZMQ costs {100 * (1 - curve['fps'] / plain['fps']):.1f} % of frames/s")
    return "\n".join(lines)


def _half_main(argv: list[str]) -> None:
    """Inside a host: run some stages of the recipe and write their figures to OUT/figures.json."""
    from pipeline.streaming.launcher import ProcessLauncher
    from pipeline.streaming.topology import load_topology
    from pipeline.tools.bench import sink_figures

    parser = argparse.ArgumentParser(prog="netbench half")
    parser.add_argument("stages")
    parser.add_argument("out", type=Path)
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(processName)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory(prefix="netbench-rt-") as runtime:
        topology = load_topology(CONFIG, runtime, args.set)
        only = args.stages.split(",")
        args.out.mkdir(parents=True, exist_ok=True)
        result = ProcessLauncher(topology, {"out": str(args.out)}, only=only).run()
    figures: dict[str, Any] = {"cpu_ms_per_frame": {k: v["cpu_ms_per_frame"] for k, v in result.stages.items()}}
    if any(topology.classes[name].is_sink for name in only):
        figures.update(sink_figures(topology, result))
        figures.pop("series")
    (args.out / "figures.json").write_text(json.dumps(figures))
    raise SystemExit(result.code)


def main(argv: list[str]) -> None:
    if argv[:1] == ["half"]:
        return _half_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m pipeline.tools.netbench", description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, help="a video file (the camera host reads it)")
    parser.add_argument("--repeats", type=int, default=1, help="alternating rounds of all variants (medians reported)")
    parser.add_argument("--frames", type=int, help="only the first N frames")
    parser.add_argument("--width", type=int, default=640, help="resize frames to this width (0: as the source)")
    parser.add_argument("--fps", type=float, help="pace the latency runs at this rate (default: the clip's)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    result = run_netbench(str(Path(args.source).resolve()), args.repeats, args.frames, args.width, args.fps)
    print(json.dumps(result) if args.json else format_netbench(result))


if __name__ == "__main__":
    main(sys.argv[1:])
