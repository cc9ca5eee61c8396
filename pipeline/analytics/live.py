"""Live view: the annotated stream over HTTP (MJPEG) with a small dashboard.

Served from the render process by a thread (``http.server``): ``/`` is the dashboard,
``/stream.mjpg`` the video, ``/stats.json`` the faces of the latest frame, the emotion
distribution of the last 60 frames and of the last minute (in 5-second bins), and frames/s
per stage: measured from the per-stage timestamps each frame carries, and for the log sink
(a sibling of render, which no frame reaches render through) from the rows it committed.
"""

from __future__ import annotations

import ipaddress
import json
import sqlite3
import sys
import threading
import time
from collections import Counter, defaultdict, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pipeline.streaming.message import Message
from pipeline.vision.emotions import COLOURS
from pipeline.vision.record import faces_of

BOUNDARY = b"frame"
WINDOW = 60  # frames over which the dashboard's figures are computed
MINUTE_S, MINUTE_BINS = 60.0, 12  # the share over the last minute, in 5-second bins


class LogProgress:
    """Frames/s of the log sink, from the frame rows it committed for this run.

    The log is another process fed by the same tee as render, so its progress is read where it
    writes it; it commits about once a second, so the rate is taken over the last ~10 s.
    """

    def __init__(self, path: Path, run_id: str):
        self.path, self.run_id = path, run_id
        self._samples: deque[tuple[float, int]] = deque(maxlen=11)
        self._lock = threading.Lock()

    def _count(self) -> int | None:
        if not self.path.is_file():
            return None
        try:
            with sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=0.2) as db:
                return db.execute("SELECT COUNT(*) FROM frames WHERE run = ?", (self.run_id,)).fetchone()[0]
        except sqlite3.Error:
            return None  # not created yet, locked, or an older schema: no figure this time

    def fps(self) -> float | None:
        """Rows a second over the last ~10 s; None until two readings exist."""
        with self._lock:
            now = time.monotonic()
            if not self._samples or now - self._samples[-1][0] >= 1.0:
                count = self._count()
                if count is not None:
                    self._samples.append((now, count))
            if len(self._samples) < 2 or self._samples[-1][0] <= self._samples[0][0]:
                return None
            (t0, c0), (t1, c1) = self._samples[0], self._samples[-1]
            return round((c1 - c0) / (t1 - t0), 1)


