import math

import numpy as np
import pytest

from pipeline.vision.detection import DEFAULT_CASCADE, VERIFY_CASCADE, load_cascade
from pipeline.vision.scan import BAND_RATIO, FaceFinder, VideoScanner, plan_scan, size_bands
from stages.track import Tracker
from tests.pipeline.vision.face_patch import background, face_patch, paste


@pytest.fixture(scope="module")
def finder():
    return FaceFinder(load_cascade(DEFAULT_CASCADE), load_cascade(VERIFY_CASCADE), budget=100_000)


def test_size_bands_grow_from_the_smallest_face_and_end_open():
    bands = size_bands(720, 1280, min_size=24, window=24)
    assert [round(s, 2) for s, _ in bands] == [round(BAND_RATIO**k, 2) for k in range(len(bands))]
    assert bands[0][1] == (24, 24 * BAND_RATIO) and bands[-1][1][1] == math.inf
    assert bands[-1][1][0] <= 720 < bands[-1][1][0] * BAND_RATIO


def test_detect_width_caps_the_resolution():
    assert size_bands(720, 1280, min_size=24, window=24, detect_width=640)[0][0] == 2.0


@pytest.mark.parametrize("shape", [(720, 1280), (360, 640), (336, 596), (1366, 1024)])
def test_every_place_and_size_lies_whole_in_some_slice(shape):
    plan = plan_scan(*shape, min_size=24, budget=100_000)
    rng = np.random.default_rng(1)
    for _ in range(300):
        side = float(np.exp(rng.uniform(np.log(24), np.log(min(shape)))))
        x, y = rng.uniform(0, shape[1] - side), rng.uniform(0, shape[0] - side)
        assert any(
            s.sides[0] <= side < s.sides[1]
            and s.region[0] <= x
            and s.region[1] <= y
            and x + side <= s.region[2]
            and y + side <= s.region[3]
            for s in plan.slices
        ), (side, x, y)


def test_the_rolling_scan_costs_about_the_budget_on_every_frame():
    plan = plan_scan(720, 1280, min_size=24, budget=100_000)
    scan = plan.schedule()
    frames = [scan.next() for _ in range(3 * plan.cycle)]
    costs = [sum(plan.slices[i].cost for i in frame) for frame in frames]
    assert {i for frame in frames for i in frame} == set(range(len(plan.slices)))
    assert max(costs) <= 100_000 and min(costs) >= 50_000, costs
    assert plan_scan(720, 1280, min_size=24).schedule().next() == list(range(len(plan.slices)))


def test_small_frames_search_at_most_their_share_of_a_full_scan():
    finder = FaceFinder(load_cascade(DEFAULT_CASCADE), budget=60_000, share=0.1)
    small, large = finder.plan((336, 596)), finder.plan((720, 1280))
    assert small.budget < 60_000 and small.budget == math.ceil(0.1 * plan_scan(336, 596, 24, budget=60_000).cost)
    assert large.budget == 60_000  # a tenth of 1280x720 is more than the budget
    assert finder.plan((336, 596), rolling=False).budget is None  # still images: everything at once


def test_large_faces_come_round_sooner_than_small_ones():
    plan = plan_scan(720, 1280, min_size=24, budget=100_000)
    passes = plan.pass_frames  # bands from the largest faces to the smallest
    even_sweep = plan.cost / 100_000  # frames a sweep in plain order would take at full budget
    assert list(passes) == sorted(passes) and passes[0] <= 3 and passes[-1] <= 2.5 * even_sweep
    assert plan.cycle == passes[-1]


def test_pass_frames_bounds_the_gap_between_searches_of_every_slice():
    plan = plan_scan(360, 640, min_size=24, budget=100_000)
    scan = plan.schedule()
    seen: dict[int, list[int]] = {}
    for frame in range(200):
        for i in scan.next():
            seen.setdefault(i, []).append(frame)
    for k, band in enumerate(plan.bands):
        for i in band:
            frames = [-1, *seen[i]]  # a face appearing on any frame is searched within pass_frames
            assert max(b - a for a, b in zip(frames, frames[1:])) <= plan.pass_frames[k]


