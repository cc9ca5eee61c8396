"""Moving-camera clips with ground truth, made from annotated photos (WIDER FACE), and their scoring.

A clip is a sequence of segments, one photo each: a virtual camera pans and zooms across
the photo (start and end views drawn at random, eased in and out), and the photo's face
boxes are moved with it, frame by frame, by the same transform that made the frame. Each
clip is an ``.mp4`` and a ``.csv`` of boxes per frame (``frame,kind,x,y,w,h``; ``kind`` is
``face`` or ``ignore``). Faces under 20 px, faces less than 80 % inside the frame and the
photo's own don't-care boxes are ``ignore`` regions, scored as in ``detection_eval``.

``pipeline.tools.yardstick`` runs the pipeline on them and scores what it logged.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from pipeline.errors import DataError, PipelineError
from pipeline.vision.detection_eval import ImageTruth, load_annotations

MIN_FACE = 20  # px: smaller faces are don't-care regions, as in the WIDER subset
MIN_VISIBLE = 0.8  # share of a face inside the frame for it to count; less is don't-care
ZOOM = (0.55, 1.0)  # view width as a share of the widest view the photo allows


@dataclass(frozen=True)
class View:
    """What the virtual camera sees: a centre and a width in photo pixels (height from the aspect)."""

    cx: float
    cy: float
    width: float


Transform = tuple[float, float, float, float]  # (sx, sy, tx, ty): x' = sx * x + tx, y' = sy * y + ty


def camera_path(photo_w: int, photo_h: int, aspect: float, rng: np.random.Generator) -> tuple[View, View]:
    """A random start and end view inside the photo (pan and zoom between them)."""
    widest = min(photo_w, photo_h * aspect)

    def view() -> View:
        width = rng.uniform(*ZOOM) * widest
        height = width / aspect
        return View(rng.uniform(width / 2, photo_w - width / 2), rng.uniform(height / 2, photo_h - height / 2), width)

    return view(), view()


def view_at(start: View, end: View, t: float) -> View:
    """The view at ``t`` in 0..1, eased in and out (a camera starts and stops smoothly)."""
    s = t * t * (3 - 2 * t)
    return View(*(a + (b - a) * s for a, b in zip(asdict(start).values(), asdict(end).values())))


def render_view(photo: np.ndarray, view: View, size: tuple[int, int]) -> tuple[np.ndarray, Transform]:
    """The frame (``size`` = width, height) the camera sees, and the photo-to-frame transform.

    Shrinking goes through ``INTER_AREA`` first (no aliasing), then a sub-pixel translation;
    enlarging is one bilinear warp. Outside the photo the border is replicated.
    """
    scale = size[0] / view.width
    image, sx, sy = photo, scale, scale
    if scale < 1:
        image = cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        sx, sy = image.shape[1] / photo.shape[1], image.shape[0] / photo.shape[0]
    tx, ty = size[0] / 2 - view.cx * sx, size[1] / 2 - view.cy * sy
    zoom = 1.0 if scale < 1 else scale
    matrix = np.float32([[zoom, 0, tx], [0, zoom, ty]])
    frame = cv2.warpAffine(image, matrix, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return frame, (sx, sy, tx, ty)


def map_box(box: Sequence[float], transform: Transform) -> list[float]:
    """A photo box ``[x, y, w, h]`` in frame coordinates."""
    sx, sy, tx, ty = transform
    return [box[0] * sx + tx, box[1] * sy + ty, box[2] * sx, box[3] * sy]


def frame_truth(truth: ImageTruth, transform: Transform, size: tuple[int, int]) -> ImageTruth:
    """The photo's faces and don't-care boxes as seen in one frame (clipped, integer pixels)."""
    out = ImageTruth()
    for boxes, is_face in ((truth.faces, True), (truth.ignores, False)):
        for box in boxes:
            x, y, w, h = map_box(box, transform)
            x0, y0, x1, y1 = max(0.0, x), max(0.0, y), min(size[0], x + w), min(size[1], y + h)
            if x1 <= x0 or y1 <= y0:
                continue
            clipped = [round(x0), round(y0), round(x1 - x0), round(y1 - y0)]
            visible = (x1 - x0) * (y1 - y0) / (w * h)
            good = is_face and visible >= MIN_VISIBLE and clipped[2] >= MIN_FACE and clipped[3] >= MIN_FACE
            (out.faces if good else out.ignores).append(clipped)
    return out


def clip_frames(
    photo: np.ndarray, truth: ImageTruth, size: tuple[int, int], frames: int, rng: np.random.Generator
) -> Iterator[tuple[np.ndarray, ImageTruth]]:
    """The frames of one photo's segment and their boxes."""
    start, end = camera_path(photo.shape[1], photo.shape[0], size[0] / size[1], rng)
    for i in range(frames):
        frame, transform = render_view(photo, view_at(start, end, i / max(1, frames - 1)), size)
        yield frame, frame_truth(truth, transform, size)


