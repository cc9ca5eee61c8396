"""Train the emotion CNN: setup, data, model, train, evaluate, export.

Resumable: Keras' BackupAndRestore keeps the weights, optimizer state and epoch counter in
``OUT/checkpoint/`` after every epoch, and ``--resume`` continues from there. The best epoch
on the validation split (FER2013 PublicTest) is kept in ``OUT/emotion.keras``; the test
split (PrivateTest) is only used once, at the end, to report figures.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import DataError
from pipeline.vision.emotions import EMOTIONS
from pipeline.vision.faces import FACE_SIZE, FER_FRAMING, SEGMENTATION_VERSION, lift_dim, model_input
from pipeline.vision.model import (
    METADATA_NAME,
    SEGMENTATION_MODES,
    TFLITE_NAME,
    EmotionModel,
    ModelInfo,
    model_facts,
    resolve_model_path,
)
from train import report
from train.data import FaceSet, first_per_class, load_splits, segmentation_channels

log = logging.getLogger(__name__)

PREPROCESSING = (
    "gray face crop (pipeline.vision.faces.crop_face, framed as 'crop' says) resized to 48x48, raw 0..255 float32; "
    "scaling is inside the model"
)
CACHE_DIR = Path(os.environ.get("EMOTION_CACHE", Path.home() / ".cache" / "emotion-pipeline"))
OPTIONS_NAME = "options.json"  # in OUT/checkpoint/: the training options an unfinished run started with
# Options that only touch the export and the report, or the machine: free to change on --resume.
_FREE_ON_RESUME = ("data", "out", "resume", "threads", "quantize", "score_test")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (recorded in the model's metadata)."""

    data: str
    out: str
    epochs: int = 24
    batch_size: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    label_smoothing: float = 0.1
    class_weight_power: float = 0.5  # 0: none, 1: fully balanced; 0.5 trades little accuracy for minority recall
    patience: int = 6  # epochs without a validation gain before stopping; 0 = never stop early
    erase: float = 0.0  # probability of blanking a random rectangle of each training face (random erasing)
    camera: float = 0.0  # probability of sensor noise, and of a lower resolution, per training face
    segmentation: str = "off"  # K-means segmentation: "off", "on" (2nd input channel), "attention" (SEGMENTATION_MODES)
    segmentation_k: int = 4
    width: float = 1.0  # multiplies every layer's filters (train.model.build_model); compute grows as its square
    teacher: str | None = None  # a served model directory to distil from (see distill_targets)
    distill_weight: float = 0.5  # the teacher's share of each target, 0..1
    distill_temperature: float = 2.0  # > 1 flattens the teacher's probabilities, < 1 sharpens them
    seed: int = 1234
    limit: int | None = None  # use only the first N training images per class (quick runs, tests)
    threads: int = 0  # TensorFlow threads per op; 0 = all cores. Two runs side by side do best with 1 each.
    quantize: bool = True  # export int8 weights (train.model.export_tflite)
    score_test: bool = False  # also score the test split at the end: once, for the model you ship
    resume: bool = False

    def __post_init__(self) -> None:
        if self.segmentation not in SEGMENTATION_MODES:
            raise ValueError(f"segmentation: must be one of {', '.join(SEGMENTATION_MODES)}, got {self.segmentation!r}")
        if not self.width > 0.0:
            raise ValueError(f"width: must be > 0, got {self.width}")
        if not 0.0 <= self.camera <= 1.0:
            raise ValueError(f"camera: must be in 0..1, got {self.camera}")
        if not 0.0 <= self.distill_weight <= 1.0:
            raise ValueError(f"distill_weight: must be in 0..1, got {self.distill_weight}")
        if not self.distill_temperature > 0.0:
            raise ValueError(f"distill_temperature: must be > 0, got {self.distill_temperature}")

    @property
    def channels(self) -> int:
        """The model's input channels: gray, then the segmentation channel unless it is off."""
        return 1 if self.segmentation == "off" else 2


def _channels(faces: FaceSet, cfg: TrainConfig, name: str) -> np.ndarray:
    if cfg.segmentation == "off":
        return model_input(faces.images)
    cache = CACHE_DIR / f"seg-v{SEGMENTATION_VERSION}-k{cfg.segmentation_k}-{name}-{faces.fingerprint()}.npy"
    t0 = time.time()
    seg = segmentation_channels(faces.images, cfg.segmentation_k, cache)
    log.info("segmentation channel for %s: %d faces in %.1fs (cache %s)", name, len(faces), time.time() - t0, cache)
    return model_input(faces.images, seg)