class LiveState:
    """The latest JPEG and rolling figures, shared between the render loop and HTTP threads."""

    def __init__(self, log: LogProgress | None = None) -> None:
        self._cond = threading.Condition()
        self.jpeg: bytes | None = None
        self.frame_no = 0
        self.log = log
        self._emotions: deque[list[str]] = deque(maxlen=WINDOW)
        self._minute: deque[tuple[float, list[str]]] = deque()
        self._faces: list[dict[str, Any]] = []
        self._stamps: dict[str, deque[float]] = defaultdict(lambda: deque(maxlen=WINDOW))

    def publish(self, frame: np.ndarray, msg: Message, quality: int = 80) -> None:
        ok, jpg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, quality])
        with self._cond:
            if ok:
                self.jpeg = jpg.tobytes()
            self.frame_no += 1
            faces = faces_of(msg)
            emotions = [f.emotion for f in faces if f.emotion]
            self._emotions.append(emotions)
            now = time.time()
            self._minute.append((now, emotions))
            while self._minute and self._minute[0][0] < now - MINUTE_S:
                self._minute.popleft()
            self._faces = [{"stream": msg.stream, "track": f.track, "emotion": f.emotion or "face",
                            "confidence": f.confidence} for f in faces]  # fmt: skip
            for stage, t in msg.stamps.items():
                self._stamps[stage].append(t)
            self._stamps["render"].append(time.time())
            self._cond.notify_all()

    def wait_frame(self, after: int, timeout: float = 5.0) -> tuple[int, bytes | None]:
        with self._cond:
            self._cond.wait_for(lambda: self.frame_no > after, timeout)
            return self.frame_no, self.jpeg

    def stats(self) -> dict[str, Any]:
        """What the dashboard polls: faces now, emotion counts, the last minute, frames/s per stage."""
        with self._cond:
            counts = Counter(e for faces in self._emotions for e in faces)
            fps = {stage: round((len(ts) - 1) / (ts[-1] - ts[0]), 1) if len(ts) > 1 and ts[-1] > ts[0] else 0.0
                   for stage, ts in self._stamps.items()}  # fmt: skip
            minute = self._minute_bins(time.time())
            faces = list(self._faces)
        if self.log is not None:
            fps["log"] = self.log.fps()  # outside the lock: a database read
        return {"frame": self.frame_no, "emotions": dict(counts), "minute": minute, "faces": faces, "fps": fps}

    def _minute_bins(self, now: float) -> list[dict[str, int]]:
        """Emotion counts in each 5-second bin of the last minute, oldest first."""
        width = MINUTE_S / MINUTE_BINS
        bins: list[Counter] = [Counter() for _ in range(MINUTE_BINS)]
        for t, emotions in self._minute:
            index = MINUTE_BINS - 1 - int((now - t) // width)
            if 0 <= index < MINUTE_BINS:
                bins[index].update(emotions)
        return [dict(b) for b in bins]


DASHBOARD = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Emotion pipeline: live</title>
<style>body{font-family:sans-serif;margin:1em;display:flex;gap:1.5em;flex-wrap:wrap;color:#222}
h2{font-size:1.1em;margin:.8em 0 .3em}
#bars div{display:flex;align-items:center;gap:.5em;margin:2px 0}#bars span{width:5em}
#bars i,#faces i,#legend i{display:inline-block;height:14px}#faces i,#legend i{width:14px;vertical-align:middle}
#faces li{list-style:none;margin:2px 0}#faces{padding:0;margin:0}#legend span{margin-right:.8em;white-space:nowrap}
td,th{padding:2px 8px;text-align:left}#minute{display:block}</style>
</head><body>
<div><h2>Live</h2><img id="video" src="stream.mjpg" alt="annotated stream" width="640"></div>
<div><h2>Faces now</h2><ul id="faces"></ul>
<h2>Share over the last minute</h2><svg id="minute" width="300" height="90" role="img"
 aria-label="emotion share in 5-second bins over the last minute"></svg><div id="legend"></div>
<h2>Emotions (last 60 frames)</h2><div id="bars" data-updates="0"></div>
<h2>Frames/s per stage</h2><table id="fps"></table><p id="frame"></p></div>
<script>
const COLOURS = __COLOURS__;
const colour = e => COLOURS[e] || "#888";
const pct = x => `${Math.round(100 * x)}%`;
let updates = 0;
function minuteChart(bins) {
  const w = 300 / bins.length, parts = [];
  bins.forEach((counts, i) => {
    const total = Object.values(counts).reduce((a, b) => a + b, 0);
    let y = 80;
    for (const [e, n] of Object.entries(counts).sort()) {
      const h = 80 * n / (total || 1);
      y -= h;
      parts.push(`<rect x="${i * w + 1}" y="${y}" width="${w - 2}" height="${h}" fill="${colour(e)}"><title>${e}</title></rect>`);
    }
  });
  parts.push('<text x="0" y="90" font-size="9">-60 s</text><text x="280" y="90" font-size="9">now</text>');
  document.getElementById("minute").innerHTML = parts.join("");
  const seen = [...new Set(bins.flatMap(b => Object.keys(b)))].sort();
  document.getElementById("legend").innerHTML =
    seen.map(e => `<span><i style="background:${colour(e)}"></i> ${e}</span>`).join("");
}
async function refresh() {
  try {
    const s = await (await fetch("stats.json", {cache: "no-store"})).json();
    const total = Object.values(s.emotions).reduce((a, b) => a + b, 0) || 1;
    const bars = document.getElementById("bars");
    bars.innerHTML = Object.entries(s.emotions).sort((a, b) => b[1] - a[1]).map(([e, n]) =>
      `<div><span>${e}</span><i style="width:${Math.round(200 * n / total)}px;background:${colour(e)}"></i>` +
      `${pct(n / total)}</div>`
    ).join("");
    bars.dataset.updates = ++updates;
    bars.dataset.frame = s.frame;
    document.getElementById("faces").innerHTML = s.faces.map(f =>
      `<li><i style="background:${colour(f.emotion)}"></i> ${f.track === null ? "" : "#" + f.track} ${f.emotion}` +
      `${f.confidence === null ? "" : " " + pct(f.confidence)}</li>`).join("") || "<li>no face</li>";
    minuteChart(s.minute);
    document.getElementById("fps").innerHTML = Object.entries(s.fps).map(([k, v]) =>
      `<tr><th>${k}</th><td>${v === null ? "-" : v}</td></tr>`).join("");
    document.getElementById("frame").textContent = `frame ${s.frame}`;
  } catch (err) {
    document.getElementById("frame").textContent = "pipeline not reachable";
  }
}
setInterval(refresh, 500);
refresh();
</script></body></html>
""".replace("__COLOURS__", json.dumps(COLOURS))


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

    def __init__(self, host: str, port: int, log: LogProgress | None = None):
        self.state = LiveState(log)
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
