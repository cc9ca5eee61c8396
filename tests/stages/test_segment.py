import numpy as np
import pytest

from pipeline.vision.faces import crop_face, model_input, segment_face, segmentation_channel


def synthetic_face() -> np.ndarray:
    """A face filling the crop, as Haar and FER2013 crops do: skin with dark eyes and mouth, a lit forehead."""
    face = np.full((48, 48), 150, np.uint8)
    face[:10, :] = 220  # forehead
    face[15:19, 12:19] = 20  # eyes
    face[15:19, 29:36] = 20
    face[34:37, 17:31] = 30  # mouth
    return face


def test_labels_are_ranked_dark_to_bright():
    labels = segment_face(synthetic_face(), k=3)
    assert labels.shape == (48, 48) and labels.dtype == np.uint8
    assert set(np.unique(labels)) == {0, 1, 2}
    assert (labels[15:19, 12:19] == 0).all() and (labels[34:37, 17:31] == 0).all()  # eyes, mouth darkest
    assert labels[30, 5] == 1 and labels[3, 24] == 2  # skin, then the lit forehead


def test_same_input_same_labels():
    face = synthetic_face()
    np.testing.assert_array_equal(segment_face(face, 4), segment_face(face, 4))


def test_wrong_size_is_refused():
    with pytest.raises(ValueError, match="48x48"):
        segment_face(np.zeros((40, 40), np.uint8))


def test_channel_and_model_input_shapes():
    labels = segment_face(synthetic_face(), k=4)
    channel = segmentation_channel(labels, 4)
    assert channel.max() == 255 and channel.min() == 0
    x = model_input(np.stack([synthetic_face()] * 2), np.stack([channel] * 2))
    assert x.shape == (2, 48, 48, 2) and x.dtype == np.float32


def test_crop_face_clips_to_the_frame_and_resizes():
    frame = np.zeros((100, 120), np.uint8)
    assert crop_face(frame, [100, 80, 50, 50]).shape == (48, 48)
    with pytest.raises(ValueError, match="outside"):
        crop_face(frame, [200, 200, 10, 10])
