"""Shared fixtures: paths to the research data beside the checkout, a trained model, free ports."""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("EMOTION_SHARED_DATA", ROOT.parent / "shared" / "data"))
VIDEO = SHARED / "video" / "woman2.mp4"
FACES = SHARED / "faces"
FER = SHARED / "fer2013"
WIDER = SHARED / "wider_face"
DEFAULT_MODEL = ROOT / "models" / "default"
PYTHON = sys.executable


def need(path: Path) -> Path:
    """Skip the test with a clear reason when research data is absent."""
    if not path.exists():
        pytest.skip(f"research data not found: {path} (expected ../shared/data beside the checkout, or set EMOTION_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def video() -> Path:
    return need(VIDEO)


@pytest.fixture(scope="session")
def faces_dir() -> Path:
    return need(FACES)


@pytest.fixture(scope="session")
def wider_dir() -> Path:
    return need(WIDER)


@pytest.fixture(scope="session")
def fer_dir() -> Path:
    return need(FER)


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """The shipped default model (a real trained model committed with the project)."""
    if not (DEFAULT_MODEL / "emotion.tflite").exists():
        pytest.skip(f"no shipped model at {DEFAULT_MODEL}; train one with `run_pipeline.py train`")
    return DEFAULT_MODEL


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def free_ports():
    """A function returning a base port with ``n`` consecutive free ports after it."""

    def find(n: int = 1) -> int:
        for _ in range(50):
            base = free_port()
            try:
                socks = []
                for i in range(n):
                    s = socket.socket()
                    s.bind(("127.0.0.1", base + i))
                    socks.append(s)
                return base
            except OSError:
                continue
            finally:
                for s in socks:
                    s.close()
        raise RuntimeError("no free port range")

    return find


@pytest.fixture
def browser():
    """Headless Chromium (Debian's package) driven by Playwright."""
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e .[dev])")
    chromium = shutil.which("chromium")
    if not chromium:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium); .ci/run installs it")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"],
        )  # fmt: skip
        yield browser
        browser.close()
