"""Training for real, on a few hundred FER2013 images (TensorFlow, about a minute in all)."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import time

import pytest

from pipeline.vision.faces import SEGMENTATION_VERSION
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


def evaluate_cli(model, data, *extra: str) -> dict:
    """``evaluate --json`` on a trained model; returns its scores."""
    result = subprocess.run(
        [PYTHON, "run_pipeline.py", "evaluate", "--model", str(model), "--data", str(data), "--json", *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def history_epochs(out) -> list[int]:
    path = out / "history.csv"
    if not path.exists():
        return []
    with open(path) as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


def test_one_epoch_gives_a_model_that_loads_and_evaluates(small_fer, tmp_path):
    out = tmp_path / "model"
    proc = train_cli(small_fer, out, "--epochs", "1", "--segmentation", "on", "--camera", "0.5", "--score-test")
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output[-3000:]
    for name in ("emotion.keras", "emotion.tflite", "model.json", "curves.png", "confusion.png", "report.txt"):
        assert (out / name).exists(), name
    meta = json.loads((out / "model.json").read_text())
    assert meta["channels"] == 2
    assert meta["segmentation"] == {
        "enabled": True, "mode": "on", "k": 4, "function": "pipeline.vision.faces.segment_face", "version": SEGMENTATION_VERSION
    }  # fmt: skip
    assert meta["evaluation"]["split"] == "test (PrivateTest)" and meta["evaluation"]["n"] == 42
    assert meta["quantization"].startswith("dynamic-range")  # int8 weights unless --no-quantize
    assert meta["training"]["config"]["camera"] == 0.5

    scores = evaluate_cli(out, small_fer / "train")
    assert scores["n"] == 7 * PER_CLASS
    assert 0.0 <= scores["accuracy"] <= 1.0 and len(scores["confusion"]) == 7
    assert set(scores) >= {"accuracy", "macro_f1", "n", "per_class", "confusion"}

    # Only the held-out split of FER2013's test/ folder (6 PrivateTest images per class).
    assert evaluate_cli(out, small_fer / "test", "--prefix", "PrivateTest_")["n"] == 42

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
    # The training CPU of the members, summed (here the same run twice).
    assert meta["training"]["cpu_seconds"] > 0
    cpu = round(2 * meta["training"]["cpu_seconds"], 1)
    assert ensemble["training"] == {"cpu_seconds": cpu, "members_without_cpu_seconds": []}

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
    recipe = ("--epochs", "3", "--width", "0.5", "--erase", "0.5")
    proc = train_cli(small_fer, out, *recipe)
    deadline = time.monotonic() + 300
    while len(history_epochs(out)) < 1 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.kill()  # like a session that ends mid-training
    proc.wait()
    done = history_epochs(out)
    assert done and len(done) < 3 and (out / "checkpoint").exists()

    again = train_cli(small_fer, out, *recipe)
    output, _ = again.communicate(timeout=300)
    assert again.returncode != 0 and "pass --resume" in output

    # Resumed with one option forgotten: refused, naming it, and the run is left as it was.
    forgot = train_cli(small_fer, out, "--epochs", "3", "--erase", "0.5", "--resume")
    output, _ = forgot.communicate(timeout=300)
    assert forgot.returncode != 0 and "width 0.5 -> 1.0" in output, output[-3000:]
    assert history_epochs(out) == done and (out / "checkpoint").exists()

    resumed = train_cli(small_fer, out, *recipe, "--resume", "--no-quantize")  # export options may change
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, output[-3000:]
    assert history_epochs(out) == [0, 1, 2]  # continued, not restarted
    assert not (out / "checkpoint").exists() and (out / "emotion.tflite").exists()
    meta = json.loads((out / "model.json").read_text())
    assert meta["training"]["config"]["width"] == 0.5 and meta["quantization"] == "none: float32"


def _fer_faces(fer_dir, n: int = 3):
    """A few real FER2013 faces (gray, uint8) from different classes, and their K-means channels."""
    import numpy as np

    from train.data import read_face, segmentation_channels

    paths = [sorted((fer_dir / "test" / name).glob("PublicTest_*"))[0] for name in ("happy", "surprise", "sad")[:n]]
    faces = np.stack([read_face(p) for p in paths])
    return faces, segmentation_channels(faces, 4)


def test_attention_model_is_served_like_keras_with_both_channels_mirrored(fer_dir, tmp_path):
    import keras
    import numpy as np

    from pipeline.vision.emotions import EMOTIONS
    from pipeline.vision.faces import model_input
    from pipeline.vision.model import EmotionModel
    from train.model import build_model, export_tflite

    keras.utils.set_random_seed(0)
    model = build_model(2, len(EMOTIONS), attention=True)
    # The gates start constant (zero kernels): give them weights so the K-means map matters here,
    # and sharpen the logits so that an untrained net's probabilities are not all close to 1/7.
    rng = np.random.default_rng(0)
    for size in (24, 12):
        layer = model.get_layer(f"kmeans_gate{size}")
        layer.set_weights([rng.normal(0, 2, w.shape).astype(np.float32) for w in layer.get_weights()])
    logits = model.get_layer("logits")
    logits.set_weights([w * 100 for w in logits.get_weights()])
    export_tflite([model], str(tmp_path / "emotion.tflite"), quantize=False)  # float32: exact; int8 in the next test
    segmentation = {"enabled": True, "mode": "attention", "k": 4, "version": SEGMENTATION_VERSION}
    (tmp_path / "model.json").write_text(
        json.dumps({"classes": list(EMOTIONS), "input_size": 48, "channels": 2, "segmentation": segmentation})
    )
    served = EmotionModel(tmp_path)
    assert served.info.segmentation and served.info.segmentation_mode == "attention"

    faces, seg = _fer_faces(fer_dir)
    x = model_input(faces, seg)

    def keras_probs(view: np.ndarray) -> np.ndarray:
        return keras.ops.convert_to_numpy(keras.ops.softmax(model(view)))

    mirrored = x[:, :, ::-1, :]  # gray and segmentation flipped together
    expected = (keras_probs(x) + keras_probs(mirrored)) / 2
    np.testing.assert_allclose(served.predict(x), expected, rtol=0, atol=1e-6)
    # The segmentation is used, and a mirror of the gray face alone would be another model: both
    # differ from the served output by far more than the 1e-6 it is allowed to differ from Keras.
    assert np.abs(served.predict(model_input(faces, np.zeros_like(seg))) - expected).max() > 1e-4
    gray_only = np.concatenate([mirrored[..., :1], x[..., 1:]], axis=-1)
    assert np.abs((keras_probs(x) + keras_probs(gray_only)) / 2 - expected).max() > 1e-4


def test_one_epoch_with_kmeans_attention_records_the_mode_and_evaluates(small_fer, tmp_path):
    out = tmp_path / "model"
    proc = train_cli(small_fer, out, "--epochs", "1", "--segmentation", "attention")
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output[-3000:]
    meta = json.loads((out / "model.json").read_text())
    assert meta["channels"] == 2 and meta["training"]["config"]["segmentation"] == "attention"
    assert meta["quantization"].startswith("dynamic-range")  # the gates survive the int8 export
    assert meta["segmentation"] == {
        "enabled": True, "mode": "attention", "k": 4,
        "function": "pipeline.vision.faces.segment_face", "version": SEGMENTATION_VERSION,
    }  # fmt: skip
    assert evaluate_cli(out, small_fer / "test", "--prefix", "PrivateTest_")["n"] == 42


def test_width_scales_every_layer():
    from train.model import build_model

    def filters(model):
        return [layer.filters for layer in model.layers if hasattr(layer, "filters")]

    assert filters(build_model(1, 7)) == [32, 64, 64, 128, 128, 256, 256]
    assert filters(build_model(1, 7, width=1.5)) == [48, 96, 96, 192, 192, 384, 384]
    assert build_model(1, 7, width=2).count_params() > 3.5 * build_model(1, 7).count_params()
    with pytest.raises(ValueError, match="width"):
        build_model(1, 7, width=0)
