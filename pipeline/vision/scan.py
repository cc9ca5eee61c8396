"""Where and at which sizes to look for faces: scan plans, and a scheduler for video.

A full scan of a 1280x720 frame for faces down to 24 px costs a Haar cascade ~10x the
frame budget at 30 frames/s on one core, and most of it is spent on the smallest faces
(the cost of a pyramid level grows with the square of the resolution it searches).
Video does not need it on every frame: faces move little between frames, and a new face
can wait a few frames before it is found. So, per stream:

- **known faces** are looked for again in a window around where they are expected (last
  box moved by its velocity, padded by half its width), scaled so the face is ~48 px: a
  few hundred pixels to search whatever the face's size or the frame's resolution; at most
  ``follow_budget`` windows a frame, in turns, the others moving as predicted;
- **new faces** are looked for by a rolling scan: the full scan is cut into slices (size
  bands, each searched on a copy shrunk so its smallest face spans the cascade's window,
  split into overlapping tiles), and each frame searches slices worth ``budget`` pixels,
  shared between the bands so that large faces (cheap) come round within a few frames and
  the smallest within ``ScanPlan.cycle`` frames. Every frame costs about the same: no spikes.
  Faces found again this frame are blanked out of the scan's copies;
- a **new candidate** must pass the precision filters once (plausible geometry, a second
  cascade) and then be found again in its window on ``min_hits`` frames before it is
  reported: chance patterns rarely persist, and known faces cost nothing to confirm.

Still images get the whole plan on one frame (``FaceFinder.full``), which is also what
``evaluate-detect`` measures on the WIDER photos.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import cv2
import numpy as np

from pipeline.vision.detection import (
    Box,
    detect_region,
    padded_region,
    plausible,
    plausible_boxes,
    scored_region,
    suppress_duplicates,
    verify_faces,
    window_size,
)
from pipeline.vision.detection_eval import iou

BAND_RATIO = 1.728  # band k covers faces [s, 1.728 s): three pyramid levels at scale factor 1.2
# A face fires the cascade over a few neighbouring scales, and min_neighbors counts them: bands
# that met edge to edge split the windows of faces near a boundary and lost them (recall on
# WIDER fell from 56 to 43 % before verification). So each band searches windows up to just
# under twice its smallest face, one level into the next band, and duplicates are suppressed.
# Not further: OpenCV scans levels at factor >= 2 with a 1-px step instead of 2 px, four
# times the cost per pixel (that reach had cost +80 %).
REACH = 1.99
TILE = (160, 320)  # tile sides in searched pixels: about the square root of the budget, so a frame
# holds a tile or two; not smaller, where overlaps would cost more than the tiles
TRACK_FACE = 48  # a known face is searched at this size: at 36 px the cascade lost turning faces
TRACK_PAD = 0.5  # window around a known face, in face widths on each side
# A known face may grow or shrink this much from one frame to the next. 1.25 searches 5 pyramid
# levels a window where 1.4 searched 7: the window cost 1.2 ms less a frame on woman2.mp4.
# Recall and precision moved by at most 1.7 points a clip, both ways, on the generated clips of
# seeds 0-2 it was chosen on, and held or gained on seeds 3-4, made afterwards to check it
# (1.2 lost a seventh of the faces on seed 1: Haar boxes jump by a pyramid step between frames).
TRACK_RANGE = 1.25


@dataclass(frozen=True)
class Slice:
    """One piece of a full scan.

    Attributes:
        region: ``[x0, y0, x1, y1]`` in frame pixels.
        scale: frame pixels per searched pixel.
        sides: the face sides (frame pixels) this slice is responsible for (its tile overlaps
            its neighbours by the largest); the upper bound may be ``inf``.
        cost: pixels searched (after scaling): the unit of the per-frame budget.
    """

    region: tuple[int, int, int, int]
    scale: float
    sides: tuple[float, float]
    cost: int

    @property
    def reach(self) -> tuple[float, float]:
        """The window sides searched: ``sides`` and up to ``REACH`` times the smallest, for neighbours."""
        return self.sides[0], max(self.sides[1], self.sides[0] * REACH)


@dataclass(frozen=True)
class ScanPlan:
    """A full scan of one frame size, cut into slices grouped by size band.

    Attributes:
        slices: every slice; together they search every place at every size once.
        bands: the indices of each band's slices, largest faces first.
        budget: pixels searched per video frame (``None``: the whole plan on one frame).
    """

    slices: tuple[Slice, ...]
    bands: tuple[tuple[int, ...], ...]
    budget: int | None = None

    @property
    def cost(self) -> int:
        """Pixels searched by a full scan."""
        return sum(s.cost for s in self.slices)

    def band_cost(self, band: int) -> int:
        """Pixels searched for one size band."""
        return sum(self.slices[i].cost for i in self.bands[band])

    def schedule(self) -> RollingScan:
        """A fresh rolling scan over this plan (one per stream)."""
        return RollingScan(self)

    @cached_property
    def pass_frames(self) -> tuple[int, ...]:
        """Per band, the most frames between two searches of any of its slices (from the start on).

        A face of a band's sizes that appears and stays in view is searched within this many
        frames, counting the one it appears on. Found by running the schedule (it is
        deterministic) over several passes of the slowest band.
        """
        scan, longest = self.schedule(), [1] * len(self.bands)
        last = [-1] * len(self.slices)
        horizon = 8 * math.ceil(self.cost / self.budget) + 16 if self.budget else 1
        for frame in range(horizon):
            for i in scan.next():
                last[i], gap = frame, frame - last[i]
                k = next(b for b, band in enumerate(self.bands) if i in band)
                longest[k] = max(longest[k], gap)
        return tuple(longest)

    @property
    def cycle(self) -> int:
        """Frames within which every place and size is searched (the slowest band's pass)."""
        return max(self.pass_frames)


class RollingScan:
    """Which slices each video frame searches: proportional shares of a pixel budget per band.

    Band ``k`` gets a share of the budget proportional to the square root of its cost, so
    its pass takes frames proportional to that square root: the cheap bands of large faces
    come round every few frames, the costly band of the smallest faces less often (about
    1.5x the time one even sweep would take), and every frame costs about the budget.
    Stride scheduling: the band whose virtual time is lowest goes next, and its virtual time
    advances by the slice's cost over its share; deterministic, no randomness.
    """

    def __init__(self, plan: ScanPlan):
        self.plan = plan
        weights = [math.sqrt(plan.band_cost(k)) for k in range(len(plan.bands))]
        self.shares = [w / sum(weights) for w in weights]
        self.passes = [0.0] * len(plan.bands)
        self.cursors = [0] * len(plan.bands)

    def next(self) -> list[int]:
        """The slice indices to search on the next frame."""
        if not self.plan.budget:
            return list(range(len(self.plan.slices)))
        chosen: list[int] = []
        spent = 0
        while True:
            # The most owed band goes first; when its next slice does not fit, a band further
            # down the list may still fill the frame (without it, frames used ~60 % of the budget).
            for k in sorted(range(len(self.passes)), key=lambda b: self.passes[b]):
                band = self.plan.bands[k]
                i = band[self.cursors[k] % len(band)]
                cost = self.plan.slices[i].cost
                if i not in chosen and (not chosen or spent + cost <= self.plan.budget):
                    chosen.append(i)
                    spent += cost
                    self.cursors[k] += 1
                    self.passes[k] += cost / self.shares[k]
                    break
            else:
                return chosen


def size_bands(
    height: int, width: int, min_size: float, window: int, detect_width: int | None = None
) -> list[tuple[float, tuple[float, float]]]:
    """``(scale, (low, high))`` per size band, smallest faces first; the last band has no upper bound.

    Band ``k`` is searched on a copy shrunk by ``scale = s0 * BAND_RATIO**k`` so its smallest face
    (``window * scale``) spans the cascade's window; ``s0`` comes from ``min_size`` and is
    at least ``width / detect_width`` (a resolution cap, as the old single-pass detector had).
    """
    scale = min_size / window
    if detect_width and width > detect_width:
        scale = max(scale, width / detect_width)
    bands = []
    while True:
        low, high = window * scale, window * scale * BAND_RATIO
        if low > min(height, width):
            break
        last = high >= min(height, width)
        bands.append((scale, (low, math.inf if last else high)))
        if last:
            break
        scale *= BAND_RATIO
    return bands


def _spans(extent: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """Overlapping ``[start, end)`` spans of about ``tile`` covering ``0..extent``."""
    if extent <= tile * 1.25 or tile <= overlap:
        return [(0, extent)]
    n = math.ceil((extent - overlap) / (tile - overlap))
    step = (extent - overlap) / n
    return [(round(i * step), min(extent, round((i + 1) * step + overlap))) for i in range(n)]


def plan_scan(
    height: int,
    width: int,
    min_size: float,
    window: int = 24,
    detect_width: int | None = None,
    budget: int | None = None,
    tile: int | None = None,
) -> ScanPlan:
    """Cut a full scan of a ``width`` x ``height`` frame into slices, grouped by size band.

    Args:
        min_size: the smallest face side to find, frame pixels.
        window: the cascade's window side (``detection.window_size``).
        detect_width: search at most this resolution (see ``size_bands``).
        budget: searched pixels per video frame; ``None``: everything on one frame.
        tile: tile side in searched pixels (default: from the budget, within ``TILE``).

    Returns:
        The plan, large-face bands first (cheap). A band's copy larger than about a tile is
        cut into tiles that overlap by the band's largest face, so every face lies whole in
        some tile.
    """
    if tile is None:
        tile = TILE[1] if not budget else min(TILE[1], max(TILE[0], round(math.sqrt(budget))))
    slices: list[Slice] = []
    bands: list[tuple[int, ...]] = []
    for scale, sides in reversed(size_bands(height, width, min_size, window, detect_width)):
        overlap = math.ceil(window * BAND_RATIO * 1.1)
        band_h, band_w = round(height / scale), round(width / scale)
        first = len(slices)
        for y0, y1 in _spans(band_h, tile, overlap):
            for x0, x1 in _spans(band_w, tile, overlap):
                # The last tile of a row or column reaches the frame's edge (rounding band sizes
                # would otherwise leave a pixel or two unsearched there).
                right = width if x1 == band_w else min(width, round(x1 * scale))
                bottom = height if y1 == band_h else min(height, round(y1 * scale))
                region = (round(x0 * scale), round(y0 * scale), right, bottom)
                slices.append(Slice(region, scale, sides, (x1 - x0) * (y1 - y0)))
        bands.append(tuple(range(first, len(slices))))
    return ScanPlan(tuple(slices), tuple(bands), budget)


@dataclass
class FaceFinder:
    """The cascades and their settings: what a scan plan, a window or a still image is searched with.

    Attributes:
        classifier: the detecting cascade.
        verifier: the second-look cascade (``None``: no second look).
        scale_factor, min_neighbors: the detecting cascade's settings in scans and windows.
        full_scale_factor: the pyramid step of full scans (still images): finer than video's,
            where a face missed at one scale is found a frame later at a slightly different one.
        min_size: the smallest face side, frame pixels.
        detect_width: search at most this resolution (``None``: the frame's own).
        budget: searched pixels per video frame for new faces.
        share: at most this share of a full scan a video frame (small frames cost less than
            ``budget``: a 596x336 frame would otherwise be searched whole every ~5 frames).
        verify_neighbors: the second cascade's ``minNeighbors`` (higher: stricter).
    """

    classifier: cv2.CascadeClassifier
    verifier: cv2.CascadeClassifier | None = None
    scale_factor: float = 1.2
    full_scale_factor: float = 1.15
    min_neighbors: int = 1
    min_size: int = 24
    detect_width: int | None = None
    budget: int | None = None
    share: float = 1.0
    verify_neighbors: int = 12
    _plans: dict[tuple[int, int, bool], ScanPlan] = field(default_factory=dict, repr=False)

    def plan(self, shape: tuple[int, ...], rolling: bool = True) -> ScanPlan:
        """The scan plan of a frame shape, made once per shape (``rolling``: spread by the budget)."""
        key = (shape[0], shape[1], rolling)
        if key not in self._plans:
            window = window_size(self.classifier)
            plan = plan_scan(shape[0], shape[1], self.min_size, window, self.detect_width, self.budget if rolling else None)
            if rolling and self.budget and plan.cost * self.share < self.budget:
                plan = plan_scan(shape[0], shape[1], self.min_size, window, self.detect_width, math.ceil(plan.cost * self.share))
            self._plans[key] = plan
        return self._plans[key]

    def search(
        self, gray: np.ndarray, slices: Sequence[Slice], scale_factor: float | None = None, known: Sequence[Box] = ()
    ) -> list[Box]:
        """Candidate boxes from these slices, one per face and plausible, not yet verified
        (``scale_factor``: the pyramid step, default the finder's; ``known``: boxes of faces
        already found on this frame, left out of the search)."""
        step = scale_factor or self.scale_factor
        found = []
        for piece in slices:
            found += scored_region(gray, self.classifier, piece.region, piece.scale, piece.reach, step, self.min_neighbors, known)
        found = [(b, n) for b, n in found if plausible(b, gray.shape)]
        return suppress_duplicates([b for b, _ in found], [n for _, n in found])

    def confirm(self, gray: np.ndarray, boxes: Sequence[Box]) -> list[Box]:
        """The candidates that pass the second look (all of them without a verifier)."""
        if self.verifier is None or not boxes:
            return list(boxes)
        return verify_faces(gray, boxes, self.verifier, min_neighbors=self.verify_neighbors)

    def full(self, gray: np.ndarray) -> list[Box]:
        """Every face in a still image: the whole plan at once, then the second look; largest first."""
        plan = self.plan(gray.shape, rolling=False)
        return self.confirm(gray, self.search(gray, plan.slices, self.full_scale_factor))

    def follow(self, gray: np.ndarray, predicted: Sequence[float]) -> Box | None:
        """A known face found again near ``predicted``, or ``None``.

        The window is the predicted box padded by half its width, searched for faces
        within ``TRACK_RANGE`` of its size; of several, the one overlapping it most.
        """
        side = predicted[2]
        region = padded_region(predicted, TRACK_PAD, gray.shape)
        sides = (side / TRACK_RANGE, side * TRACK_RANGE)
        found = detect_region(
            gray, self.classifier, region, side / TRACK_FACE, sides, min(self.scale_factor, 1.1), self.min_neighbors
        )
        found = plausible_boxes(found, gray.shape)
        return max(found, key=lambda b: iou(b, predicted) - _distance(b, predicted), default=None)


def _distance(a: Sequence[float], b: Sequence[float]) -> float:
    """Distance between the centres of two boxes, in widths of ``b`` (breaks ties between window hits)."""
    ax, ay = a[0] + a[2] / 2, a[1] + a[3] / 2
    bx, by = b[0] + b[2] / 2, b[1] + b[3] / 2
    return math.hypot(ax - bx, ay - by) / max(b[2], 1)


@dataclass
class TrackedFace:
    """A face the scheduler follows.

    Attributes:
        box: where it was last found, or predicted while it is missed (float pixels).
        velocity: centre motion per frame (pixels), smoothed.
        hits: frames it was found on.
        misses: frames in a row it was not found on.
        waited: frames since its window was last searched (see ``VideoScanner``'s ``follow_budget``).
    """

    box: list[float]
    velocity: tuple[float, float] = (0.0, 0.0)
    hits: int = 1
    misses: int = 0
    waited: int = 0

    def predicted(self) -> list[float]:
        """Where the face should be on the next frame: its box moved by its velocity."""
        x, y, w, h = self.box
        return [x + self.velocity[0], y + self.velocity[1], w, h]

    def found(self, box: Sequence[int]) -> None:
        """Found at ``box`` this frame: update velocity (smoothed: Haar boxes jitter) and counts."""
        old = self.box
        dx = (box[0] + box[2] / 2) - (old[0] + old[2] / 2)
        dy = (box[1] + box[3] / 2) - (old[1] + old[3] / 2)
        self.velocity = (0.5 * self.velocity[0] + 0.5 * dx, 0.5 * self.velocity[1] + 0.5 * dy)
        self.box, self.hits, self.misses = [float(v) for v in box], self.hits + 1, 0

    def missed(self) -> None:
        """Not found this frame: keep moving it as predicted (a face crossing the frame comes back there)."""
        self.box, self.misses = self.predicted(), self.misses + 1

    def coast(self) -> None:
        """Not searched this frame: take the predicted place, neither a hit nor a miss."""
        self.box, self.waited = self.predicted(), self.waited + 1


class VideoScanner:
    """Per-stream detection state: known faces followed in windows, new ones by a rolling scan.

    Args:
        finder: the cascades and settings.
        min_hits: frames a new face must be found on before it is reported.
        max_misses: frames in a row a face may be missed before it is forgotten.
        hold: frames a reported face is still reported, at its predicted place, while missed.
        follow_budget: windows searched a frame (``None``: every known face's). With more faces
            they take turns, the longest waiting first, and the others move as predicted: a
            window costs 1-4 ms, so without a bound a crowd costs more than a frame's time and
            the queue grows (p99 latency 0.5-0.85 s on a clip with ~10 faces).
    """

    def __init__(
        self, finder: FaceFinder, min_hits: int = 3, max_misses: int = 5, hold: int = 0, follow_budget: int | None = None
    ):
        self.finder = finder
        self.min_hits = min_hits
        self.max_misses = max_misses
        self.hold = hold
        self.follow_budget = follow_budget
        self.faces: list[TrackedFace] = []
        self._scans: dict[tuple[int, ...], RollingScan] = {}  # per frame shape

    def step(self, gray: np.ndarray) -> list[Box]:
        """Detect on the next frame of the stream; the faces to report, largest first."""
        due = {id(f) for f in sorted(self.faces, key=lambda f: f.waited, reverse=True)[: self.follow_budget]}
        for face in self.faces:
            if id(face) not in due:
                face.coast()
                continue
            box = self.finder.follow(gray, face.predicted())
            face.waited = 0
            face.found(box) if box is not None else face.missed()
        self.faces = [f for f in self.faces if f.misses <= self.max_misses and _inside(f.box, gray.shape)]
        self.faces = _merge(self.faces)
        plan = self.finder.plan(gray.shape)
        scan = self._scans.get(gray.shape) or self._scans.setdefault(gray.shape, plan.schedule())
        # Faces found again in their windows (or moved as predicted) are blanked out of the scan: it
        # has nothing to add there, and a face costs Haar several times what background does.
        known = [f.box for f in self.faces if not f.misses]
        self._add(gray, self.finder.search(gray, [plan.slices[i] for i in scan.next()], known=known))
        shown = [f for f in self.faces if f.hits >= self.min_hits and f.misses <= self.hold]
        return sorted(([round(v) for v in f.box] for f in shown), key=lambda b: b[2] * b[3], reverse=True)

    def _add(self, gray: np.ndarray, candidates: list[Box]) -> None:
        """Scan candidates: a known face's (which its window missed this frame: found again) or new ones.

        Only new candidates take the second look; a known face was confirmed when it was new.
        """
        new = []
        for box in candidates:
            known = next((f for f in self.faces if _same_face(box, f.box)), None)
            if known is None:
                new.append(box)
            elif known.misses:
                known.found(box)  # the window lost it (it turned, blurred, jumped) and the scan has it
        self.faces += [TrackedFace([float(v) for v in b]) for b in self.finder.confirm(gray, new)]


def _same_face(box: Sequence[float], known: Sequence[float]) -> bool:
    """Whether a scan candidate is a face already followed (overlapping, or centred in it)."""
    cx, cy = box[0] + box[2] / 2, box[1] + box[3] / 2
    inside = known[0] <= cx <= known[0] + known[2] and known[1] <= cy <= known[1] + known[3]
    return inside or iou(box, known) > 0.2


def _merge(faces: list[TrackedFace]) -> list[TrackedFace]:
    """Two followed faces that converged on one place are one face: keep the one found more often."""
    kept: list[TrackedFace] = []
    for face in sorted(faces, key=lambda f: f.hits, reverse=True):
        if not any(iou(face.box, k.box) > 0.4 for k in kept):
            kept.append(face)
    return kept


def _inside(box: Sequence[float], shape: tuple[int, ...]) -> bool:
    """Whether at least half of a (predicted) box is still in the frame."""
    x, y, w, h = box
    inter = max(0.0, min(x + w, shape[1]) - max(x, 0)) * max(0.0, min(y + h, shape[0]) - max(y, 0))
    return inter >= 0.5 * w * h
