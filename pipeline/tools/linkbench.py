"""What one link costs across the veth, with and without CurveZMQ: the transport alone, no stages.

The two-host recipe's frames/s is bounded by the CPU its seven stages need on this machine's
two cores (shared with whatever else runs), so a few percent of encryption hide in its noise.
Here a sender in the camera namespace pushes the clip's frames, encoded once beforehand, to a
``PullInput`` in the compute namespace that decodes them, as fast as the link allows: frames/s
at the receiver and the CPU each side spends a frame (all its threads, ZeroMQ's I/O thread,
which does the encryption, included). Root only.

    python -m pipeline.tools.linkbench --source ../shared/data/video/woman2.mp4 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import zmq

from pipeline.streaming.keys import CurveClient, CurveServer, key_pair, new_key_pair, public_key
from pipeline.streaming.message import Message, encode
from pipeline.streaming.metrics import process_cpu_s
from pipeline.streaming.plan import InputPlan, OutputPlan
from pipeline.streaming.shm import SharedFrames
from pipeline.streaming.transport import PullInput, PushLink
from pipeline.tools.netns import netns_unavailable, network

PORT = 5600
TIMEOUT_S = 300


def _frames(source: str, width: int, count: int, codec: str) -> list[list]:
    import cv2

    cap, out = cv2.VideoCapture(source), []
    while len(out) < count:
        ok, image = cap.read()
        if not ok:
            break
        image = cv2.resize(image, (width, round(image.shape[0] * width / image.shape[1])), interpolation=cv2.INTER_AREA)
        out.append(encode(Message(stream="s", seq=len(out), image=image), image_codec=codec))
    cap.release()
    return out


def _send(args: argparse.Namespace) -> dict[str, Any]:
    """Inside the camera host: push ``args.count`` frames, then end-of-stream."""
    frames = _frames(args.source, args.width, 100, args.codec)
    curve = None
    if args.keys:
        curve = CurveClient(*key_pair(args.keys, "camera"), public_key(args.keys, "compute"), "camera", "compute")
    ctx, stop = zmq.Context(), threading.Event()
    link = PushLink(ctx, OutputPlan("receiver", (args.endpoint,), "block", 4, args.codec, True, True, curve), stop)
    try:
        link.wait_until_connected("sender")
        cpu0 = process_cpu_s()
        for i in range(args.count):
            link.send(frames[i % len(frames)])
        link.broadcast(encode(Message.eos("s", args.count)))
        link.wait_for_consumers(TIMEOUT_S)
        cpu = process_cpu_s() - cpu0
    finally:
        link.close()
        ctx.term()
    return {"cpu_ms_per_frame": 1000 * cpu / args.count, "bytes_per_frame": sum(len(f) for f in frames[0])}


def _receive(args: argparse.Namespace) -> dict[str, Any]:
    """Inside the compute host: decode frames until end-of-stream; frames/s from the first to the last."""
    curve = None
    if args.keys:
        curve = CurveServer(*key_pair(args.keys, "compute"), {public_key(args.keys, "camera"): "camera"})
    ctx, errors = zmq.Context(), []
    inp = PullInput(
        ctx, InputPlan(f"tcp://0.0.0.0:{PORT}", 4, False, False, None, curve), SharedFrames(), errors.append, lambda m: None
    )
    print("ready", flush=True)
    count, first, deadline = 0, None, time.monotonic() + TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            msg = inp.next(1000)
            if msg is None:
                continue
            if msg.is_eos:
                break
            count, first = count + 1, first or (time.perf_counter(), process_cpu_s())
        seconds, cpu = time.perf_counter() - first[0], process_cpu_s() - first[1]
    finally:
        inp.close()
        ctx.term()
    return {"frames": count, "fps": (count - 1) / seconds, "cpu_ms_per_frame": 1000 * cpu / count, "errors": len(errors)}


def _one(hosts, keys: dict[str, Path] | None, codec: str, args: argparse.Namespace) -> dict[str, Any]:
    me = [sys.executable, "-m", "pipeline.tools.linkbench"]
    common = ["--codec", codec, "--source", args.source, "--width", str(args.width), "--count", str(args.count)]
    recv = subprocess.Popen(
        hosts["compute"].command(*me, "receive", *common, *(["--keys", str(keys["compute"])] if keys else [])),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert recv.stdout.readline().strip() == "ready"
        send_cmd = hosts["camera"].command(*me, "send", *common, "--endpoint", f"tcp://{hosts['compute'].address}:{PORT}")
        send_cmd += ["--keys", str(keys["camera"])] if keys else []
        sent = json.loads(subprocess.run(send_cmd, capture_output=True, text=True, timeout=TIMEOUT_S, check=True).stdout)
        received = json.loads(recv.communicate(timeout=TIMEOUT_S)[0].strip().splitlines()[-1])
    finally:
        recv.kill()
    return {"fps": received["fps"], "send_cpu_ms": sent["cpu_ms_per_frame"], "receive_cpu_ms": received["cpu_ms_per_frame"],
            "kb_per_frame": sent["bytes_per_frame"] / 1024, "frames": received["frames"]}  # fmt: skip


def run_linkbench(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """raw and JPEG, Curve and plain, alternating ``args.repeats`` times; medians."""
    reason = netns_unavailable()
    if reason:
        raise SystemExit(f"linkbench: {reason}")
    runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="linkbench-") as tmp, network(f"l{os.getpid()}") as hosts:
        keys = {host: Path(tmp) / host for host in ("camera", "compute")}
        for host, folder in keys.items():
            new_key_pair(folder, host)
        for host, other in (("camera", "compute"), ("compute", "camera")):
            (keys[host] / f"{other}.key").write_bytes((keys[other] / f"{other}.key").read_bytes())
        for _ in range(args.repeats):
            for codec in ("jpeg", "raw"):
                for curve in (True, False):
                    name = f"{codec} {'curve' if curve else 'plain'}"
                    runs.setdefault(name, []).append(_one(hosts, keys if curve else None, codec, args))
    return {name: {k: round(statistics.median(r[k] for r in rs), 2) for k in rs[0]} for name, rs in runs.items()}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.tools.linkbench", description=__doc__.splitlines()[0])
    parser.add_argument("role", nargs="?", choices=["send", "receive"], help=argparse.SUPPRESS)
    parser.add_argument("--source", required=True, help="a video file")
    parser.add_argument("--width", type=int, default=640, help="resize frames to this width")
    parser.add_argument("--count", type=int, default=2000, help="frames per run")
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds (medians reported)")
    parser.add_argument("--codec", default="raw", help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    parser.add_argument("--keys", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.source = str(Path(args.source).resolve())
    if args.role:
        print(json.dumps(_send(args) if args.role == "send" else _receive(args)), flush=True)
        return
    for name, r in run_linkbench(args).items():
        cpu = f"send {r['send_cpu_ms']:.2f} ms CPU, receive {r['receive_cpu_ms']:.2f} ms CPU"
        print(f"{name:<12} {r['fps']:>8.1f} frames/s  {cpu}  {r['kb_per_frame']:.1f} KB/frame")


if __name__ == "__main__":
    main(sys.argv[1:])