def class_weights(labels: np.ndarray, power: float) -> np.ndarray:
    """Per-class loss weights (n_max / n_c) ** power, normalised to a mean of 1 over samples."""
    counts = np.bincount(labels, minlength=len(EMOTIONS)).astype(float)
    weights = np.where(counts > 0, (counts.max() / np.maximum(counts, 1)) ** power, 0.0)
    return weights / (weights[labels].mean())


def soften(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities ``p ** (1/T)`` renormalised to sum 1 per row: flatter for T > 1, sharper below.

    For ``p = softmax(z)`` this is ``softmax(z / T)``, the usual softened teacher; written on the
    probabilities because an ensemble averages probabilities and has no single set of logits.
    """
    # In log space, so that a small T does not underflow every entry of a row to 0.
    log_p = np.log(np.maximum(probs.astype(np.float64), np.finfo(np.float64).tiny)) / temperature
    powered = np.exp(log_p - log_p.max(axis=-1, keepdims=True))
    return powered / powered.sum(axis=-1, keepdims=True)


def distill_targets(labels: np.ndarray, teacher_probs: np.ndarray, weight: float, temperature: float) -> np.ndarray:
    """Training targets (N, classes) float32: ``(1 - weight) * one_hot(labels) + weight * soften(teacher_probs, T)``."""
    one_hot = np.eye(teacher_probs.shape[-1])[labels]
    return ((1.0 - weight) * one_hot + weight * soften(teacher_probs, temperature)).astype(np.float32)


def teacher_probabilities(
    teacher: str | Path, faces: FaceSet, x: np.ndarray, segmentation_k: int | None = None, threads: int = 1
) -> np.ndarray:
    """A served model's probabilities (N, classes) on un-augmented faces, cached in ``CACHE_DIR``.

    The cache is named by the fingerprints of the teacher's ``.tflite`` and of ``faces``, so a
    resumed run reads it instead of running the teacher again.

    Args:
        teacher: a model directory (``model.json`` and ``emotion.tflite``), such as an ``ensemble``.
        faces: the faces, in the order of ``x``.
        x: this run's model input for them: gray, then the segmentation channel if it has one.
        segmentation_k: the k of that segmentation channel; None if the run has none.
        threads: LiteRT threads.

    Raises:
        DataError: the teacher's classes are not ``EMOTIONS``, or its input needs a segmentation
            channel that this run does not have.
    """
    path = resolve_model_path(teacher)
    info = ModelInfo.load(path / METADATA_NAME)
    if info.classes != EMOTIONS:
        raise DataError(f"--teacher {teacher}: its classes {list(info.classes)} are not {list(EMOTIONS)}")
    version = info.raw["segmentation"].get("version") if info.segmentation else None
    if info.segmentation and (segmentation_k != info.segmentation_k or version != SEGMENTATION_VERSION):
        ours = "none" if segmentation_k is None else f"k={segmentation_k}, version {SEGMENTATION_VERSION}"
        raise DataError(
            f"--teacher {teacher}: needs a segmentation channel with k={info.segmentation_k}, version {version}; "
            f"this run's is {ours}"
        )
    cache = CACHE_DIR / f"teacher-{model_facts(path)['fingerprint']}-{faces.fingerprint()}.npy"
    if cache.exists():
        probs = np.load(cache)
        if probs.shape == (len(faces), len(EMOTIONS)):
            log.info("teacher %s: probabilities of %d faces read from %s", teacher, len(faces), cache)
            return probs
    t0 = time.time()
    # A teacher without the segmentation channel takes the gray channel alone.
    probs = _predict(EmotionModel(path, threads=threads), x[..., : info.channels])
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, probs)
    log.info("teacher %s: probabilities of %d faces in %.1fs (cache %s)", teacher, len(faces), time.time() - t0, cache)
    return probs


def _targets(cfg: TrainConfig, faces: FaceSet, x: np.ndarray) -> np.ndarray | None:
    """The distilled training targets, or None without a teacher (plain one-hot labels)."""
    if cfg.teacher is None:
        return None
    segmentation_k = cfg.segmentation_k if cfg.segmentation != "off" else None
    probs = teacher_probabilities(cfg.teacher, faces, x, segmentation_k, threads=cfg.threads or os.cpu_count() or 1)
    # A teacher trained on these same faces has partly learned their labels: the nearer this is to
    # 100 %, the less its targets add to the label.
    log.info("teacher agrees with %.1f%% of the training labels", 100 * np.mean(probs.argmax(axis=1) == faces.labels))
    return distill_targets(faces.labels, probs, cfg.distill_weight, cfg.distill_temperature)


def run_training(cfg: TrainConfig) -> dict:
    """Train, export and evaluate; return the metadata written to ``OUT/model.json``."""
    # --- setup ---------------------------------------------------------------
    import keras
    import tensorflow as tf

    from train.model import build_augmenter, build_model, camera_degradation, photometric, random_erasing

    if cfg.threads:
        tf.config.threading.set_intra_op_parallelism_threads(cfg.threads)
        tf.config.threading.set_inter_op_parallelism_threads(cfg.threads)
    out = Path(cfg.out)
    backup = out / "checkpoint"
    if backup.exists() and not cfg.resume:
        raise DataError(f"{out}: holds an unfinished run ({backup}); pass --resume to continue it or choose another --out")
    options = _check_resumed_options(cfg, backup / OPTIONS_NAME)
    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(cfg.seed)

    # --- data ----------------------------------------------------------------
    t0 = time.time()
    train_set, val_set, test_set = load_splits(cfg.data)
    if cfg.limit:
        train_set, val_set = first_per_class(train_set, cfg.limit), first_per_class(val_set, max(cfg.limit // 4, 8))
    log.info(
        "data: %d train, %d validation, %s test faces, loaded in %.1fs; train classes %s",
        len(train_set),
        len(val_set),
        len(test_set) if test_set else "no",
        time.time() - t0,
        train_set.class_counts(),
    )
    x_train, x_val = _channels(train_set, cfg, "train"), _channels(val_set, cfg, "val")
    channels = x_train.shape[-1]
    weights = class_weights(train_set.labels, cfg.class_weight_power)  # by the hard label, with or without a teacher
    n_classes = len(EMOTIONS)
    targets = _targets(cfg, train_set, x_train)

    augment = build_augmenter(cfg.seed)

    def train_batch(x, y, target=None):
        x = photometric(augment(x, training=True))
        if cfg.erase:
            x = random_erasing(x, cfg.erase)
        if cfg.camera:
            x = camera_degradation(x, cfg.camera)
        target = tf.one_hot(y, n_classes) if target is None else target
        return x, target, tf.gather(weights.astype(np.float32), y)

    # Distilled targets travel with their image through shuffle and batch; without a teacher the
    # dataset holds (image, label) and the target is the one-hot label.
    slices = (x_train, train_set.labels) if targets is None else (x_train, train_set.labels, targets)
    train_ds = (
        tf.data.Dataset.from_tensor_slices(slices)
        .shuffle(len(x_train), seed=cfg.seed, reshuffle_each_iteration=True)
        .batch(cfg.batch_size)
        .map(train_batch, num_parallel_calls=1)
        .prefetch(2)
    )
    val_ds = tf.data.Dataset.from_tensor_slices((x_val, tf.one_hot(val_set.labels, n_classes))).batch(256).prefetch(1)

    # --- model ---------------------------------------------------------------
    model = build_model(channels, n_classes, attention=cfg.segmentation == "attention", width=cfg.width)
    steps = cfg.epochs * int(np.ceil(len(x_train) / cfg.batch_size))
    schedule = keras.optimizers.schedules.CosineDecay(
        cfg.learning_rate / 10,
        decay_steps=steps,
        alpha=0.01,
        warmup_target=cfg.learning_rate,
        warmup_steps=steps // cfg.epochs,
    )
    model.compile(
        optimizer=keras.optimizers.AdamW(schedule, weight_decay=cfg.weight_decay),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=cfg.label_smoothing),
        metrics=["accuracy"],
    )
    log.info("model: %d parameters, input %s", model.count_params(), model.input_shape)

    # --- train ---------------------------------------------------------------
    history_csv = out / "history.csv"
    best_path = out / "emotion.keras"
    best_so_far = _best_val_accuracy(history_csv) if cfg.resume else None
    callbacks = [
        _EpochTimer(len(x_train)),
        keras.callbacks.BackupAndRestore(str(backup)),
        keras.callbacks.ModelCheckpoint(
            str(best_path), monitor="val_accuracy", mode="max", save_best_only=True, initial_value_threshold=best_so_far
        ),
        *([keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max", patience=cfg.patience)] if cfg.patience else []),
        keras.callbacks.CSVLogger(str(history_csv), append=cfg.resume),
    ]
    backup.mkdir(exist_ok=True)
    (backup / OPTIONS_NAME).write_text(json.dumps(options, indent=1))  # what a --resume must match
    t_train = time.time()
    model.fit(train_ds, validation_data=val_ds, epochs=cfg.epochs, callbacks=callbacks, verbose=1 if sys.stderr.isatty() else 2)
    log.info("training took %.0fs this session", time.time() - t_train)
    shutil.rmtree(backup, ignore_errors=True)  # the run is finished: nothing to resume
    return finalize(cfg, (train_set, val_set, test_set))


def _check_resumed_options(cfg: TrainConfig, path: Path) -> dict:
    """Return the options that shape training; refuse a --resume that changes any of them.

    A run resumed over several days is easily continued with one option forgotten. It would
    then go on as another recipe, or fail to load its weights with an obscure error.
    """
    options = {k: v for k, v in cfg.__dict__.items() if k not in _FREE_ON_RESUME}
    if cfg.resume and path.exists():
        started = json.loads(path.read_text())
        # Only what the run recorded: an option added since it started cannot have been given then.
        changed = [f"{k} {was!r} -> {options[k]!r}" for k, was in started.items() if k in options and options[k] != was]
        if changed:
            raise DataError(f"{cfg.out}: --resume with other training options than the run started with "
                            f"({', '.join(changed)}); give the options it started with")  # fmt: skip
    return options


def finalize(
    cfg: TrainConfig, splits: tuple[FaceSet, FaceSet, FaceSet | None] | None = None, weights: Path | None = None
) -> dict:
    """Export the best epoch of a finished run in ``cfg.out`` and evaluate it.

    Writes ``emotion.tflite``, ``model.json``, ``curves.png``, ``confusion.png`` and
    ``report.txt``. The test split is scored here and nowhere else, and only with
    ``cfg.score_test``: model choices rest on validation. With ``weights`` (such as
    ``checkpoint/latest.weights.h5`` of an unfinished run) those weights are exported instead,
    with the ``history.csv`` found beside them.
    """
    import keras
    import tensorflow as tf

    from train.model import build_model, export_tflite, quantization

    out = Path(cfg.out)
    train_set, val_set, test_set = splits or load_splits(cfg.data)
    if splits is None and cfg.limit:
        train_set, val_set = first_per_class(train_set, cfg.limit), first_per_class(val_set, max(cfg.limit // 4, 8))
    if weights is not None:
        out.mkdir(parents=True, exist_ok=True)
        model = build_model(cfg.channels, len(EMOTIONS), attention=cfg.segmentation == "attention", width=cfg.width)
        model.load_weights(weights)
        model.save(out / "emotion.keras")
        if (weights.parent / "history.csv").exists() and not (out / "history.csv").exists():
            shutil.copy(weights.parent / "history.csv", out / "history.csv")
    # Shipped without the optimizer state (a third of the size); resuming uses checkpoint/.
    best = keras.models.load_model(out / "emotion.keras", compile=False)
    best.save(out / "emotion.keras")
    tflite_bytes = export_tflite([best], str(out / TFLITE_NAME), quantize=cfg.quantize)
    history = _read_history(out / "history.csv")
    enabled = cfg.segmentation != "off"
    segmentation = {
        "enabled": enabled,  # the input has the segmentation channel: what serving reads
        "mode": cfg.segmentation,  # how the model uses it
        "k": cfg.segmentation_k if enabled else 0,
        "function": "pipeline.vision.faces.segment_face",
        "version": SEGMENTATION_VERSION if enabled else None,
    }
    meta = {
        **_served_model([best], segmentation, tflite_bytes, "output averages the face and its mirror image"),
        "quantization": quantization(cfg.quantize),
        "training": {
            "config": {k: v for k, v in cfg.__dict__.items() if k not in ("out", "resume", "threads")},
            "teacher": _teacher_record(cfg.teacher),
            "data_fingerprint": train_set.fingerprint(),
            "train_images": len(train_set),
            "validation_images": len(val_set),
            "skipped_images": len(train_set.skipped) + len(val_set.skipped),
            "epochs_run": len(history),
            "best_epoch": 1 + int(np.argmax([h["val_accuracy"] for h in history])) if history else None,
            "best_val_accuracy": round(max(h["val_accuracy"] for h in history), 4) if history else None,
            "seconds": round(sum(h.get("epoch_seconds", 0.0) for h in history), 1),
            "cpu_seconds": round(sum(h.get("epoch_cpu_seconds", 0.0) for h in history), 1) or None,
            "images_per_second": round(float(np.median([h.get("images_per_second", 0.0) for h in history] or [0])), 1),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, TensorFlow {tf.__version__}",
        },
    }
    report.plot_curves(out / "history.csv", out / "curves.png")
    return _evaluate_and_write(out, meta, val_set, test_set if cfg.score_test else None)


def export_ensemble(
    model_dirs: list[Path], out: Path, data: str, mirror: bool = True, quantize: bool = True, score_test: bool = False
) -> dict:
    """Serve several trained models as one ``.tflite`` that averages their probabilities.

    Members may differ in their input (with or without the segmentation channel); the
    ensemble takes the widest. Evaluated like ``finalize``: validation, and with ``score_test``
    the test split.
    """
    import keras

    from train.model import export_tflite, quantization

    metas = [json.loads((d / METADATA_NAME).read_text()) for d in model_dirs]
    segmented = [m["segmentation"] for m in metas if m["segmentation"]["enabled"]]
    if any(m["classes"] != list(EMOTIONS) for m in metas) or len({(s["k"], s["version"]) for s in segmented}) > 1:
        raise DataError(f"{', '.join(map(str, model_dirs))}: members differ in classes or segmentation; they cannot be averaged")
    members = [keras.models.load_model(d / "emotion.keras", compile=False) for d in model_dirs]
    _, val_set, test_set = load_splits(data)
    out.mkdir(parents=True, exist_ok=True)
    averaging = "output averages the members' probabilities" + (" over the face and its mirror image" if mirror else "")
    segmentation = segmented[0] if segmented else metas[0]["segmentation"]
    meta = {
        **_served_model(members, segmentation, export_tflite(members, str(out / TFLITE_NAME), mirror, quantize), averaging),
        "quantization": quantization(quantize),
        "members": [
            {"model": str(d), **{k: m.get(k) for k in ("segmentation", "training", "validation", "evaluation")}}
            for d, m in zip(model_dirs, metas)
        ],
        "training": _members_cost(model_dirs, metas),
    }
    return _evaluate_and_write(out, meta, val_set, test_set if score_test else None)


def _members_cost(model_dirs: list[Path], metas: list[dict]) -> dict:
    """The members' training CPU time, summed; members trained before it was recorded are named.

    A distilled member's teacher is not counted: its own members are usually in the ensemble.
    """
    cpu = [(m.get("training") or {}).get("cpu_seconds") for m in metas]
    return {
        "cpu_seconds": round(sum(c for c in cpu if c), 1),
        "members_without_cpu_seconds": [str(d) for d, c in zip(model_dirs, cpu) if not c],
    }


def _teacher_record(teacher: str | None) -> dict | None:
    """What ``model.json`` says of the teacher: its path, ``.tflite`` fingerprint and validation accuracy."""
    if teacher is None:
        return None
    facts = model_facts(teacher)
    validation = ModelInfo.load(Path(facts["path"]) / METADATA_NAME).raw.get("validation") or {}
    return {"path": teacher, "fingerprint": facts["fingerprint"], "validation_accuracy": validation.get("accuracy")}


def _served_model(members: list, segmentation: dict, tflite_bytes: int, output: str) -> dict:
    """The part of ``model.json`` that serving reads (``pipeline.vision.model.ModelInfo``)."""
    return {
        "format": 1,
        "classes": list(EMOTIONS),
        "input_size": FACE_SIZE,
        "channels": max(int(m.input_shape[-1]) for m in members),
        "preprocessing": f"{PREPROCESSING}; {output}",
        # Trained on FER2013's framing: serving maps a Haar box onto it (pipeline.vision.faces.FER_FRAMING).
        "crop": FER_FRAMING.as_dict(),
        "segmentation": segmentation,
        "parameters": sum(int(m.count_params()) for m in members),
        "tflite_bytes": tflite_bytes,
    }


def _evaluate_and_write(out: Path, meta: dict, val_set: FaceSet, test_set: FaceSet | None) -> dict:
    """Score the exported model on validation and test; write model.json, confusion.png, report.txt."""
    (out / METADATA_NAME).write_text(json.dumps(meta, indent=2) + "\n")  # EmotionModel reads it
    served = EmotionModel(out)
    v = evaluate_faces(served, val_set)
    meta["validation"] = {"split": "validation (PublicTest)", **{k: v[k] for k in ("n", "accuracy", "macro_f1")}}
    if test_set is None:
        m, split = v, "validation (test split not scored)"
    else:
        m, split = evaluate_faces(served, test_set), "test (PrivateTest)"
    meta["evaluation"] = {"split": split, **{k: m[k] for k in ("n", "accuracy", "macro_f1", "per_class", "confusion")}}
    (out / METADATA_NAME).write_text(json.dumps(meta, indent=2) + "\n")
    report.plot_confusion(m["confusion"], EMOTIONS, out / "confusion.png", f"{split}: accuracy {m['accuracy']:.3f}")
    (out / "report.txt").write_text(report.format_report(m, f"{out} on {split}"))
    log.info("%s: accuracy %.4f, macro-F1 %.4f on %d faces", split, m["accuracy"], m["macro_f1"], m["n"])
    return meta


def evaluate_faces(model: EmotionModel, faces: FaceSet, batch: int = 256, lift: bool = True) -> dict:
    """Classify already-cropped faces with the served (.tflite) model and score them.

    ``lift``: dim faces are lifted first, as the classify stage does by default (``lift_dim``).
    """
    probs = served_probabilities(model, faces, batch, lift)
    return report.metrics(faces.labels, probs.argmax(axis=1), model.classes)


def served_probabilities(model: EmotionModel, faces: FaceSet, batch: int = 256, lift: bool = True) -> np.ndarray:
    """The served model's probabilities (N, classes) for already-cropped faces, as ``evaluate_faces`` scores them."""
    return _predict(model, served_input(model, faces.images, lift), batch)


def served_input(model: EmotionModel, images: np.ndarray, lift: bool = True) -> np.ndarray:
    """The CNN's input for faces (N, 48, 48): lifted if dim, with the K-means channel if the model has one."""
    info = model.info
    seg = None
    if info.segmentation:
        pixels = hashlib.sha256(images.tobytes()).hexdigest()[:16]  # degraded faces have the same names
        seg = segmentation_channels(
            images, info.segmentation_k, CACHE_DIR / f"seg-v{SEGMENTATION_VERSION}-k{info.segmentation_k}-eval-{pixels}.npy"
        )
    return model_input(lift_dim(images) if lift else images, seg)


def _predict(model: EmotionModel, x: np.ndarray, batch: int = 256) -> np.ndarray:
    return np.concatenate([model.predict(x[i : i + batch]) for i in range(0, len(x), batch)])


class _EpochTimer:
    """Adds ``epoch_seconds``, ``epoch_cpu_seconds`` (the process's CPU time, all threads) and
    ``images_per_second`` to each epoch's logs (and so to history.csv, which survives resumes)."""

    def __new__(cls, n_images: int):
        import keras

        class EpochTimer(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self._t, self._cpu = time.time(), time.process_time()

            def on_epoch_end(self, epoch, logs=None):
                seconds = time.time() - self._t
                if logs is not None:
                    logs["epoch_seconds"] = round(seconds, 1)
                    logs["epoch_cpu_seconds"] = round(time.process_time() - self._cpu, 1)
                    logs["images_per_second"] = round(n_images / seconds, 1)

        return EpochTimer()


def _read_history(path: Path) -> list[dict[str, float]]:
    if not path.exists():
        return []
    with open(path) as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


def _best_val_accuracy(path: Path) -> float | None:
    history = _read_history(path)
    return max((h["val_accuracy"] for h in history), default=None)
