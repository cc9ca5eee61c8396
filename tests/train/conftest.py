"""Fixtures shared by the training and evaluation tests."""

from __future__ import annotations

import shutil

import pytest

PUBLIC_PER_CLASS = 4


@pytest.fixture(scope="module")
def few_public(fer_dir, tmp_path_factory):
    """The first few PublicTest_ faces of each class (validation split only: PrivateTest_ is never scored)."""
    root = tmp_path_factory.mktemp("fer-public")
    for class_dir in sorted((fer_dir / "test").iterdir()):
        (root / class_dir.name).mkdir()
        for path in sorted(class_dir.glob("PublicTest_*"))[:PUBLIC_PER_CLASS]:
            shutil.copy(path, root / class_dir.name / path.name)
    return root
