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
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import DataError
from pipeline.vision.model import EmotionModel
from train.data import FaceSet, first_per_class, load_image_folder
from train.degrade import degrade
from train.train import served_input, served_probabilities

log = logging.getLogger(__name__)

MIX = ("clean", "blur", "lowres", "jpeg", "dark")
RECALLS = ("fear", "sad")  # the weak classes, reported for every row
COST_FACES = 300  # faces timed a model, in each of 3 rounds


@dataclass(frozen=True)
class Scored:
    """One model's served probabilities on each condition of ``MIX``."""

    parameters: int | None  # None: not in its model.json
    probabilities: dict[str, np.ndarray]  # condition -> (N, classes)


def parse_baseline(baseline: str, names: list[str]) -> tuple[str, ...]:
    """``A+B`` -> the members in the order the models were given; each must be one of ``names``, once."""
    members = baseline.split("+")
    unknown = [m for m in members if m not in names]
    if unknown:
        raise DataError(
            f"--baseline {baseline}: {', '.join(repr(m) for m in unknown)} not among the models given ({', '.join(names)})"
        )
    if len(set(members)) != len(members):
        raise DataError(f"--baseline {baseline}: a model named twice")
    return tuple(sorted(members, key=names.index))


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
    base_members = parse_baseline(baseline, names) if baseline else None
    served = {path.name: EmotionModel(path, threads=1) for path in models}  # a bad directory fails here, first
    classes = served[names[0]].classes
    for name, model in served.items():
        if model.classes != classes:
            raise DataError(f"{name}: classes {', '.join(model.classes)} differ from {names[0]}'s {', '.join(classes)}")
    faces = load_image_folder(data, prefix)
    if limit:
        faces = first_per_class(faces, limit)
    conditions = {"clean": faces} | {
        kind: FaceSet(degrade(faces.images, kind), faces.labels, faces.paths) for kind in MIX if kind != "clean"
    }
    scored = {}
    for path in models:
        log.info("scoring %s on %d faces x %d conditions", path, len(faces), len(conditions))
        model = served[path.name]
        probabilities = {kind: served_probabilities(model, degraded, lift=lift) for kind, degraded in conditions.items()}
        scored[path.name] = Scored(model.info.raw.get("parameters"), probabilities)  # as train/ensemble wrote it
    log.info("timing each model on %d faces", min(COST_FACES, len(faces)))
    cost = face_cost_ms(served, faces.images[:COST_FACES])
    combos = [c for r in range(1, min(max_members, len(names)) + 1) for c in itertools.combinations(names, r)]
    if base_members and base_members not in combos:
        combos.append(base_members)
    rows = _rows(combos, scored, cost, faces.labels, classes, base_members, resamples)
    return {"data": str(data), "prefix": prefix, "n": len(faces), "conditions": list(MIX), "baseline": baseline, "rows": rows}


def _rows(
    combos: list[tuple[str, ...]],
    scored: dict[str, Scored],
    cost: dict[str, float],
    labels: np.ndarray,
    classes: tuple[str, ...],
    base_members: tuple[str, ...] | None,
    resamples: int,
) -> list[dict[str, Any]]:
    """A row of figures for each combination, best mix first."""
    predicted = {combo: _predicted(combo, scored) for combo in combos}
    base = _right(predicted[base_members], labels) if base_members else None
    rows = []
    for combo in combos:
        right = _right(predicted[combo], labels)  # (conditions, N) bool
        clean = predicted[combo][MIX.index("clean")]
        row = {
            "members": list(combo),
            "parameters": _total(scored[n].parameters for n in combo),
            "ms_a_face": round(sum(cost[n] for n in combo), 2),
            "accuracy": {c: round(100 * float(right[i].mean()), 2) for i, c in enumerate(MIX)},
            "mix": round(100 * float(right.mean()), 2),
            "recall": {c: _recall(labels, clean, classes.index(c)) for c in RECALLS},
        }
        if base is not None:
            row["gain"] = paired_gain(right.mean(axis=0), base.mean(axis=0), resamples)
        rows.append(row)
    return sorted(rows, key=lambda row: -row["mix"])


