"""The report's charts as matplotlib figures: saved as PNG for the page and drawn into the PDF.

Each function draws into the figure (or sub-figure of a PDF page) it is given, or a new one
of its own size; figures are made with ``matplotlib.figure.Figure`` (no pyplot state) and
coloured from ``pipeline.vision.emotions.COLOURS`` like the video overlay and the live view.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure, SubFigure
from matplotlib.patches import Patch

from pipeline.analytics.summary import StreamSummary, TrackSummary
from pipeline.vision.emotions import COLOURS

VALENCE_NAMES = ("positive", "neutral", "negative")
VALENCE_COLOURS = (COLOURS["positive"], COLOURS["neutral_valence"], COLOURS["negative"])


def colour(label: str) -> str:
    return COLOURS.get(label, "#888888")


def clock_label(summary: StreamSummary) -> str:
    """The x-axis name: which clock the times are on."""
    if summary.stream.clock == "media":
        return "media time: position in the source (s)"
    return "wall-clock time since the first frame (s)"


def _legend(ax: Axes, labels: Sequence[str], **kwargs) -> None:
    handles = [Patch(color=colour(e), label=e) for e in labels]
    if handles:
        ax.legend(handles=handles, fontsize=8, frameon=False, **kwargs)


Canvas = Figure | SubFigure


def _canvas(fig: Canvas | None, width: float, height: float) -> Canvas:
    return fig if fig is not None else Figure(figsize=(width, height), layout="constrained")


def share_over_time(s: StreamSummary, fig: Canvas | None = None) -> Canvas:
    """Stacked bars: the share of face time per emotion in each time bin (any number of bins, even one)."""
    fig = _canvas(fig, 10, 3.2)
    ax = fig.add_subplot()
    starts = np.array([b[0] - s.start for b in s.bins])
    totals = np.array([sum(b[1].values()) for b in s.bins], dtype=float)
    bottom = np.zeros(len(s.bins))
    for label in s.labels:
        share = np.array([b[1][label] for b in s.bins]) / np.maximum(totals, 1e-9)
        ax.bar(starts, share, width=s.bin_s, bottom=bottom, align="edge", color=colour(label), linewidth=0)
        bottom += share
    ax.set(xlabel=clock_label(s), ylabel="share of face time", ylim=(0, 1), xlim=(0, max(s.duration, s.bin_s)))
    ax.yaxis.set_major_formatter(lambda v, _: f"{v:.0%}")
    _legend(ax, s.labels, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def draw_segments(ax: Axes, track: TrackSummary, y: float, start: float, height: float = 0.7) -> None:
    """One coloured bar per stretch of one label of ``track`` at height ``y``."""
    for label in {seg[2] for seg in track.segments}:
        spans = [(a - start, b - a) for a, b, e in track.segments if e == label]
        ax.broken_barh(spans, (y - height / 2, height), facecolors=colour(label), linewidth=0)


def timelines(s: StreamSummary, fig: Canvas | None = None, limit: int = 12) -> Canvas:
    """One row per person (the ``limit`` longest on screen), coloured by the label shown over time."""
    fig = _canvas(fig, 10, 1.3 + 0.45 * max(len(s.tracks[:limit]), 1))
    draw_timelines(fig.add_subplot(), s, limit)
    return fig


def draw_timelines(ax: Axes, s: StreamSummary, limit: int = 12) -> None:
    """``timelines`` into ``ax``."""
    shown = s.tracks[:limit]
    for y, track in enumerate(shown):
        draw_segments(ax, track, y, s.start)
    # Explicit limits: one track (or none) still gets a visible row.
    ax.set_ylim(max(len(shown), 1) - 0.5, -0.5)
    ax.set_xlim(0, max(s.duration, s.period))
    ax.set_yticks(range(len(shown)), [f"person {t.name}" for t in shown])
    ax.set(xlabel=clock_label(s))
    seen = {seg[2] for t in shown for seg in t.segments}
    _legend(ax, [e for e in s.labels if e in seen], loc="upper left", bbox_to_anchor=(1.0, 1.0))
    if not shown:
        ax.text(0.5, 0.5, "no face found", transform=ax.transAxes, ha="center", va="center")


def distribution(s: StreamSummary, fig: Canvas | None = None) -> Canvas:
    """Share of face time per emotion, and per valence, with every percentage inside the axes."""
    fig = _canvas(fig, 10, 3.2)
    ax1, ax2 = fig.subplots(1, 2, width_ratios=[2, 1])
    shares = [s.share(e) for e in s.labels]
    ax1.bar(s.labels, shares, color=[colour(e) for e in s.labels])
    values = [s.valence_share(n) for n in VALENCE_NAMES]
    ax2.bar(VALENCE_NAMES, values, color=VALENCE_COLOURS)
    for ax, heights in ((ax1, shares), (ax2, values)):
        top = max(heights, default=0)
        ax.set_ylim(0, max(top * 1.2, 0.05))  # room above the tallest bar for its label
        for i, v in enumerate(heights):
            ax.text(i, v + top * 0.02, f"{v:.0%}", ha="center", va="bottom", fontsize=9)
        ax.yaxis.set_major_formatter(lambda v, _: f"{v:.0%}")
        ax.tick_params(axis="x", labelsize=9)
    ax1.set(title="Share of face time per emotion", ylabel="share of face time")
    ax2.set(title="Positive / neutral / negative")
    return fig


def confidence(s: StreamSummary, fig: Canvas | None = None) -> Canvas:
    """How sure the model was: a histogram of the confidence of the label shown."""
    fig = _canvas(fig, 10, 2.6)
    ax = fig.add_subplot()
    if s.confidences:
        counts, _, _ = ax.hist(s.confidences, bins=20, range=(0, 1), color="#5b7fa8")
        ax.set_ylim(0, counts.max() * 1.18)  # room above the bars for the label of the mean
        ax.axvline(s.mean_confidence, color="#222", linestyle="--", linewidth=1)
        ax.text(s.mean_confidence, counts.max() * 1.16, f" mean {s.mean_confidence:.0%}", fontsize=9, va="top")
    ax.set(xlabel="confidence of the label shown", ylabel="faces", xlim=(0, 1))
    ax.xaxis.set_major_formatter(lambda v, _: f"{v:.0%}")
    return fig


def comparison(summaries: Sequence[StreamSummary], labels: Sequence[str], fig: Canvas | None = None) -> Canvas:
    """One stacked bar per run (or stream): its share of face time per emotion."""
    emotions = list(dict.fromkeys(e for s in summaries for e in s.labels))
    fig = _canvas(fig, 10, 1.4 + 0.5 * len(summaries))
    ax = fig.add_subplot()
    left = np.zeros(len(summaries))
    for e in emotions:
        share = np.array([s.share(e) for s in summaries])
        ax.barh(range(len(summaries)), share, left=left, color=colour(e), height=0.6)
        for y, (x, w) in enumerate(zip(left, share)):
            if w >= 0.06:  # a label only where it fits inside its bar
                ax.text(x + w / 2, y, f"{w:.0%}", ha="center", va="center", fontsize=8)
        left += share
    ax.set_yticks(range(len(summaries)), labels, fontsize=8)
    ax.set(xlim=(0, 1), xlabel="share of face time")
    ax.invert_yaxis()
    ax.xaxis.set_major_formatter(lambda v, _: f"{v:.0%}")
    _legend(ax, emotions, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig
