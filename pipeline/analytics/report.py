"""A sentiment report to hand on: ``index.html`` (the main output), ``report.pdf`` and CSV exports.

One section per stream of each chosen run (``--runs latest``, ``all`` or ids): key figures,
the annotated video, each person (track) with a thumbnail, time on screen, time per emotion,
mean valence and a small timeline, the share over time, the overall share, confidence, and
the source, model and configuration; a comparison first when there are several. Times are
media time for files and image folders and wall-clock for live sources; the page says which.
Reads the log read-only, so it works while a pipeline is still writing it (WAL mode).
"""

from __future__ import annotations

import csv
import html
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from matplotlib.figure import Figure

from pipeline.analytics import media, plots
from pipeline.analytics.data import Stream, read_log
from pipeline.analytics.summary import StreamSummary, TrackSummary, summarise
from pipeline.errors import PipelineError
from pipeline.vision.emotions import VALENCE

SECTIONS = ("Summary", "Video", "People", "Emotion share over time", "Overall share", "Confidence",
            "Source, model and configuration")  # fmt: skip
PLOTS = {"share": plots.share_over_time, "timelines": plots.timelines, "distribution": plots.distribution,
         "confidence": plots.confidence}  # fmt: skip
CSV_FILES = ("runs.csv", "tracks.csv", "detections.csv", "frames.csv", "share_over_time.csv")


@dataclass
class Group:
    """One stream of one run, with the files made for it."""

    summary: StreamSummary
    prefix: str
    plots: dict[str, str] = field(default_factory=dict)  # key of PLOTS -> PNG file name
    thumbs: dict[Any, str] = field(default_factory=dict)  # track -> JPEG file name
    video: Path | None = None  # the run's annotated video (where render wrote it)
    video_file: str | None = None  # its copy beside the report, when browsers play it

    @property
    def stream(self) -> Stream:
        return self.summary.stream

    @property
    def title(self) -> str:
        return self.stream.label


def seconds(value: float) -> str:
    """``15.5 s``, or ``2 min 05.0 s`` from a minute on."""
    return f"{value:.1f} s" if value < 60 else f"{int(value // 60)} min {value % 60:04.1f} s"


def clock_text(stream: Stream) -> str:
    if stream.clock == "media":
        return "media time (the position in the source, from its timestamps): the same however fast it ran"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(min(r["ts"] for r in stream.frames or stream.faces)))
    return f"wall-clock time since the first frame ({started}): a live source has no position of its own"


def key_figures(s: StreamSummary) -> list[tuple[str, str]]:
    """The Summary table of one stream."""
    run, stream = s.stream.run, s.stream
    return [
        ("source", f"{stream.source or 'unknown'} ({stream.kind})"),
        ("times are", clock_text(stream)),
        ("started", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.started))),
        ("duration", seconds(s.duration)),
        ("frames", f"{s.frames}"),
        ("coverage", f"{s.coverage:.1%} of frames have a face ({s.frames_with_faces} of {s.frames})"),
        ("people (tracks)", f"{len(s.tracks)}"),
        ("mean confidence", f"{s.mean_confidence:.0%}" if s.mean_confidence is not None else "-"),
        *((name, f"{s.valence_share(name):.1%} of face time") for name in plots.VALENCE_NAMES),
        ("model", model_text(run)),
    ]


def model_text(run: Any) -> str:
    if not run.model:
        return "unknown"
    accuracy = f", test accuracy {run.model_accuracy:.1%}" if run.model_accuracy is not None else ""
    return f"{run.model} (fingerprint {run.model_fingerprint}{accuracy})"


def _params(config: str | None) -> dict[str, Any]:
    """``stage.param -> value`` from a run's resolved YAML."""
    try:
        data = yaml.safe_load(config or "") or {}
    except yaml.YAMLError:
        return {}
    stages = [s for s in data.get("stages", []) if isinstance(s, dict)] if isinstance(data, dict) else []
    return {f"{s.get('name')}.{k}": v for s in stages for k, v in (s.get("params") or {}).items()}


def settings_that_differ(groups: list[Group]) -> dict[str, str]:
    """Per run: its values of the params in which the runs' configurations differ (``capture.pacing=max``)."""
    params = {g.stream.run.id: _params(g.stream.run.config) for g in groups}
    keys = sorted({k for p in params.values() for k in p})
    differ = [k for k in keys if len({repr(p.get(k)) for p in params.values()}) > 1 and not k.endswith(".source")]
    return {run: ", ".join(f"{k}={p.get(k)}" for k in differ) for run, p in params.items()}