def face_cost_ms(served: dict[str, EmotionModel], faces: np.ndarray, rounds: int = 3) -> dict[str, float]:
    """Median ms to classify one face with each model as classify serves it (LiteRT, one thread).

    The models take turns, a round each, so a busy machine slows them alike. A combination
    costs about the sum of its members: the served ensemble runs each member's graph. A model
    trained with segmentation gets its K-means channel, whose cost (the segment stage's) is not
    counted.
    """
    inputs = {name: served_input(model, faces) for name, model in served.items()}
    times: dict[str, list[float]] = {name: [] for name in served}
    for _ in range(rounds):
        for name, model in served.items():
            for face in inputs[name]:
                start = time.perf_counter()
                model.predict(face[None])
                times[name].append(time.perf_counter() - start)
    return {name: 1000 * float(np.median(t)) for name, t in times.items()}


def _predicted(combo: tuple[str, ...], scored: dict[str, Scored]) -> np.ndarray:
    """(conditions, N): the class the combination's averaged probabilities give each face."""
    return np.stack([np.mean([scored[n].probabilities[c] for n in combo], axis=0).argmax(axis=1) for c in MIX])


def _right(predicted: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return predicted == labels[None, :]


def _recall(labels: np.ndarray, predicted: np.ndarray, cls: int) -> float | None:
    """Share of class ``cls`` predicted as such, 3 decimals; None when no face of it was scored."""
    mask = labels == cls
    return round(float((predicted[mask] == cls).mean()), 3) if mask.any() else None


def paired_gain(ours: np.ndarray, theirs: np.ndarray, resamples: int = 2000, seed: int = 0) -> dict[str, float]:
    """Mean gain in points, and its 95 % paired bootstrap interval.

    ``ours`` and ``theirs`` hold one score per face (here: its share of conditions right), for the
    same faces: each resample draws faces, and both are scored on the same draw.
    """
    diff = ours - theirs
    rng = np.random.default_rng(seed)
    means = np.array([diff[rng.integers(0, len(diff), len(diff))].mean() for _ in range(resamples)])
    low, high = np.percentile(means, [2.5, 97.5])
    return {"points": round(100 * float(diff.mean()), 2), "low": round(100 * float(low), 2), "high": round(100 * float(high), 2)}


def format_compare(result: dict[str, Any]) -> str:
    """The result of ``compare`` as a table, one row a combination, best mix first."""
    head = f"{'members':<48} {'M par':>6} {'ms':>5} " + " ".join(f"{c:>7}" for c in MIX) + f" {'mix':>7}  fear/sad"
    if result["baseline"]:
        head += f"  gain over {result['baseline']} (95 % CI)"
    lines = [f"{result['data']} {result['prefix'] or ''}* : {result['n']} faces, accuracy % as served", head]
    for row in result["rows"]:
        line = (
            f"{'+'.join(row['members']):<48} {_millions(row['parameters']):>6} {row['ms_a_face']:5.2f} "
            + " ".join(f"{row['accuracy'][c]:7.2f}" for c in MIX)
            + f" {row['mix']:7.2f}  {_share(row['recall']['fear'])}/{_share(row['recall']['sad'])}"
        )
        if "gain" in row:
            gain = row["gain"]
            line += f"  {gain['points']:+.2f} ({gain['low']:+.2f} .. {gain['high']:+.2f})"
        lines.append(line)
    return "\n".join(lines) + "\n"


def _total(counts: Iterable[int | None]) -> int | None:
    counts = list(counts)
    return None if None in counts else sum(counts)


def _millions(parameters: int | None) -> str:
    return "-" if parameters is None else f"{parameters / 1e6:.2f}"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
