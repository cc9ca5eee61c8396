"""The crop a model expects, made from a detector box: geometry, frame edges, model.json (and
what model.json says about the K-means segmentation)."""

import json

import numpy as np
import pytest

from pipeline.errors import ModelError
from pipeline.vision.faces import FER_FRAMING, HAAR_BOX, Framing, crop_face, framed_box
from pipeline.vision.model import LEGACY_CROP, ModelInfo
from train.redetect import fer_canvas, framing_of


def test_the_box_as_is_is_unchanged():
    assert framed_box([10, 20, 30, 30]) == (10, 20, 30, 30)


def test_scale_grows_about_the_centre_and_offsets_move_it():
    assert framed_box([100, 100, 50, 50], Framing(scale=1.2)) == (95, 95, 60, 60)
    assert framed_box([100, 100, 50, 50], Framing(scale=1.0, dx=0.1, dy=-0.2)) == (105, 90, 50, 50)
    assert framed_box([0, 0, 40, 30], Framing(scale=1.0)) == (0, -5, 40, 40)  # a square from the longer side


def test_framing_of_inverts_framed_box():
    box, framing = [100, 80, 50, 50], Framing(scale=1.2, dx=0.04, dy=-0.1)
    measured = framing_of(box, framed_box(box, framing))
    assert measured.scale == pytest.approx(1.2) and measured.dx == pytest.approx(0.04) and measured.dy == pytest.approx(-0.1)


def test_a_crop_past_the_frame_edge_repeats_the_edge_and_keeps_the_face_in_place():
    frame = np.zeros((100, 100), np.uint8)
    frame[:, :50] = 200  # left half bright: the edge a crop must repeat
    inside = crop_face(frame, [0, 25, 50, 50])
    assert inside.shape == (48, 48) and (inside == 200).all()
    # Twice the box about its centre: 25 px out on the left and the top. The bright left edge is
    # repeated there, and the dark right half stays in the right quarter of the crop.
    wide = crop_face(frame, [0, 25, 50, 50], Framing(scale=2.0))
    assert wide.shape == (48, 48)
    assert (wide[:, :30] == 200).all() and (wide[:, -10:] == 0).all()
    # The box as is keeps the old behaviour: clipped to the frame, then resized.
    clipped = crop_face(frame, [-25, 0, 50, 50])
    assert (clipped == 200).all()


def test_a_framed_box_wholly_outside_is_refused():
    with pytest.raises(ValueError, match="outside"):
        crop_face(np.zeros((100, 100), np.uint8), [200, 200, 10, 10], Framing(scale=1.1))


def test_fer_canvas_puts_the_face_where_it_says():
    face = np.arange(48 * 48, dtype=np.uint32).reshape(48, 48).astype(np.uint8)
    for pad in ("grey", "reflect"):
        canvas, (x, y, w, h) = fer_canvas(face, pad)
        assert canvas.shape == (384, 384) and (x, y, w, h) == (96, 96, 192, 192)
        assert crop_face(canvas, [x, y, w, h]).shape == (48, 48)
    with pytest.raises(ValueError, match="pad"):
        fer_canvas(face, "black")


def _info(tmp_path, **extra) -> ModelInfo:
    path = tmp_path / "model.json"
    path.write_text(json.dumps({"classes": ["a", "b"], "input_size": 48, "channels": 1, **extra}))
    return ModelInfo.load(path)


def test_model_json_records_the_crop_and_old_files_get_the_legacy_one(tmp_path):
    assert _info(tmp_path).crop == LEGACY_CROP
    assert _info(tmp_path, crop=HAAR_BOX.as_dict()).crop == HAAR_BOX
    assert _info(tmp_path, crop={"scale": 1.1, "dx": 0.02, "dy": 0.05}).crop == Framing(1.1, 0.02, 0.05)
    assert FER_FRAMING == HAAR_BOX  # measured: FER's framing is the Haar box (faces.py says how)
    with pytest.raises(Exception, match="out of range"):
        _info(tmp_path, crop={"scale": 9})


def test_model_json_records_how_the_segmentation_is_used_and_old_files_read_as_on_or_off(tmp_path):
    def seg(**fields) -> ModelInfo:
        return _info(tmp_path, segmentation={"k": 4, **fields})

    assert (seg().segmentation, seg().segmentation_mode) == (False, "off")
    assert (seg(enabled=True).segmentation, seg(enabled=True).segmentation_mode) == (True, "on")  # before "mode"
    attention = seg(enabled=True, mode="attention")
    assert attention.segmentation and attention.segmentation_mode == "attention"  # served with the channel, like "on"
    with pytest.raises(ModelError, match="segmentation.mode: must be one of off, on, attention"):
        seg(enabled=True, mode="gate")
    with pytest.raises(ModelError, match="agree with enabled=False"):
        seg(enabled=False, mode="attention")
