"""Compare served models, and the averages of their combinations, on the same faces, clean and
degraded: the figures behind choosing which networks to ship as one ensemble.

Each model directory is scored as it is served (its ``.tflite``, dim faces lifted as the classify
stage lifts them). A combination averages its members' probabilities, as ``ensemble`` serves
them (the served graph is quantized once more, so its figure can differ by a few faces). The
"mix" is the mean accuracy over ``MIX``: clean faces and the degradations camera faces resemble
(``train.degrade``). A baseline combination, if named, gets the paired bootstrap interval of each
combination's gain over it: the same faces resampled for both.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import DataError
from pipeline.vision.faces import model_input
from pipeline.vision.model import EmotionModel
from train.data import FaceSet, load_image_folder, segmentation_channels
from train.degrade import degrade
from train.train import served_probabilities

log = logging.getLogger(__name__)

MIX = ("clean", "blur", "lowres", "jpeg", "dark")
RECALLS = ("fear", "sad")  # the weak classes, reported for every row
COST_FACES = 300  # faces timed a model, in each of 3 rounds


@dataclass(frozen=True)
class Scored:
    """One model's served probabilities on each condition of ``MIX``."""

    name: str
    parameters: int
    probabilities: dict[str, np.ndarray]  # condition -> (N, classes)


def first_per_class(faces: FaceSet, limit: int) -> FaceSet:
    """At most ``limit`` faces of each class, the first in file order (quick, repeatable runs)."""
    keep = np.concatenate([np.flatnonzero(faces.labels == c)[:limit] for c in np.unique(faces.labels)])
    keep.sort()
    return FaceSet(faces.images[keep], faces.labels[keep], [faces.paths[i] for i in keep], faces.skipped)


def score_model(path: Path, conditions: dict[str, FaceSet], lift: bool = True) -> Scored:
    model = EmotionModel(path)
    info = json.loads((path / "model.json").read_text()) if (path / "model.json").is_file() else {}
    probabilities = {name: served_probabilities(model, faces, lift=lift) for name, faces in conditions.items()}
    return Scored(path.name, int(info.get("parameters", 0)), probabilities)


def compare(
    models: list[Path],
    data: str | Path,
    prefix: str | None = "PublicTest_",
    max_members: int = 4,
    baseline: str | None = None,
    limit: int | None = None,
    resamples: int = 2000,
    lift: bool = True,
) -> dict[str, Any]:
    """Score every model and every combination of up to ``max_members`` of them on ``MIX``.

    ``baseline``: member names joined by ``+`` (directory names), for the paired bootstrap.
    Returns the rows sorted by mix, best first, with the faces' count and what was compared.
    """
    names = [path.name for path in models]
    if len(set(names)) != len(names):
        raise DataError(f"models: two directories have the same name ({', '.join(names)}); rows are named by it")
    wanted = tuple(baseline.split("+")) if baseline else None
    if wanted and set(wanted) - set(names):
        raise DataError(f"--baseline {baseline}: {', '.join(sorted(set(wanted) - set(names)))} not among the models given")
    faces = load_image_folder(data, prefix)
    if limit:
        faces = first_per_class(faces, limit)
    conditions = {"clean": faces} | {
        kind: FaceSet(degrade(faces.images, kind), faces.labels, faces.paths) for kind in MIX if kind != "clean"
    }
    scored = {}
    for path in models:
        log.info("scoring %s on %d faces x %d conditions", path, len(faces), len(conditions))
        scored[path.name] = score_model(path, conditions, lift)
    cost = face_cost_ms(models, faces.images[:COST_FACES])
    classes = EmotionModel(models[0]).classes
    combos = [c for r in range(1, min(max_members, len(names)) + 1) for c in itertools.combinations(names, r)]
    if wanted and tuple(sorted(wanted, key=names.index)) not in combos:
        combos.append(tuple(sorted(wanted, key=names.index)))
    right = {combo: _right(combo, scored, faces.labels) for combo in combos}
    base = right[tuple(sorted(wanted, key=names.index))] if wanted else None
    rows = []
    for combo in combos:
        per_face = right[combo]  # (conditions, N) bool
        clean_pred = np.mean([scored[n].probabilities["clean"] for n in combo], axis=0).argmax(axis=1)
        row = {
            "members": list(combo),
            "parameters": sum(scored[n].parameters for n in combo),
            "ms_a_face": round(sum(cost[n] for n in combo), 2),
            "accuracy": {c: round(100 * float(per_face[i].mean()), 2) for i, c in enumerate(MIX)},
            "mix": round(100 * float(per_face.mean()), 2),
            "recall": {c: round(_recall(faces.labels, clean_pred, classes.index(c)), 3) for c in RECALLS},
        }
        if base is not None:
            row["gain"] = _paired_gain(per_face.mean(axis=0), base.mean(axis=0), resamples)
        rows.append(row)
    rows.sort(key=lambda row: -row["mix"])
    return {"data": str(data), "prefix": prefix, "n": len(faces), "conditions": list(MIX), "baseline": baseline, "rows": rows}


