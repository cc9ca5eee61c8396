"""The live view in a real browser (Debian's chromium driven by Playwright), fed by a real pipeline."""

from __future__ import annotations

import re
import subprocess
import time
import urllib.request

import pytest

from tests.conftest import PYTHON, ROOT, free_port
from tests.test_integration import wait_for

pytestmark = pytest.mark.slow


def test_dashboard_shows_frames_arriving_and_the_chart_updating(video, model_dir, tmp_path, browser):
    port = free_port()
    proc = subprocess.Popen(
        [PYTHON, "run_pipeline.py", "run", "configs/local.yaml", "--source", str(video), "--out", str(tmp_path),
         "--set", f"render.http_port={port}", "--set", "render.output=none", "--set", "capture.loop=true"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: list[str] = []
    try:
        wait_for(proc, re.escape(f"live view on http://127.0.0.1:{port}/"), lines)
        page = browser.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_function("document.getElementById('video').naturalWidth > 0", timeout=60_000)
        page.wait_for_function("Number(document.getElementById('bars').dataset.frame) > 0", timeout=60_000)
        first = int(page.get_attribute("#bars", "data-frame"))
        updates = int(page.get_attribute("#bars", "data-updates"))
        time.sleep(2)
        assert int(page.get_attribute("#bars", "data-frame")) > first  # frames keep arriving
        assert int(page.get_attribute("#bars", "data-updates")) > updates  # the chart refreshes
        assert page.locator("#bars div").count() >= 1  # at least one emotion bar
        assert "capture" in page.inner_text("#fps")
        assert page.locator("#faces li i").count() >= 1  # the face now, with its colour
        assert page.locator("#minute rect").count() >= 1  # the last minute's chart
        page.wait_for_function("/log\\s+[0-9.]+/.test(document.getElementById('fps').innerText)", timeout=20_000)
        assert errors == []
        page.screenshot(path=str(tmp_path / "dashboard.png"))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/stream.mjpg", timeout=10) as stream:
            assert stream.headers["Content-Type"].startswith("multipart/x-mixed-replace")
            assert stream.read(4096).count(b"\xff\xd8") >= 1  # a JPEG start marker
    finally:
        proc.terminate()
        proc.communicate(timeout=60)


def test_a_live_view_on_loopback_answers_only_loopback_names_and_drops_idle_viewers():
    import http.client
    import socket

    from pipeline.analytics import live

    server = live.LiveServer("127.0.0.1", 0)
    host, port = server.address
    try:
        for name, status in (("localhost", 200), ("127.0.0.1", 200), ("evil.example", 403)):
            conn = http.client.HTTPConnection(host, port, timeout=5)
            conn.request("GET", "/stats.json", headers={"Host": f"{name}:{port}"})
            assert conn.getresponse().status == status, name
            conn.close()
        idle = socket.create_connection((host, port))  # says nothing
        idle.settimeout(live.IDLE_TIMEOUT_S + 10)
        started = time.monotonic()
        assert idle.recv(1) == b""  # the server hangs up on it instead of keeping a thread for ever
        assert time.monotonic() - started < live.IDLE_TIMEOUT_S + 5
        idle.close()
    finally:
        server.close()
