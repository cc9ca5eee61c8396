"""Training for real, on a few hundred FER2013 images (TensorFlow, about a minute in all)."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import time

import pytest

from tests.conftest import PYTHON, ROOT

pytestmark = pytest.mark.training
PER_CLASS = 40


@pytest.fixture(scope="module")
def small_fer(fer_dir, tmp_path_factory):
    """A FER2013-layout folder with a few real images per class and split (copied to a temp dir)."""
    root = tmp_path_factory.mktemp("fer-small")
    for split, prefixes, n in (("train", ("Training_",), PER_CLASS), ("test", ("PublicTest_", "PrivateTest_"), 6)):
        for class_dir in sorted((fer_dir / split).iterdir()):
            for prefix in prefixes:
                dest = root / split / class_dir.name
                dest.mkdir(parents=True, exist_ok=True)
                for path in sorted(class_dir.glob(f"{prefix}*"))[:n]:
                    shutil.copy(path, dest / path.name)
    return root


def train_cli(data, out, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [PYTHON, "run_pipeline.py", "train", "--data", str(data), "--out", str(out), *extra],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def history_epochs(out) -> list[int]:
    path = out / "history.csv"
    if not path.exists():
        return []
    with open(path) as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


def test_one_epoch_gives_a_model_that_loads_and_evaluates(small_fer, tmp_path):
    out = tmp_path / "model"
    proc = train_cli(small_fer, out, "--epochs", "1", "--segmentation", "on", "--score-test")
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output[-3000:]
    for name in ("emotion.keras", "emotion.tflite", "model.json", "curves.png", "confusion.png", "report.txt"):
        assert (out / name).exists(), name
    meta = json.loads((out / "model.json").read_text())
    assert meta["channels"] == 2
    assert meta["segmentation"] == {"enabled": True, "k": 4, "function": "pipeline.vision.faces.segment_face", "version": 2}
    assert meta["evaluation"]["split"] == "test (PrivateTest)" and meta["evaluation"]["n"] == 42
    assert meta["quantization"].startswith("dynamic-range")  # int8 weights unless --no-quantize

    result = subprocess.run(
        [PYTHON, "run_pipeline.py", "evaluate", "--model", str(out), "--data", str(small_fer / "train"), "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    scores = json.loads(result.stdout)
    assert scores["n"] == 7 * PER_CLASS
    assert 0.0 <= scores["accuracy"] <= 1.0 and len(scores["confusion"]) == 7
    assert set(scores) >= {"accuracy", "macro_f1", "n", "per_class", "confusion"}

    # Only the held-out split of FER2013's test/ folder (6 PrivateTest images per class).
    result = subprocess.run(
        [PYTHON, "run_pipeline.py", "evaluate", "--model", str(out), "--data", str(small_fer / "test"), "--prefix",
         "PrivateTest_", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["n"] == 42

    # An ensemble of the model with itself is served as one .tflite and scores exactly like it.
    result = subprocess.run(
        [PYTHON, "run_pipeline.py", "ensemble", str(out), str(out), "--data", str(small_fer), "--out", str(tmp_path / "ens"),
         "--score-test"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    ensemble = json.loads((tmp_path / "ens" / "model.json").read_text())
    assert len(ensemble["members"]) == 2 and ensemble["channels"] == 2 and ensemble["evaluation"]["n"] == 42
    assert ensemble["evaluation"]["confusion"] == meta["evaluation"]["confusion"]

    result = subprocess.run(
        [PYTHON, "run_pipeline.py", "ensemble", str(out), "--data", str(small_fer), "--out", str(tmp_path / "float"),
         "--no-quantize"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    floats = json.loads((tmp_path / "float" / "model.json").read_text())
    assert floats["quantization"] == "none: float32" and floats["tflite_bytes"] > 3 * meta["tflite_bytes"]
    # Without --score-test the test split is left alone: model choices rest on validation.
    assert floats["evaluation"]["split"] == "validation (test split not scored)"
    assert floats["evaluation"]["n"] == floats["validation"]["n"] == 42


def test_interrupted_training_resumes_from_its_last_epoch(small_fer, tmp_path):
    out = tmp_path / "model"
    proc = train_cli(small_fer, out, "--epochs", "3")
    deadline = time.monotonic() + 300
    while len(history_epochs(out)) < 1 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.kill()  # like a session that ends mid-training
    proc.wait()
    done = history_epochs(out)
    assert done and len(done) < 3 and (out / "checkpoint").exists()

    again = train_cli(small_fer, out, "--epochs", "3")
    output, _ = again.communicate(timeout=300)
    assert again.returncode != 0 and "pass --resume" in output

    resumed = train_cli(small_fer, out, "--epochs", "3", "--resume")
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, output[-3000:]
    assert history_epochs(out) == [0, 1, 2]  # continued, not restarted
    assert not (out / "checkpoint").exists() and (out / "emotion.tflite").exists()
