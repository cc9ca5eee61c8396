"""Training augmentations that make FER2013's clean stills look like faces filmed by a camera."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from train.model import camera_degradation  # noqa: E402
from train.train import TrainConfig  # noqa: E402


def faces(n: int = 64) -> np.ndarray:
    """Smooth gray gradients with a K-means-like second channel: easy to tell detail from noise."""
    ramp = np.linspace(40, 220, 48, dtype=np.float32)
    gray = np.broadcast_to(ramp[None, :, None] + ramp[None, None, :] * 0.1, (n, 48, 48)).copy()
    seg = np.broadcast_to((np.arange(48) % 4).astype(np.float32)[None, :, None], (n, 48, 48))
    return np.stack([gray, seg], axis=-1)


def test_camera_degradation_changes_only_the_gray_channel_and_only_with_its_probability():
    x = faces()
    assert np.array_equal(camera_degradation(tf.constant(x), 0.0).numpy(), x)
    tf.random.set_seed(3)
    out = camera_degradation(tf.constant(x), 1.0).numpy()
    assert out.shape == x.shape
    assert np.array_equal(out[..., 1], x[..., 1])  # the segmentation channel is left alone
    assert out[..., 0].min() >= 0.0 and out[..., 0].max() <= 255.0
    changed = np.abs(out[..., 0] - x[..., 0]).mean(axis=(1, 2))
    assert (changed > 0.5).mean() > 0.8  # nearly every face is degraded (a noise sigma near 0 is allowed)
    assert abs(out[..., 0].mean() - x[..., 0].mean()) < 3.0  # noise and resizing keep the grey level
    tf.random.set_seed(3)
    half = camera_degradation(tf.constant(x), 0.5).numpy()
    untouched = np.all(half == x, axis=(1, 2, 3)).mean()
    assert 0.1 < untouched < 0.5  # about a quarter of the faces get neither noise nor a lower resolution


def test_config_refuses_a_camera_probability_out_of_range():
    with pytest.raises(ValueError, match="camera: must be in 0..1"):
        TrainConfig(data="d", out="o", camera=1.5)