def run(scanner, frames):
    return [scanner.step(frame) for frame in frames]


def test_a_face_appearing_in_a_corner_is_reported_within_one_cycle_and_min_hits(faces_dir, finder):
    patch, (fx, fy, fw, _) = face_patch(faces_dir, 40)
    frame = paste(background(720, 1280), patch, (1280 - patch.shape[1], 720 - patch.shape[0]))
    scanner = VideoScanner(finder, min_hits=3)
    cycle = finder.plan(frame.shape).cycle
    for start in (0, cycle // 2):  # the face appears at different points of the scan's cycle
        scanner = VideoScanner(finder, min_hits=3)
        run(scanner, [background(720, 1280)] * start)
        reported = run(scanner, [frame] * (cycle + 3))
        first = next(i for i, boxes in enumerate(reported) if boxes)
        assert first <= cycle + 3 - 1, (first, cycle)
        assert all(len(boxes) == 1 for boxes in reported[first:])


def test_a_face_moving_across_the_frame_keeps_one_track(faces_dir, finder):
    patch, _ = face_patch(faces_dir, 48)
    back = background(360, 640, seed=2)
    frames = [paste(back, patch, (20 + 6 * i, 100 + i)) for i in range(90)]
    scanner, tracker = VideoScanner(finder, min_hits=3), Tracker(iou_threshold=0.3, max_gap=1)
    ids, reported = set(), 0
    for seq, boxes in enumerate(run(scanner, frames)):
        reported += len(boxes) == 1
        ids |= {t.id for t in tracker.update(seq, boxes)}
    assert len(ids) == 1 and reported >= 80, (ids, reported)


def test_a_face_seen_on_one_frame_only_is_never_reported(faces_dir, finder):
    patch, _ = face_patch(faces_dir, 60)
    back = background(360, 640, seed=3)
    flash = paste(back, patch, (300, 100))
    scanner = VideoScanner(FaceFinder(finder.classifier, finder.verifier, budget=None), min_hits=2)
    assert run(scanner, [flash, back, back, back]) == [[], [], [], []]


def test_texture_alone_gives_no_face(finder):
    scanner = VideoScanner(finder, min_hits=3)
    frames = [background(360, 640, seed=s // 10) for s in range(100)]
    assert sum(len(b) for b in run(scanner, frames)) == 0


def test_a_face_that_leaves_is_forgotten(faces_dir, finder):
    patch, _ = face_patch(faces_dir, 60)
    back = background(360, 640, seed=4)
    scanner = VideoScanner(FaceFinder(finder.classifier, finder.verifier, budget=None), min_hits=1, max_misses=2)
    run(scanner, [paste(back, patch, (300, 100))] * 3)
    assert len(scanner.faces) == 1
    assert run(scanner, [back] * 4)[-1] == [] and scanner.faces == []


def test_a_crowd_takes_turns_within_the_follow_budget_and_every_face_stays_reported(faces_dir, finder, monkeypatch):
    patch, _ = face_patch(faces_dir, 48)
    frame = background(360, 640, seed=5)
    for k in range(6):
        frame = paste(frame, patch, (20 + 100 * k, 40 + 150 * (k % 2)))
    scanner = VideoScanner(FaceFinder(finder.classifier, finder.verifier, budget=None), min_hits=1, follow_budget=2)
    run(scanner, [frame])  # the first frame's full scan finds all six
    assert len(scanner.faces) == 6
    searched = []
    real = scanner.finder.follow
    monkeypatch.setattr(scanner.finder, "follow", lambda gray, box: searched.append(box) or real(gray, box))
    reported = run(scanner, [frame] * 6)
    assert len(searched) == 2 * 6  # two windows a frame, whatever the crowd
    assert all(len(boxes) == 6 for boxes in reported)  # the four waiting faces stay where predicted
    assert all(f.waited <= 2 for f in scanner.faces)  # turns: each face searched every third frame