def comparison_rows(groups: list[Group]) -> list[dict[str, Any]]:
    """One row per stream of each run: what the Comparison section and ``runs.csv`` show."""
    rows = []
    differ = settings_that_differ(groups)
    for g in groups:
        s, run = g.summary, g.stream.run
        rows.append({
            "run": run.id, "stream": g.stream.stream,
            "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.started)),
            "source": g.stream.source or "", "clock": g.stream.clock, "model": run.model or "",
            "model_fingerprint": run.model_fingerprint or "", "settings": differ.get(run.id, ""),
            "duration_s": round(s.duration, 2), "frames": s.frames,
            "coverage": round(s.coverage, 4), "people": len(s.tracks),
            "mean_confidence": round(s.mean_confidence, 4) if s.mean_confidence is not None else "",
            **{f"share_{e}": round(s.share(e), 4) for e in s.labels},
            **{f"valence_{v}": round(s.valence_share(v), 4) for v in plots.VALENCE_NAMES},
        })  # fmt: skip
    return rows


def _save(fig: Figure, path: Path) -> None:
    fig.savefig(path, dpi=110)


def _prepare(summary: StreamSummary, index: int, out: Path, db_folder: Path) -> Group:
    """Plots, thumbnails and the video of one stream, written into ``out``."""
    group = Group(summary, prefix=f"r{index}-")
    for key, make in PLOTS.items():
        group.plots[key] = f"{group.prefix}{key}.png"
        _save(make(summary), out / group.plots[key])
    group.video = media.run_video(summary.stream, db_folder)
    if group.video is not None and media.playable(group.video):
        group.video_file = media.copy_beside(group.video, out, f"{group.prefix}video{group.video.suffix}").name
    group.thumbs = media.write_thumbnails(summary, group.video, out, group.prefix)
    return group


def write_report(db_path: str | Path, out_dir: str | Path, bin_s: float = 1.0, runs: str = "latest", pdf: bool = True) -> Path:
    """Write ``index.html``, ``report.pdf``, PNG plots, thumbnails and CSV exports; return the HTML path.

    Args:
        db_path: the emotion log.
        out_dir: the report folder (made if needed).
        bin_s: seconds per bin of the share over time.
        runs: ``latest``, ``all``, or run ids separated by commas.
        pdf: also write the print-ready ``report.pdf``.
    """
    db_path, out = Path(db_path), Path(out_dir)
    chosen, streams, classes = read_log(db_path, runs)
    if not streams:
        raise PipelineError(f"{db_path}: no frames logged yet for run {', '.join(r.id for r in chosen)}")
    out.mkdir(parents=True, exist_ok=True)
    groups = [_prepare(summarise(s, classes, bin_s), i, out, db_path.parent) for i, s in enumerate(streams, 1)]
    if len(groups) > 1:
        _save(plots.comparison([g.summary for g in groups], [g.title for g in groups]), out / "comparison.png")
    write_csvs(groups, classes, out)
    path = out / "index.html"
    path.write_text(page(groups, db_path, pdf))
    if pdf:
        from pipeline.analytics.pdf import write_pdf

        write_pdf(groups, db_path, out, out / "report.pdf")
    return path


# --- CSV ---------------------------------------------------------------------------------------
def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        if rows:
            writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)), restval="")
            writer.writeheader()
            writer.writerows(rows)


def track_row(g: Group, t: TrackSummary) -> dict[str, Any]:
    """A row of ``tracks.csv``: one person's figures, seconds and shares per emotion."""
    s = g.summary
    return {
        "run": g.stream.run.id, "stream": g.stream.stream, "track": t.track, "faces": t.faces,
        "first_s": round(t.first - s.start, 3), "last_s": round(t.last - s.start, 3), "on_screen_s": round(t.on_screen, 3),
        "dominant": t.dominant, "mean_valence": round(t.valence, 4),
        "mean_confidence": round(t.confidence, 4) if t.confidence is not None else "",
        **{f"seconds_{e}": round(t.seconds[e], 3) for e in s.labels},
        **{f"share_{e}": round(t.seconds[e] / t.on_screen, 4) if t.on_screen else 0 for e in s.labels},
    }  # fmt: skip