def clip_segments(
    data_dir: str | Path, size: tuple[int, int], photos: int, frames: int, seed: int = 0
) -> tuple[list[str], Iterator[tuple[np.ndarray, ImageTruth]]]:
    """``photos`` annotated photos with faces, drawn with ``seed``, and the frames of their segments.

    Returns:
        The photos' names and an iterator over ``(frame, boxes)``, ``frames`` per photo.
    """
    data_dir = Path(data_dir)
    annotations = {name: t for name, t in load_annotations(data_dir).items() if t.faces}
    if len(annotations) < photos:
        raise DataError(f"{data_dir}: {len(annotations)} annotated photos with faces, {photos} wanted")
    rng = np.random.default_rng(seed)
    chosen = [str(n) for n in sorted(rng.choice(sorted(annotations), photos, replace=False))]

    def frames_of_all() -> Iterator[tuple[np.ndarray, ImageTruth]]:
        for name in chosen:
            photo = cv2.imread(str(data_dir / name), cv2.IMREAD_COLOR)
            if photo is None:
                raise DataError(f"cannot read {data_dir / name}")
            yield from clip_frames(photo, annotations[name], size, frames, rng)

    return chosen, frames_of_all()


def make_clip(
    data_dir: str | Path,
    out: str | Path,
    size: tuple[int, int],
    photos: int = 8,
    seconds: float = 3.0,
    fps: float = 30.0,
    seed: int = 0,
) -> tuple[Path, Path]:
    """Write ``out.mp4`` and ``out.csv``: ``photos`` random annotated photos, ``seconds`` each.

    ``out.json`` records what was made (size, fps, seed, frames, photos).

    Returns:
        The video and the boxes file.
    """
    out = Path(out)
    chosen, frames = clip_segments(data_dir, size, photos, round(seconds * fps), seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    video, boxes = out.with_suffix(".mp4"), out.with_suffix(".csv")
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    if not writer.isOpened():
        raise PipelineError(f"{video}: cannot open a video writer")
    n = 0
    with boxes.open("w", newline="") as f:
        rows = csv.writer(f)
        rows.writerow(["frame", "kind", "x", "y", "w", "h"])
        for frame, truth in frames:
            writer.write(frame)
            rows.writerows([n, "face", *b] for b in truth.faces)
            rows.writerows([n, "ignore", *b] for b in truth.ignores)
            n += 1
    writer.release()
    meta = {"size": list(size), "fps": fps, "seconds_per_photo": seconds, "seed": seed, "frames": n, "photos": chosen}
    out.with_suffix(".json").write_text(json.dumps(meta, indent=1))
    return video, boxes


def read_truth(path: str | Path) -> dict[int, ImageTruth]:
    """Boxes per frame from a clip's ``.csv``."""
    truth: dict[int, ImageTruth] = {}
    with Path(path).open(newline="") as f:
        for row in csv.DictReader(f):
            entry = truth.setdefault(int(row["frame"]), ImageTruth())
            box = [int(row[k]) for k in ("x", "y", "w", "h")]
            (entry.faces if row["kind"] == "face" else entry.ignores).append(box)
    return truth


def parse_size(text: str) -> tuple[int, int]:
    """``"1280x720"`` -> ``(1280, 720)``."""
    width, _, height = text.lower().partition("x")
    if not (width.isdigit() and height.isdigit()) or not (16 <= int(width) <= 7680 and 16 <= int(height) <= 4320):
        raise ValueError(f"expected WIDTHxHEIGHT such as 1280x720, got {text!r}")
    return int(width), int(height)