def face_cost_ms(models: list[Path], faces: np.ndarray, rounds: int = 3) -> dict[str, float]:
    """Median ms to classify one face with each model as classify serves it (LiteRT, one thread).

    The models take turns, a round each, so a busy machine slows them alike. A combination
    costs about the sum of its members: the served ensemble runs each member's graph.
    """
    served = {path.name: EmotionModel(path, threads=1) for path in models}
    inputs = {name: _served_input(model, faces) for name, model in served.items()}
    times: dict[str, list[float]] = {name: [] for name in served}
    for _ in range(rounds):
        for name, model in served.items():
            for face in inputs[name]:
                start = time.perf_counter()
                model.predict(face[None])
                times[name].append(time.perf_counter() - start)
    return {name: 1000 * float(np.median(t)) for name, t in times.items()}


def _served_input(model: EmotionModel, faces: np.ndarray) -> np.ndarray:
    """The CNN's input; a model trained with segmentation also gets its K-means channel (not timed)."""
    seg = segmentation_channels(faces, model.info.segmentation_k) if model.info.segmentation else None
    return model_input(faces, seg)


def _right(combo: tuple[str, ...], scored: dict[str, Scored], labels: np.ndarray) -> np.ndarray:
    """(conditions, N): whether the combination's averaged probabilities are right on each face."""
    return np.stack([np.mean([scored[n].probabilities[c] for n in combo], axis=0).argmax(axis=1) == labels for c in MIX])


def _recall(labels: np.ndarray, predicted: np.ndarray, cls: int) -> float:
    mask = labels == cls
    return float((predicted[mask] == cls).mean()) if mask.any() else float("nan")


def _paired_gain(ours: np.ndarray, theirs: np.ndarray, resamples: int, seed: int = 0) -> dict[str, float]:
    """Mix gain in points, and its 95 % paired bootstrap interval (per face: share of conditions right)."""
    diff = ours - theirs
    rng = np.random.default_rng(seed)
    means = np.array([diff[rng.integers(0, len(diff), len(diff))].mean() for _ in range(resamples)])
    low, high = np.percentile(means, [2.5, 97.5])
    return {"points": round(100 * float(diff.mean()), 2), "low": round(100 * float(low), 2), "high": round(100 * float(high), 2)}


def format_compare(result: dict[str, Any]) -> str:
    head = f"{'members':<48} {'M par':>6} {'ms':>5} " + " ".join(f"{c:>7}" for c in MIX) + f" {'mix':>7}  fear/sad"
    if result["baseline"]:
        head += f"  gain over {result['baseline']} (95 % CI)"
    lines = [f"{result['data']} {result['prefix'] or ''}* : {result['n']} faces, accuracy % as served", head]
    for row in result["rows"]:
        line = (
            f"{'+'.join(row['members']):<48} {row['parameters'] / 1e6:6.2f} {row['ms_a_face']:5.2f} "
            + " ".join(f"{row['accuracy'][c]:7.2f}" for c in MIX)
            + f" {row['mix']:7.2f}  {row['recall']['fear']:.2f}/{row['recall']['sad']:.2f}"
        )
        if "gain" in row:
            gain = row["gain"]
            line += f"  {gain['points']:+.2f} ({gain['low']:+.2f} .. {gain['high']:+.2f})"
        lines.append(line)
    return "\n".join(lines) + "\n"
