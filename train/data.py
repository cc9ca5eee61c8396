"""Loading labelled face images: the FER2013 image-folder layout and the original csv.

An image folder is ``ROOT/<emotion>/*.{jpg,png,...}`` where every subfolder is a FER class
name. Some classes may be missing (evaluation on a partial set); an unknown folder name is an
error; an unreadable image is skipped with a warning and counted.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from pipeline.errors import DataError
from pipeline.vision.emotions import EMOTIONS, IMAGE_SUFFIXES
from pipeline.vision.faces import FACE_SIZE, segment_face, segmentation_channel

log = logging.getLogger(__name__)


@dataclass
class FaceSet:
    """Faces (N, 48, 48) uint8, labels (N,) indexing ``EMOTIONS``, and where they came from."""

    images: np.ndarray
    labels: np.ndarray
    paths: list[str]
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(EMOTIONS))
        return {name: int(c) for name, c in zip(EMOTIONS, counts)}

    def fingerprint(self) -> str:
        """A short hash of the file names and labels, stored in the model's metadata."""
        h = hashlib.sha256()
        for path, label in zip(self.paths, self.labels):
            h.update(f"{Path(path).parent.name}/{Path(path).name}:{label}\n".encode())
        return h.hexdigest()[:16]


def list_image_folder(root: str | Path, prefix: str | None = None) -> list[tuple[Path, int]]:
    """List ``(path, label)`` for every image under ``root/<emotion>/``.

    Args:
        root: the folder holding one subfolder per class.
        prefix: keep only files whose name starts with it (``PrivateTest_``, ...).

    Raises:
        DataError: the folder does not exist, has an unknown class folder, or no image.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    items: list[tuple[Path, int]] = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        name = sub.name.lower()
        if name not in EMOTIONS:
            raise DataError(f"{sub}: unknown class folder {sub.name!r}; expected one of {', '.join(EMOTIONS)}")
        label = EMOTIONS.index(name)
        for path in sorted(sub.iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES and (prefix is None or path.name.startswith(prefix)):
                items.append((path, label))
    if not items:
        what = f" named {prefix}*" if prefix else ""
        raise DataError(f"{root}: no images{what} in class folders ({', '.join(EMOTIONS)})")
    return items


def read_face(path: Path) -> np.ndarray | None:
    """Read an image as gray 48x48, or ``None`` if it cannot be decoded."""
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        return None
    if image.shape != (FACE_SIZE, FACE_SIZE):
        image = cv2.resize(image, (FACE_SIZE, FACE_SIZE), interpolation=cv2.INTER_AREA)
    return image


def load_image_folder(root: str | Path, prefix: str | None = None) -> FaceSet:
    """Load an image folder (see ``list_image_folder``) into memory as 48x48 gray faces."""
    images, labels, paths, skipped = [], [], [], []
    for path, label in list_image_folder(root, prefix):
        image = read_face(path)
        if image is None:
            log.warning("skipping unreadable image %s", path)
            skipped.append(str(path))
            continue
        images.append(image)
        labels.append(label)
        paths.append(str(path))
    if not images:
        raise DataError(f"{root}: none of the {len(skipped)} images could be read")
    return FaceSet(np.stack(images), np.asarray(labels, dtype=np.int32), paths, skipped)


def first_per_class(faces: FaceSet, limit: int) -> FaceSet:
    """At most ``limit`` faces of each class, the first in file order (quick, repeatable runs)."""
    keep = np.concatenate([np.flatnonzero(faces.labels == c)[:limit] for c in np.unique(faces.labels)])
    keep.sort()
    return FaceSet(faces.images[keep], faces.labels[keep], [faces.paths[i] for i in keep], faces.skipped)


def load_fer_csv(path: str | Path, usage: str) -> FaceSet:
    """Load one usage (``Training``, ``PublicTest``, ``PrivateTest``) of the original fer2013.csv."""
    images, labels, paths, skipped = [], [], [], []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"emotion", "pixels", "Usage"} - set(reader.fieldnames or ())
        if missing:
            raise DataError(f"{path}: missing csv columns {sorted(missing)}")
        for row_no, row in enumerate(reader, start=2):
            if row["Usage"] != usage:
                continue
            where = f"{path}:{row_no}"
            try:
                pixels = np.array(row["pixels"].split(), dtype=np.uint8).reshape(FACE_SIZE, FACE_SIZE)
                label = int(row["emotion"])
                if not 0 <= label < len(EMOTIONS):
                    raise ValueError(f"emotion {label} out of range 0..{len(EMOTIONS) - 1}")
            except ValueError as exc:
                log.warning("skipping %s: %s", where, exc)
                skipped.append(where)
                continue
            images.append(pixels)
            labels.append(label)
            paths.append(where)
    if not images:
        raise DataError(f"{path}: no rows with Usage={usage}")
    return FaceSet(np.stack(images), np.asarray(labels, dtype=np.int32), paths, skipped)


def load_splits(data: str | Path) -> tuple[FaceSet, FaceSet, FaceSet | None]:
    """Return (train, validation, test) from a FER2013 folder or csv.

    In the image-folder layout, ``test/PublicTest_*`` is validation and ``test/PrivateTest_*``
    the held-out test set. A folder whose ``test/`` has no such prefixes is used whole for
    validation, and there is no test set.
    """
    data = Path(data)
    if data.suffix == ".csv":
        return load_fer_csv(data, "Training"), load_fer_csv(data, "PublicTest"), load_fer_csv(data, "PrivateTest")
    for split in ("train", "test"):
        if not (data / split).is_dir():
            raise DataError(f"{data}: expected {split}/<emotion>/ folders (FER2013 layout)")
    train = load_image_folder(data / "train")
    try:
        val = load_image_folder(data / "test", prefix="PublicTest_")
        test = load_image_folder(data / "test", prefix="PrivateTest_")
    except DataError:
        val, test = load_image_folder(data / "test"), None
    return train, val, test


def segmentation_channels(images: np.ndarray, k: int, cache: Path | None = None) -> np.ndarray:
    """K-means segmentation channel for each face (about 4 ms a face), cached on disk."""
    if cache is not None and cache.exists():
        cached = np.load(cache)
        if cached.shape == images.shape:
            return cached
    out = np.stack([segmentation_channel(segment_face(face, k), k) for face in images])
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, out)
    return out
