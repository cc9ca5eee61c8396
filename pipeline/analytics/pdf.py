"""``report.pdf``: the HTML report's sections on A4 pages, for print (matplotlib's PdfPages).

The same headings as ``index.html`` in the same order; the video becomes a still and its file
name, the charts stay vectors. Text is embedded as TrueType (``pdf.fonttype`` 42), so the
PDF can be searched and its text copied.
"""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import matplotlib
import matplotlib.image
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure, SubFigure

from pipeline.analytics import media, plots
from pipeline.analytics.report import CSV_FILES, Group, comparison_rows, key_figures, model_text, seconds
from pipeline.analytics.summary import TrackSummary

Canvas = Figure | SubFigure

A4 = (8.27, 11.69)  # inches
MARGIN = 0.6
PEOPLE_PER_PAGE = 5


class Writer:
    """Text from the top of a figure (or sub-figure) downwards; positions in inches.

    Args:
        canvas: the page, or a sub-figure of it.
        size: the canvas's (width, height) in inches.
        left, top: where text starts, from the canvas's left and top edges.
    """

    def __init__(self, canvas: Canvas, size: tuple[float, float], left: float = MARGIN, top: float = MARGIN):
        self.canvas, self.size, self.left, self.y = canvas, size, left, size[1] - top

    def _put(self, x: float, text: str, **kwargs) -> None:
        self.canvas.text(x / self.size[0], self.y / self.size[1], text, va="top", **kwargs)

    def heading(self, text: str, size: float = 14) -> None:
        self._put(self.left, text, fontsize=size, weight="bold")
        self.y -= size / 72 * 1.8

    def table(self, rows: list[tuple[str, str]], size: float = 9, width: int = 78) -> None:
        """Label and (wrapped) value, one row each."""
        step = size / 72 * 1.45
        for label, value in rows:
            self._put(self.left, label, fontsize=size, weight="bold")
            for line in textwrap.wrap(str(value), width) or ["-"]:
                self._put(self.left + 1.5, line, fontsize=size)
                self.y -= step
            self.y -= step * 0.25

    def text(self, text: str, size: float = 9, family: str = "sans-serif", width: int = 100, **style) -> None:
        for line in text.splitlines() or [""]:
            for part in textwrap.wrap(line, width, replace_whitespace=False, drop_whitespace=False) or [""]:
                self._put(self.left, part, fontsize=size, family=family, **style)
                self.y -= size / 72 * 1.4


def _page(constrained: bool = True) -> Figure:
    """An A4 page; with constrained layout, charts and their labels stay inside the margins."""
    if not constrained:
        return Figure(figsize=A4)
    fig = Figure(figsize=A4, layout="constrained")
    fig.get_layout_engine().set(rect=(MARGIN / A4[0], MARGIN / A4[1], 1 - 2 * MARGIN / A4[0], 1 - 2 * MARGIN / A4[1]))
    return fig


INNER = (A4[0] - 2 * MARGIN, A4[1] - 2 * MARGIN)  # the part of a constrained page inside its margins


def _titled(sub: SubFigure, title: str) -> SubFigure:
    sub.suptitle(title, x=0.0, ha="left", fontsize=12, weight="bold")
    return sub


def _intro(w: Writer, groups: list[Group], db_path: Path) -> None:
    w.heading("Emotion report", 20)
    w.text(f"{db_path}: {len({g.stream.run.id for g in groups})} run(s), generated {time.strftime('%Y-%m-%d %H:%M:%S')}.")
    w.text("Shares are shares of face time: each face counts for as long as its frame lasts. The HTML report "
           "(index.html) holds the same sections, the video and the CSV exports.", width=110)  # fmt: skip
    w.y -= 0.15


def _comparison_page(pdf: PdfPages, groups: list[Group], db_path: Path) -> None:
    """The introduction, the comparison chart, then a paragraph per run (and stream)."""
    fig = _page()
    heights = [1.6, min(1.6 + 0.45 * len(groups), 5.0)]
    top, middle, bottom = fig.subfigures(3, 1, height_ratios=[*heights, INNER[1] - sum(heights)])
    w = Writer(top, (INNER[0], heights[0]), left=0, top=0)
    _intro(w, groups, db_path)
    w.heading("Comparison", 14)
    plots.comparison([g.summary for g in groups], [g.title for g in groups], middle)
    w = Writer(bottom, (INNER[0], INNER[1] - sum(heights)), left=0, top=0.1)
    for g, r in zip(groups, comparison_rows(groups)):
        w.text(g.title, size=9, weight="bold")
        settings = f", {r['settings']}" if r["settings"] else ""
        w.text(f"{r['started']}, {r['source']}, model {r['model']} ({r['model_fingerprint']}){settings}: "
               f"{seconds(g.summary.duration)}, "
               f"coverage {r['coverage']:.0%}, {r['people']} people; positive {r['valence_positive']:.0%}, "
               f"neutral {r['valence_neutral']:.0%}, negative {r['valence_negative']:.0%} of face time",
               size=8.5, width=120)  # fmt: skip
        w.y -= 0.08
    pdf.savefig(fig)


def _summary_page(pdf: PdfPages, g: Group, intro: tuple[list[Group], Path] | None) -> None:
    fig = _page()
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.25, 1])
    w = Writer(top, (INNER[0], INNER[1] * 1.25 / 2.25), left=0, top=0)
    if intro:
        _intro(w, *intro)
    w.heading(g.title, 16)
    w.heading("Summary", 12)
    w.table(key_figures(g.summary))
    _titled(bottom, "Video")
    ax = bottom.add_subplot()
    ax.set_axis_off()
    frame = media.still(g.video, g.summary.tracks[0].best["t"] - g.summary.start) if g.video and g.summary.tracks else None
    if frame is not None:
        ax.imshow(frame)
    name = g.video_file or (g.video.name if g.video else None)
    ax.set_title(f"a frame of the annotated video ({name}, beside this report)" if name else
                 "no annotated video of this run is beside the log", fontsize=9)  # fmt: skip
    pdf.savefig(fig)


