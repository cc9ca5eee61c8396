import numpy as np

from pipeline.streaming.message import Message
from pipeline.vision.faces import DIM_MEAN
from pipeline.vision.record import FACES, Face, faces_of
from stages.classify import Classify, ClassifyParams
from stages.segment import Segment, SegmentParams


def crowded_frame(seq: int) -> Message:
    """Six face boxes on one frame (noise: the budget, not the labels, is under test)."""
    image = np.random.default_rng(0).integers(0, 255, (240, 640, 3), np.uint8)
    return Message(seq=seq, image=image, fields={FACES: [Face(box=[10 + 100 * i, 60, 80, 80]) for i in range(6)]})


def test_a_face_budget_classifies_and_segments_the_same_faces_in_turn():
    classify = Classify(ClassifyParams(faces_per_frame=2), name="classify")
    segment = Segment(SegmentParams(faces_per_frame=2), name="segment")
    classify.on_start()
    segment.on_start()
    seen = set()
    for seq in range(3):
        faces = faces_of(classify.process(segment.process(crowded_frame(seq))))
        classified = [i for i, f in enumerate(faces) if f.probs is not None]
        assert classified == [i for i, f in enumerate(faces) if f.seg is not None] and len(classified) == 2
        seen.update(classified)
    assert seen == set(range(6))  # three frames: every face once


def test_without_a_budget_and_on_still_images_every_face_is_classified():
    unbudgeted, default = Classify(ClassifyParams(faces_per_frame=None), name="classify"), Classify(ClassifyParams(), name="c")
    unbudgeted.on_start()
    default.on_start()
    assert all(f.probs is not None and f.emotion for f in faces_of(unbudgeted.process(crowded_frame(0))))
    photo = crowded_frame(0)
    photo.meta["kind"] = "folder"  # capture's mark on frames from an image folder
    assert all(f.probs is not None for f in faces_of(default.process(photo)))
    assert sum(f.probs is not None for f in faces_of(default.process(crowded_frame(0)))) == 2


def face_grid(faces: np.ndarray, columns: int = 15) -> Message:
    """Real 48x48 faces tiled on one frame, one box each (the box as is is the classifier's crop)."""
    rows = -(-len(faces) // columns)
    image = np.full((rows * 48, columns * 48), 128, np.uint8)
    boxes = []
    for i, face in enumerate(faces):
        y, x = 48 * (i // columns), 48 * (i % columns)
        image[y : y + 48, x : x + 48] = face
        boxes.append([x, y, 48, 48])
    return Message(seq=0, image=np.dstack([image] * 3), fields={FACES: [Face(box=b) for b in boxes]})


def test_a_dim_face_is_lifted_to_the_label_it_has_in_good_light(fer_dir):
    from train.data import load_image_folder

    faces = load_image_folder(fer_dir / "test", "PublicTest_").images[::24]  # 150 real faces, every class
    lifting, as_is = (Classify(ClassifyParams(faces_per_frame=None, lift_dim=on), name="c") for on in (True, False))
    lifting.on_start()
    as_is.on_start()

    def labels(stage, msg):
        return np.array([f.emotion for f in faces_of(stage.process(msg))])

    lit = labels(as_is, face_grid(faces))
    well_lit = faces.mean(axis=(1, 2)) >= DIM_MEAN  # all but 4: those are left as they are
    assert well_lit.sum() > 140 and np.array_equal(labels(lifting, face_grid(faces))[well_lit], lit[well_lit])
    dim = face_grid(np.rint(faces * 0.2).astype(np.uint8))  # a fifth of the light
    agree_lifted, agree_as_is = (np.mean(labels(stage, dim) == lit) for stage in (lifting, as_is))
    assert agree_lifted > agree_as_is + 0.05 and agree_lifted > 0.8, (agree_lifted, agree_as_is)
