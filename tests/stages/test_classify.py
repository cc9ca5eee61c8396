import numpy as np

from pipeline.streaming.message import Message
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