def _person(fig: Figure, y: float, g: Group, t: TrackSummary, folder: Path) -> None:
    """One person 1.75 inches tall from ``y`` (inches from the bottom) down: thumbnail, figures, timeline."""
    s, left = g.summary, MARGIN + 1.55
    if g.thumbs.get(t.track):
        ax = fig.add_axes((MARGIN / A4[0], (y - 1.4) / A4[1], 1.4 / A4[0], 1.4 / A4[1]))
        ax.imshow(matplotlib.image.imread(folder / g.thumbs[t.track]))
        ax.set_axis_off()
    confidence = f"; mean confidence {t.confidence:.0%}" if t.confidence is not None else ""
    lines = [f"Person {t.name}: on screen {seconds(t.on_screen)} ({t.on_screen / s.duration:.0%} of {seconds(s.duration)}), "
             f"seen {t.first - s.start:.1f}-{t.last - s.start:.1f} s",
             f"mostly {t.dominant}; mean valence {t.valence:+.2f}{confidence}",
             *textwrap.wrap("time per emotion: " + ", ".join(f"{e} {seconds(v)}" for e, v in t.seconds.most_common()),
                            85)]  # fmt: skip
    for i, line in enumerate(lines[:4]):
        fig.text(left / A4[0], (y - 0.05 - 0.19 * i) / A4[1], line, fontsize=8.5, va="top", weight="bold" if i == 0 else None)
    ax = fig.add_axes((left / A4[0], (y - 1.4) / A4[1], (A4[0] - left - MARGIN) / A4[0], 0.28 / A4[1]))
    plots.draw_segments(ax, t, 0, s.start, height=1.0)
    ax.set(xlim=(0, max(s.duration, s.period)), ylim=(-0.5, 0.5), yticks=[])
    ax.tick_params(labelsize=7)


def _people_pages(pdf: PdfPages, g: Group, folder: Path) -> None:
    """Five people a page; the timeline of everyone below them where there is room."""
    tracks = g.summary.tracks[:20]
    pages = range(0, max(len(tracks), 1), PEOPLE_PER_PAGE)
    for start in pages:
        fig = _page(constrained=False)
        w = Writer(fig, A4)
        w.heading("People" if start == 0 else "People (continued)", 12)
        if not tracks:
            w.text("No face was found.")
        shown = tracks[start : start + PEOPLE_PER_PAGE]
        for i, t in enumerate(shown):
            _person(fig, w.y - 1.85 * i, g, t, folder)
        w.y -= 1.85 * len(shown)
        height = 0.4 + 0.4 * min(len(tracks), 12)  # the chart, without its axis labels
        if start == pages[-1] and tracks and w.y - MARGIN - 0.9 >= height:
            w.heading("Timeline per person", 11)
            left, right = MARGIN + 0.9, A4[0] - MARGIN - 1.0  # room for the names and the legend
            ax = fig.add_axes((left / A4[0], (w.y - height - 0.1) / A4[1], (right - left) / A4[0], height / A4[1]))
            plots.draw_timelines(ax, g.summary)
        pdf.savefig(fig)


def _charts_page(pdf: PdfPages, g: Group) -> None:
    fig = _page()
    subs = fig.subfigures(3, 1, height_ratios=[1.15, 1.15, 0.9])
    for sub, title, draw in zip(subs, ("Emotion share over time", "Overall share", "Confidence"),
                                (plots.share_over_time, plots.distribution, plots.confidence)):  # fmt: skip
        draw(g.summary, _titled(sub, title))
    pdf.savefig(fig)


def _source_page(pdf: PdfPages, g: Group, last: bool) -> None:
    run = g.stream.run
    fig = _page(constrained=False)
    w = Writer(fig, A4)
    w.heading("Source, model and configuration", 12)
    w.table([("run", run.id), ("source", f"{g.stream.source or 'unknown'} ({g.stream.kind})"),
             ("model", model_text(run)), ("model path", run.model_path or "-"), ("host", run.host or "-"),
             ("project version", run.version or "-")])  # fmt: skip
    w.text("The topology as run (every parameter resolved):", size=9)
    config = (run.config or "-").splitlines()
    room = int((w.y - MARGIN - (0.7 if last else 0)) / (6.5 / 72 * 1.4))
    if len(config) > room:
        config = [*config[: room - 1], f"... {len(config) - room + 1} more lines in index.html"]
    w.text("\n".join(config), size=6.5, family="monospace", width=130)
    if last:
        w.y -= 0.15
        w.heading("Data", 12)
        w.text(f"CSV files beside this report: {', '.join(CSV_FILES)}.")
    pdf.savefig(fig)


def write_pdf(groups: list[Group], db_path: Path, folder: Path, path: Path) -> Path:
    """Write the print version of the report: the same sections as ``index.html``."""
    with matplotlib.rc_context({"pdf.fonttype": 42}), PdfPages(path, metadata={"Title": "Emotion report"}) as pdf:
        several = len(groups) > 1
        if several:
            _comparison_page(pdf, groups, db_path)
        for i, g in enumerate(groups):
            _summary_page(pdf, g, None if several or i else (groups, db_path))
            _people_pages(pdf, g, folder)
            _charts_page(pdf, g)
            _source_page(pdf, g, last=i == len(groups) - 1)
    return path
