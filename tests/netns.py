"""What the network-namespace tests run inside a host: a packet capture and an intruder.

The hosts themselves come from ``pipeline.tools.netns``. Run with
``ip netns exec NS python -m tests.netns capture|intrude ...`` (see ``tests/test_netns.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import socket
import struct
import sys
import time
from collections import defaultdict
from pathlib import Path

ETH_P_ALL = 0x0003
JFIF_START = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"  # what OpenCV's imencode(".jpg") begins with


def capture(device: str, out: Path) -> None:
    """Record the TCP payload seen on ``device``, one file per flow, until SIGTERM.

    A raw AF_PACKET socket instead of tcpdump: nothing to install, and the payloads come out
    already split by flow. Prints ``ready`` once the socket listens.
    """
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(ETH_P_ALL))
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)  # SO_RCVBUFFORCE: keep up with a burst of frames
    sock.bind((device, 0))
    sock.settimeout(0.2)
    stop: list[bool] = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    flows: dict[str, bytearray] = defaultdict(bytearray)
    print("ready", flush=True)
    while not stop:
        try:
            packet = sock.recv(1 << 18)
        except (TimeoutError, InterruptedError):
            continue
        flow, payload = tcp_payload(packet)
        if payload:
            flows[flow] += payload
    out.mkdir(parents=True, exist_ok=True)
    for flow, data in flows.items():
        (out / f"{flow}.bin").write_bytes(data)


def tcp_payload(packet: bytes) -> tuple[str, bytes]:
    """(``src-dst`` with ports, payload) of an Ethernet/IPv4/TCP packet, or ("", b"")."""
    if len(packet) < 34 or packet[12:14] != b"\x08\x00" or packet[23] != 6:
        return "", b""
    ihl = (packet[14] & 0x0F) * 4
    total = struct.unpack("!H", packet[16:18])[0]
    tcp = 14 + ihl
    sport, dport = struct.unpack("!HH", packet[tcp : tcp + 4])
    offset = (packet[tcp + 12] >> 4) * 4
    src, dst = socket.inet_ntoa(packet[26:30]), socket.inet_ntoa(packet[30:34])
    return f"{src}.{sport}-{dst}.{dport}", packet[tcp + offset : 14 + total]


def intrude(endpoint: str, seconds: float, curve_server: str | None) -> None:
    """Push forged frames and end-of-stream markers at ``endpoint`` for ``seconds``; print what happened.

    A refused connection is not retried by ZeroMQ, so the intruder comes back with a new socket
    (and, with ``curve_server``, a new key pair of its own; without, plain ZeroMQ) until time
    is up: attempts span the whole run. Prints the connection events seen and the attempts made.
    """
    import zmq

    from pipeline.streaming.message import Message, encode

    forged = [encode(Message(stream="capture", seq=i, ts=time.time())) for i in range(3)]
    forged.append(encode(Message.eos("capture", 0, "capture:0")))
    ctx = zmq.Context()
    events: dict[str, int] = defaultdict(int)
    attempts, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        attempts += 1
        for name in _attempt(ctx, endpoint, curve_server, forged, min(2.0, deadline - time.monotonic())):
            events[name] += 1
    print(json.dumps({"events": events, "attempts": attempts}), flush=True)
    ctx.term()


def _attempt(ctx, endpoint: str, curve_server: str | None, forged: list, seconds: float) -> list[str]:
    """One connection: push until it is refused (or ``seconds``); the names of its events."""
    import zmq
    from zmq.utils.monitor import recv_monitor_message

    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 0)
    if curve_server:
        sock.curve_publickey, sock.curve_secretkey = zmq.curve_keypair()
        sock.curve_serverkey = curve_server.encode()
    monitor = sock.get_monitor_socket()
    sock.connect(endpoint)
    seen: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and "DISCONNECTED" not in seen:
        for frames in forged:
            with contextlib.suppress(zmq.Again):
                sock.send_multipart(frames, flags=zmq.NOBLOCK)
        while monitor.poll(50):
            seen.append(zmq.Event(recv_monitor_message(monitor)["event"]).name)
    sock.disable_monitor()
    monitor.close(linger=0)
    sock.close(linger=0)
    return seen


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.netns")
    sub = parser.add_subparsers(dest="command", required=True)
    cap = sub.add_parser("capture")
    cap.add_argument("device")
    cap.add_argument("out", type=Path)
    att = sub.add_parser("intrude")
    att.add_argument("endpoint")
    att.add_argument("seconds", type=float)
    att.add_argument("--curve-server", help="speak CurveZMQ to this server key, with a key of our own")
    args = parser.parse_args(argv)
    if args.command == "capture":
        capture(args.device, args.out)
    else:
        intrude(args.endpoint, args.seconds, args.curve_server)


if __name__ == "__main__":
    main(sys.argv[1:])
