"""lift_dim: a dim face is stretched to full contrast; a well-lit one is left alone."""

import numpy as np

from pipeline.vision.faces import DIM_MEAN, lift_dim


def gradient_faces() -> np.ndarray:
    """Two 48x48 faces: a well-lit gradient 40..220 and the same at a quarter of the light."""
    lit = np.tile(np.linspace(40, 220, 48), (48, 1)).astype(np.uint8)
    return np.stack([lit, (lit // 4).astype(np.uint8)])


def test_only_the_dim_face_is_stretched_and_its_order_kept():
    faces = gradient_faces()
    assert faces[0].mean() >= DIM_MEAN > faces[1].mean()
    out = lift_dim(faces)
    assert out.dtype == np.uint8 and out.shape == faces.shape
    assert np.array_equal(out[0], faces[0])
    assert out[1].min() == 0 and out[1].max() >= 250  # its 1st-99th percentile now spans 0..255
    assert (np.diff(out[1].astype(int), axis=1) >= 0).all()  # darker stays darker
    assert np.array_equal(faces, gradient_faces())  # the input is not changed in place


def test_well_lit_faces_come_back_untouched_and_flat_or_no_faces_do_no_harm():
    faces = gradient_faces()[:1]
    assert lift_dim(faces) is faces
    flat = np.full((1, 48, 48), 20, np.uint8)
    assert np.array_equal(lift_dim(flat), np.zeros_like(flat))
    assert lift_dim(np.zeros((0, 48, 48), np.uint8)).shape == (0, 48, 48)
