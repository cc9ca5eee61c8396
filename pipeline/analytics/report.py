"""Sentiment report from an emotion log: plots, CSV exports and an ``index.html`` to hand on.

Reads the SQLite log read-only, so it works while a pipeline is still writing it (WAL mode).
"""

from __future__ import annotations

import csv
import html
import sqlite3
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import PipelineError
from pipeline.vision.emotions import COLOURS, EMOTIONS, VALENCE


def read_detections(db_path: Path) -> list[dict[str, Any]]:
    """All face rows, oldest first (read-only; safe while the pipeline writes)."""
    if not db_path.is_file():
        raise PipelineError(f"{db_path}: no such database")
    try:
        with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10) as db:
            db.row_factory = sqlite3.Row
            rows = db.execute(
                "SELECT stream, frame, ts, track, emotion, confidence FROM detections ORDER BY ts, stream, face"
            ).fetchall()
    except sqlite3.Error as exc:
        raise PipelineError(f"{db_path}: cannot read the detections table: {exc}") from exc
    return [dict(r) for r in rows]


def summarise(rows: list[dict[str, Any]], bin_s: float = 1.0) -> dict[str, Any]:
    """Counts overall, per time bin, and per (stream, track)."""
    t0 = rows[0]["ts"]
    overall = Counter(r["emotion"] for r in rows)
    bins: dict[int, Counter] = defaultdict(Counter)
    tracks: dict[tuple[str, Any], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        bins[int((r["ts"] - t0) // bin_s)][r["emotion"]] += 1
        tracks[(r["stream"], r["track"])].append(r)
    per_track = []
    for (stream, track), track_rows in tracks.items():
        counts = Counter(r["emotion"] for r in track_rows)
        per_track.append({
            "stream": stream, "track": track, "faces": len(track_rows),
            "start_s": round(track_rows[0]["ts"] - t0, 2), "end_s": round(track_rows[-1]["ts"] - t0, 2),
            "dominant": counts.most_common(1)[0][0],
            **{f"share_{e}": round(counts[e] / len(track_rows), 4) for e in EMOTIONS},
        })  # fmt: skip
    per_track.sort(key=lambda t: -t["faces"])
    valence = Counter(VALENCE.get(r["emotion"], "neutral") for r in rows)
    return {
        "t0": t0,
        "duration_s": round(rows[-1]["ts"] - t0, 2),
        "faces": len(rows),
        "frames": len({(r["stream"], r["frame"]) for r in rows}),
        "streams": sorted({r["stream"] for r in rows}),
        "overall": overall,
        "valence": valence,
        "bins": dict(sorted(bins.items())),
        "bin_s": bin_s,
        "tracks": per_track,
    }


def _plots(s: dict[str, Any], rows: list[dict[str, Any]], out: Path) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [e for e in (*EMOTIONS, "uncertain") if s["overall"][e]]
    images = []

    # Emotion share over time.
    times = np.array(list(s["bins"])) * s["bin_s"]
    totals = np.array([sum(c.values()) for c in s["bins"].values()], dtype=float)
    shares = [np.array([c[e] for c in s["bins"].values()]) / totals for e in labels]
    fig, ax = plt.subplots(figsize=(10, 3.6))
    ax.stackplot(times, shares, labels=labels, colors=[COLOURS[e] for e in labels], step="post")
    ax.set(xlabel="time (s)", ylabel="share of faces", ylim=(0, 1), title="Emotion share over time")
    ax.legend(loc="upper left", bbox_to_anchor=(1, 1), fontsize=8)
    images.append(("share_over_time.png", "Emotion share over time"))
    fig.tight_layout()
    fig.savefig(out / images[-1][0], dpi=100)
    plt.close(fig)

    # Timeline per track (the 12 longest).
    shown = s["tracks"][:12]
    fig, ax = plt.subplots(figsize=(10, 0.5 + 0.45 * len(shown)))
    for y, t in enumerate(shown):
        track_rows = [r for r in rows if r["stream"] == t["stream"] and r["track"] == t["track"]]
        ax.scatter([r["ts"] - s["t0"] for r in track_rows], [y] * len(track_rows),
                   c=[COLOURS.get(r["emotion"], "#000") for r in track_rows], marker="|", s=200)  # fmt: skip
    ax.set_yticks(range(len(shown)), [f"{t['stream']} #{t['track']}" for t in shown])
    ax.set(xlabel="time (s)", title="Emotion timeline per face track")
    ax.invert_yaxis()
    images.append(("tracks.png", "Timeline per track"))
    fig.tight_layout()
    fig.savefig(out / images[-1][0], dpi=100)
    plt.close(fig)

    # Overall distribution and valence.
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.4), gridspec_kw={"width_ratios": [2, 1]})
    counts = [s["overall"][e] for e in labels]
    ax1.bar(labels, counts, color=[COLOURS[e] for e in labels])
    ax1.set(title="Overall distribution", ylabel="faces")
    names = ["positive", "neutral", "negative"]
    values = [s["valence"][n] for n in names]
    ax2.bar(names, values, color=[COLOURS["positive"], COLOURS["neutral_valence"], COLOURS["negative"]])
    for i, v in enumerate(values):
        ax2.text(i, v, f"{v / max(sum(values), 1):.0%}", ha="center", va="bottom")
    ax2.set(title="Positive / neutral / negative")
    images.append(("distribution.png", "Overall distribution and valence"))
    fig.tight_layout()
    fig.savefig(out / images[-1][0], dpi=100)
    plt.close(fig)
    return images


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        if not rows:
            return
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def write_report(db_path: str | Path, out_dir: str | Path, bin_s: float = 1.0) -> Path:
    """Write ``index.html``, PNG plots and CSV exports to ``out_dir``; return the HTML path."""
    db_path, out = Path(db_path), Path(out_dir)
    rows = read_detections(db_path)
    if not rows:
        raise PipelineError(f"{db_path}: no detections yet")
    out.mkdir(parents=True, exist_ok=True)
    s = summarise(rows, bin_s)
    images = _plots(s, rows, out)
    _write_csv(out / "detections.csv", rows)
    _write_csv(out / "tracks.csv", s["tracks"])
    _write_csv(out / "share_over_time.csv", [
        {"t_s": b * bin_s, "faces": sum(c.values()), **{e: c[e] for e in EMOTIONS}} for b, c in s["bins"].items()
    ])  # fmt: skip
    total = sum(s["valence"].values())
    figures = [
        ("streams", ", ".join(s["streams"])), ("duration", f"{s['duration_s']:.1f} s"),
        ("frames with faces", s["frames"]), ("face detections", s["faces"]), ("tracks", len(s["tracks"])),
        *((f"{n}", f"{s['valence'][n] / total:.1%}") for n in ("positive", "neutral", "negative")),
    ]  # fmt: skip
    track_rows = "".join(
        f"<tr><td>{html.escape(str(t['stream']))}</td><td>{t['track']}</td><td>{t['faces']}</td>"
        f"<td>{t['start_s']}–{t['end_s']} s</td><td>{html.escape(t['dominant'] or '')}</td></tr>"
        for t in s["tracks"][:20]
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Emotion report</title>
<style>body{{font-family:sans-serif;max-width:1050px;margin:2em auto;color:#222}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left}}
img{{max-width:100%}}</style></head><body>
<h1>Emotion report</h1>
<p>{html.escape(str(db_path))}, generated {time.strftime("%Y-%m-%d %H:%M:%S")}.
Positive = happy, surprise; negative = angry, disgust, fear, sad.</p>
<table>{"".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in figures)}</table>
{"".join(f'<h2>{html.escape(title)}</h2><img src="{name}" alt="{html.escape(title)}">' for name, title in images)}
<h2>Tracks</h2>
<table><tr><th>stream</th><th>track</th><th>faces</th><th>time</th><th>dominant</th></tr>{track_rows}</table>
<p>CSV: <a href="detections.csv">detections</a>, <a href="tracks.csv">tracks</a>,
<a href="share_over_time.csv">share over time</a>.</p>
</body></html>
"""
    path = out / "index.html"
    path.write_text(page)
    return path
