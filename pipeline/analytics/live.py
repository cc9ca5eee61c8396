"""Live view: the annotated stream over HTTP (MJPEG) with a small dashboard.

Served from the render process by a thread (``http.server``): ``/`` is the dashboard,
``/stream.mjpg`` the video, ``/stats.json`` the live emotion distribution and per-stage
frames/s (measured from the per-stage timestamps each frame carries).
"""

from __future__ import annotations

import ipaddress
import json
import sys
import threading
import time
from collections import Counter, defaultdict, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import cv2
import numpy as np

from pipeline.streaming.message import Message
from pipeline.vision.record import faces_of

BOUNDARY = b"frame"
WINDOW = 60  # frames over which the dashboard's figures are computed


class LiveState:
    """The latest JPEG and rolling figures, shared between the render loop and HTTP threads."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.jpeg: bytes | None = None
        self.frame_no = 0
        self._emotions: deque[list[str]] = deque(maxlen=WINDOW)
        self._stamps: dict[str, deque[float]] = defaultdict(lambda: deque(maxlen=WINDOW))

    def publish(self, frame: np.ndarray, msg: Message, quality: int = 80) -> None:
        ok, jpg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, quality])
        with self._cond:
            if ok:
                self.jpeg = jpg.tobytes()
            self.frame_no += 1
            self._emotions.append([f.emotion for f in faces_of(msg) if f.emotion])
            for stage, t in msg.stamps.items():
                self._stamps[stage].append(t)
            self._stamps["render"].append(time.time())
            self._cond.notify_all()

    def wait_frame(self, after: int, timeout: float = 5.0) -> tuple[int, bytes | None]:
        with self._cond:
            self._cond.wait_for(lambda: self.frame_no > after, timeout)
            return self.frame_no, self.jpeg

    def stats(self) -> dict[str, Any]:
        with self._cond:
            counts = Counter(e for faces in self._emotions for e in faces)
            fps = {stage: round((len(ts) - 1) / (ts[-1] - ts[0]), 1) if len(ts) > 1 and ts[-1] > ts[0] else 0.0
                   for stage, ts in self._stamps.items()}  # fmt: skip
            return {"frame": self.frame_no, "emotions": dict(counts), "fps": fps}


DASHBOARD = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Emotion pipeline: live</title>
<style>body{font-family:sans-serif;margin:1em;display:flex;gap:1.5em;flex-wrap:wrap;color:#222}
#bars div{display:flex;align-items:center;gap:.5em;margin:2px 0}#bars span{width:5em}
#bars i{display:inline-block;height:14px;background:#3b7dd8}td,th{padding:2px 8px;text-align:left}</style>
</head><body>
<div><h2>Live</h2><img id="video" src="stream.mjpg" alt="annotated stream" width="640"></div>
<div><h2>Emotions (last 60 frames)</h2><div id="bars" data-updates="0"></div>
<h2>Frames/s per stage</h2><table id="fps"></table><p id="frame"></p></div>
<script>
let updates = 0;
async function refresh() {
  try {
    const s = await (await fetch("stats.json", {cache: "no-store"})).json();
    const total = Object.values(s.emotions).reduce((a, b) => a + b, 0) || 1;
    const bars = document.getElementById("bars");
    bars.innerHTML = Object.entries(s.emotions).sort((a, b) => b[1] - a[1]).map(([e, n]) =>
      `<div><span>${e}</span><i style="width:${Math.round(200 * n / total)}px"></i>${Math.round(100 * n / total)}%</div>`
    ).join("");
    bars.dataset.updates = ++updates;
    bars.dataset.frame = s.frame;
    document.getElementById("fps").innerHTML = Object.entries(s.fps).map(([k, v]) =>
      `<tr><th>${k}</th><td>${v}</td></tr>`).join("");
    document.getElementById("frame").textContent = `frame ${s.frame}`;
  } catch (err) {
    document.getElementById("frame").textContent = "pipeline not reachable";
  }
}
setInterval(refresh, 500);
refresh();
</script></body></html>
"""


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
IDLE_TIMEOUT_S = 30.0  # a viewer that takes nothing for this long is dropped (its thread ends)


def _handler(state: LiveState, loopback: bool) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = IDLE_TIMEOUT_S

        def log_message(self, *args: Any) -> None:  # quiet: the pipeline has its own log
            pass

        def _send(self, body: bytes, content_type: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            host = (self.headers.get("Host") or "").rsplit(":", 1)[0]
            if loopback and host not in LOOPBACK_NAMES:  # a page elsewhere rebinding its name to us (DNS rebinding)
                self.send_error(403, "unknown Host")
                return
            path = self.path.split("?")[0]
            if path in ("/", "/index.html"):
                self._send(DASHBOARD.encode(), "text/html; charset=utf-8")
            elif path == "/stats.json":
                self._send(json.dumps(state.stats()).encode(), "application/json")
            elif path == "/stream.mjpg":
                self._stream()
            elif path == "/favicon.ico":
                self.send_response(204)
                self.end_headers()
            else:
                self.send_error(404)

        def _stream(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY.decode()}")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            seen = 0
            try:
                while True:
                    seen, jpeg = state.wait_frame(seen)
                    if jpeg is None:
                        continue
                    self.wfile.write(b"--" + BOUNDARY + b"\r\nContent-Type: image/jpeg\r\n")
                    self.wfile.write(f"Content-Length: {len(jpeg)}\r\n\r\n".encode() + jpeg + b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                return  # the viewer went away

    return Handler


class _Server(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        """A viewer that went away is normal, not a traceback in the pipeline's log."""
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError, TimeoutError)):
            super().handle_error(request, client_address)


def _is_loopback(host: str) -> bool:
    """Whether the live view listens only on this machine (then only loopback names may address it)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class LiveServer:
    """An HTTP server in a daemon thread."""

    def __init__(self, host: str, port: int):
        self.state = LiveState()
        self._server = _Server((host, port), _handler(self.state, _is_loopback(host)))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="live-view", daemon=True)
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        return self._server.server_address[:2]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