def write_csvs(groups: list[Group], classes: list[str], out: Path) -> None:
    """``runs``, ``tracks``, ``detections`` (boxes, probabilities, media time), ``frames``, ``share_over_time``."""
    _write_csv(out / "runs.csv", comparison_rows(groups))
    _write_csv(out / "tracks.csv", [track_row(g, t) for g in groups for t in g.summary.tracks])
    time_first = ("run", "stream", "frame", "t", "media_ts", "ts")
    for name, key in (("detections.csv", "faces"), ("frames.csv", "frames")):
        rows = [
            {**{k: r.get(k) for k in time_first}, **{k: v for k, v in r.items() if k not in time_first}, "clock": g.stream.clock}
            for g in groups
            for r in getattr(g.stream, key)
        ]
        for r in rows:
            r["t"] = round(r["t"], 4)
        _write_csv(out / name, rows)
    shares = []
    for g in groups:
        s = g.summary
        for start, counts in s.bins:
            total = sum(counts.values()) or 1.0
            shares.append({"run": g.stream.run.id, "stream": g.stream.stream, "t_s": round(start - s.start, 3),
                           "face_seconds": round(total, 3), **{e: round(counts[e] / total, 4) for e in s.labels}})  # fmt: skip
    _write_csv(out / "share_over_time.csv", shares)


# --- HTML --------------------------------------------------------------------------------------
STYLE = """body{font-family:system-ui,sans-serif;max-width:1180px;margin:2em auto;padding:0 1em;color:#222;line-height:1.4}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}
img{max-width:100%}h2{margin-top:2em;border-bottom:2px solid #444}h3{margin-top:1.5em}
.person{display:flex;gap:1em;align-items:flex-start;border:1px solid #ddd;border-radius:6px;padding:.6em;margin:.6em 0}
.person img{height:120px;border-radius:4px}.person table{font-size:.9em}.chip{display:inline-block;width:.9em;height:.9em;
vertical-align:middle;margin-right:.2em}video{max-width:100%;background:#000}pre{background:#f6f6f6;padding:.6em;overflow:auto;
font-size:.85em}.compare{font-size:.85em}.compare td{white-space:nowrap}
@media print{video{display:none}.person{break-inside:avoid}}"""


def esc(value: Any) -> str:
    return html.escape(str(value))


def _table(rows: list[tuple[str, str]]) -> str:
    return "<table>" + "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows) + "</table>"


def svg_timeline(t: TrackSummary, s: StreamSummary, width: int = 520, height: int = 18) -> str:
    """The track's labels over the stream's time, as inline SVG (crisp at any zoom, nothing to load)."""
    scale = width / max(s.duration, s.period)
    bars = "".join(
        f'<rect x="{(a - s.start) * scale:.1f}" y="0" width="{max((b - a) * scale, 0.8):.1f}" height="{height}" '
        f'fill="{plots.colour(e)}"><title>{esc(e)} {a - s.start:.1f}-{b - s.start:.1f} s</title></rect>'
        for a, b, e in t.segments
    )
    return (f'<svg class="timeline" width="{width}" height="{height + 14}" role="img" aria-label="timeline of person '
            f'{esc(t.name)}"><rect width="{width}" height="{height}" fill="#f0f0f0"/>{bars}'
            f'<text x="0" y="{height + 12}" font-size="10">0 s</text><text x="{width}" y="{height + 12}" '
            f'font-size="10" text-anchor="end">{s.duration:.1f} s</text></svg>')  # fmt: skip


def _person(g: Group, t: TrackSummary) -> str:
    s = g.summary
    per_emotion = " ".join(
        f'<span><i class="chip" style="background:{plots.colour(e)}"></i>{esc(e)} {seconds(v)}</span>'
        for e, v in t.seconds.most_common()
    )
    rows = [
        ("time on screen", f"{seconds(t.on_screen)} ({t.on_screen / s.duration:.0%} of the {seconds(s.duration)})"),
        ("seen", f"{t.first - s.start:.1f} s to {t.last - s.start:.1f} s"),
        ("mostly", t.dominant),
        ("mean valence", f"{t.valence:+.2f} (-1 all negative .. +1 all positive)"),
        ("mean confidence", f"{t.confidence:.0%}" if t.confidence is not None else "-"),
    ]
    thumb = g.thumbs.get(t.track)
    image = f'<img src="{esc(thumb)}" alt="person {esc(t.name)}">' if thumb else ""
    return (f'<div class="person">{image}<div><strong>Person {esc(t.name)}</strong>{_table(rows)}'
            f"<div>time per emotion: {per_emotion}</div>{svg_timeline(t, s)}</div></div>")  # fmt: skip


