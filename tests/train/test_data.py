import logging

import cv2
import numpy as np
import pytest

from pipeline.errors import DataError
from train.data import list_image_folder, load_fer_csv, load_image_folder, load_splits


def make_folder(root, counts: dict[str, int], size: int = 48) -> None:
    rng = np.random.default_rng(0)
    for name, n in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            cv2.imwrite(str(root / name / f"img_{i}.png"), rng.integers(0, 255, (size, size), dtype=np.uint8))


def test_loads_a_generated_folder_with_missing_classes(tmp_path):
    make_folder(tmp_path, {"happy": 3, "sad": 2, "neutral": 1}, size=64)  # resized to 48x48
    faces = load_image_folder(tmp_path)
    assert faces.images.shape == (6, 48, 48) and faces.images.dtype == np.uint8
    assert faces.class_counts() == {"angry": 0, "disgust": 0, "fear": 0, "happy": 3, "sad": 2, "surprise": 0, "neutral": 1}
    assert len(faces.fingerprint()) == 16


def test_empty_folder_is_a_clear_error(tmp_path):
    (tmp_path / "happy").mkdir()
    with pytest.raises(DataError, match="no images"):
        load_image_folder(tmp_path)


def test_unknown_class_folder_is_named(tmp_path):
    make_folder(tmp_path, {"happy": 1, "contempt": 1})
    with pytest.raises(DataError, match="unknown class folder 'contempt'"):
        load_image_folder(tmp_path)


def test_unreadable_image_is_skipped_with_a_warning_and_counted(tmp_path, caplog):
    make_folder(tmp_path, {"fear": 2})
    (tmp_path / "fear" / "broken.jpg").write_bytes(b"not a jpeg")
    with caplog.at_level(logging.WARNING):
        faces = load_image_folder(tmp_path)
    assert len(faces) == 2 and faces.skipped == [str(tmp_path / "fear" / "broken.jpg")]
    assert "skipping unreadable image" in caplog.text


def test_fer_csv_usages_and_bad_rows(tmp_path, caplog):
    pixels = " ".join(["128"] * 48 * 48)
    path = tmp_path / "fer2013.csv"
    path.write_text(f"emotion,pixels,Usage\n3,{pixels},Training\n6,{pixels},PrivateTest\n9,{pixels},Training\n0,1 2 3,Training\n")
    with caplog.at_level(logging.WARNING):
        train = load_fer_csv(path, "Training")
    assert list(train.labels) == [3] and len(train.skipped) == 2
    assert list(load_fer_csv(path, "PrivateTest").labels) == [6]


def test_real_fer2013_split_sizes(fer_dir):
    assert len(list_image_folder(fer_dir / "train")) == 28_709
    assert len(list_image_folder(fer_dir / "test", prefix="PublicTest_")) == 3_589
    assert len(list_image_folder(fer_dir / "test", prefix="PrivateTest_")) == 3_589


def test_splits_keep_private_test_apart(tmp_path):
    make_folder(tmp_path / "train", {"happy": 4, "sad": 4})
    for prefix, n in (("PublicTest", 2), ("PrivateTest", 3)):
        for i in range(n):
            (tmp_path / "test" / "happy").mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(tmp_path / "test" / "happy" / f"{prefix}_{i}.png"), np.zeros((48, 48), np.uint8))
    train, val, test = load_splits(tmp_path)
    assert (len(train), len(val), len(test)) == (8, 2, 3)
    assert all("PrivateTest_" in p for p in test.paths) and not any("PrivateTest_" in p for p in val.paths)
