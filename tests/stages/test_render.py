from pipeline.vision.record import Face
from stages.render import GapBridge


def test_a_tracked_face_missed_for_a_few_frames_is_still_drawn_where_last_seen():
    bridge = GapBridge(frames=3)
    seen = Face(box=[10, 10, 40, 40], track=1, emotion="happy")
    other = Face(box=[100, 10, 40, 40], track=2)
    assert bridge.faces(0, [seen, other]) == [seen, other]
    assert bridge.faces(1, [other]) == [other, seen]  # track 1 missed: drawn at its last box, label kept
    assert bridge.faces(3, [other]) == [other, seen]  # missed on frames 1-3
    assert bridge.faces(4, [other]) == [other]  # missed more than 3 frames: gone
    moved = Face(box=[12, 10, 40, 40], track=1)
    assert bridge.faces(5, [moved]) == [moved, other]  # back: its new box; track 2 now bridged


def test_no_bridge_and_untracked_faces_are_drawn_as_they_come():
    assert GapBridge(frames=0).faces(1, []) == []
    bridge = GapBridge(frames=5)
    bridge.faces(0, [Face(box=[1, 1, 30, 30])])  # no track (no track stage): nothing to bridge
    assert bridge.faces(1, []) == []