def _video(g: Group) -> str:
    if g.video_file:
        return (f'<video id="{g.prefix}video" controls muted preload="auto" src="{esc(g.video_file)}"></video>'
                f"<p>The annotated video of this run ({esc(g.video_file)}).</p>")  # fmt: skip
    if g.video is not None:
        return (f"<p>{esc(g.video.name)} is encoded in a format browsers do not play; runs with "
                "<code>render.codec: h264</code> (the default) make one they do.</p>")  # fmt: skip
    return "<p>No annotated video of this run is beside the log (render writes only the latest run's).</p>"


def _group(g: Group) -> str:
    s, run = g.summary, g.stream.run
    people = "".join(_person(g, t) for t in s.tracks[:20]) or "<p>No face was found.</p>"
    if len(s.tracks) > 20:
        people += f"<p>{len(s.tracks) - 20} shorter tracks are in tracks.csv.</p>"
    details = [("run", run.id), ("source", g.stream.source or "unknown"), ("kind", g.stream.kind),
               ("model", model_text(run)), ("model path", run.model_path or "-"), ("host", run.host or "-"),
               ("project version", run.version or "-"),
               ("ended", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.ended)) if run.ended else "not yet")]  # fmt: skip
    body = {
        "Summary": _table(key_figures(s)),
        "Video": _video(g),
        "People": people + f'<img src="{g.plots["timelines"]}" alt="timeline per person">',
        "Emotion share over time": f'<img src="{g.plots["share"]}" alt="emotion share over time">',
        "Overall share": f'<img src="{g.plots["distribution"]}" alt="overall share and valence">',
        "Confidence": f'<img src="{g.plots["confidence"]}" alt="confidence histogram">',
        "Source, model and configuration": _table(details)
        + f"<details><summary>configuration (the topology as run)</summary><pre>{esc(run.config or '-')}</pre></details>",
    }
    return f"<h2>{esc(g.title)}</h2>" + "".join(f"<h3>{esc(name)}</h3>{body[name]}" for name in SECTIONS)


def _comparison(groups: list[Group]) -> str:
    """A row per run (and stream): the figures to compare, formatted; all of them are in runs.csv."""
    head = ("run", "stream", "started", "source", "model", "settings that differ", "duration", "coverage", "people",
            "confidence", "positive", "neutral", "negative")  # fmt: skip
    body = ""
    differ = settings_that_differ(groups)
    for g in groups:
        s, run, source = g.summary, g.stream.run, g.stream.source or "unknown"
        cells = [run.id, g.stream.stream, time.strftime("%m-%d %H:%M:%S", time.localtime(run.started)),
                 f'<span title="{esc(source)}">{esc(Path(source).name)}</span>', esc(run.model or "-"),
                 differ.get(run.id) or "-",
                 seconds(s.duration), f"{s.coverage:.0%}", len(s.tracks),
                 f"{s.mean_confidence:.0%}" if s.mean_confidence is not None else "-",
                 *(f"{s.valence_share(v):.0%}" for v in plots.VALENCE_NAMES)]  # fmt: skip
        body += "<tr>" + "".join(f"<td>{c if isinstance(c, str) and c.startswith('<') else esc(c)}</td>" for c in cells)
        body += "</tr>"
    header = "".join(f"<th>{esc(k)}</th>" for k in head)
    return (f'<h2>Comparison</h2><table class="compare"><tr>{header}</tr>{body}</table>'
            '<img src="comparison.png" alt="share per run">')  # fmt: skip


def page(groups: list[Group], db_path: Path, pdf: bool = True) -> str:
    """The whole ``index.html``."""
    clocks = {g.stream.clock for g in groups}
    intro = ("Times are media time (the position in the source file)" if clocks == {"media"} else
             "Times are media time for files and wall-clock time for live sources (each section says which)")  # fmt: skip
    csv_links = ", ".join(f'<a href="{name}">{name}</a>' for name in CSV_FILES)
    valence = "; ".join(f"{v} = {', '.join(e for e, n in VALENCE.items() if n == v)}" for v in ("positive", "negative"))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Emotion report</title>
<link rel="icon" href="data:,"><style>{STYLE}</style></head><body>
<h1>Emotion report</h1>
<p>{esc(db_path)}: {len({g.stream.run.id for g in groups})} run(s), generated {time.strftime("%Y-%m-%d %H:%M:%S")}.
{esc(intro)}. Shares are shares of face time: each face counts for as long as its frame lasts. {esc(valence)}.
{'A printable version is in <a href="report.pdf">report.pdf</a>.' if pdf else ""}</p>
{_comparison(groups) if len(groups) > 1 else ""}
{"".join(_group(g) for g in groups)}
<h2>Data</h2><p>CSV: {csv_links} (boxes, probabilities, media time and wall-clock time of every face).</p>
</body></html>
"""
