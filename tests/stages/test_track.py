import numpy as np

from pipeline.streaming.message import Message
from pipeline.streaming.stage import StageContext
from pipeline.vision.emotions import EMOTIONS
from pipeline.vision.record import FACES, Face, faces_of
from stages.track import Track, Tracker, TrackParams, iou


def test_iou():
    assert iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    assert iou([0, 0, 10, 10], [5, 0, 10, 10]) == 50 / 150
    assert iou([0, 0, 10, 10], [20, 20, 5, 5]) == 0.0


def test_ids_follow_moving_faces_and_survive_short_gaps():
    tracker = Tracker(iou_threshold=0.3, max_gap=3)
    a = [t.id for t in tracker.update(0, [[0, 0, 50, 50], [200, 0, 50, 50]])]
    b = [t.id for t in tracker.update(1, [[205, 2, 50, 50], [4, 3, 50, 50]])]  # listed in the other order
    assert b == [a[1], a[0]]
    tracker.update(2, [])  # the detector misses both for two frames
    tracker.update(3, [])
    assert [t.id for t in tracker.update(4, [[6, 4, 50, 50]])] == [a[0]]
    for seq in range(5, 10):  # face 1 gone longer than max_gap
        tracker.update(seq, [[6, 4, 50, 50]])
    new = tracker.update(10, [[6, 4, 50, 50], [205, 2, 50, 50]])
    assert new[0].id == a[0] and new[1].id not in a


def flickering(seq: int) -> Message:
    """One mostly happy face whose frame-by-frame probabilities are noisy enough to flip to neutral."""
    noise = np.random.default_rng(seq).normal(0, 0.08, 2)
    probs = np.full(len(EMOTIONS), 0.02)
    probs[EMOTIONS.index("happy")] = 0.48 + noise[0]
    probs[EMOTIONS.index("neutral")] = 0.42 + noise[1]
    label = EMOTIONS[int(probs.argmax())]
    face = Face(box=[10, 10, 40, 40], probs=probs.tolist(), emotion=label, confidence=float(probs.max()))
    return Message(seq=seq, fields={FACES: [face]})


def run_track(params: TrackParams, n: int = 40) -> list[Face]:
    stage = Track(params, name="track", context=StageContext(run={"classes": list(EMOTIONS)}))
    stage.on_start()
    return [faces_of(stage.process(flickering(seq)))[0] for seq in range(n)]


def changes(labels: list[str]) -> int:
    return sum(a != b for a, b in zip(labels, labels[1:]))


def test_smoothing_stops_the_flicker_and_keeps_raw_values():
    for params in (TrackParams(smoothing="ema", alpha=0.25), TrackParams(smoothing="window", window=6)):
        faces = run_track(params)
        raw = [f.emotion_raw for f in faces]
        smoothed = [f.emotion for f in faces]
        assert changes(raw) >= 10 and changes(smoothed) <= changes(raw) / 3, (changes(raw), changes(smoothed))
        assert {f.track for f in faces} == {1}
        assert all(len(f.smoothed) == len(EMOTIONS) and len(f.probs) == len(EMOTIONS) for f in faces)


def test_smoothing_off_only_tracks():
    faces = run_track(TrackParams(smoothing="off"), n=5)
    assert all(f.smoothed is None and f.track == 1 for f in faces)


def test_faces_not_classified_this_frame_keep_their_track_label():
    """classify's faces_per_frame leaves some faces without probabilities: track carries their label."""
    stage = Track(TrackParams(), name="track", context=StageContext(run={"classes": list(EMOTIONS)}))
    stage.on_start()
    first = faces_of(stage.process(flickering(0)))[0]
    skipped = faces_of(stage.process(Message(seq=1, fields={FACES: [Face(box=[11, 10, 40, 40])]})))[0]
    assert skipped.track == first.track and skipped.probs is None
    assert skipped.emotion == first.emotion and skipped.smoothed == first.smoothed
    new = faces_of(stage.process(Message(seq=2, fields={FACES: [Face(box=[300, 300, 40, 40])]})))[0]
    assert new.emotion is None  # a track never classified has nothing to carry
