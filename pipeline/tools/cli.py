"""Command line: run, validate, stages, keys, train, evaluate, evaluate-detect, make-clips,
evaluate-clip, report, migrate, bench, soak."""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import click

from pipeline.errors import ExitCode, PipelineError

DEFAULT_WIDER = Path("../shared/data/wider_face")  # beside the checkout, as the tests expect it
LOG_FORMAT = "%(asctime)s %(levelname)-7s %(processName)s %(name)s: %(message)s"
log = logging.getLogger("pipeline")


def _setup_logging(verbose: bool) -> int:
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, format=LOG_FORMAT)
    return level


def _remove_stale_runtime_dirs() -> None:
    """Remove the socket folders of runs whose launcher was killed (kill -9) before cleaning up."""
    for folder in Path(tempfile.gettempdir()).glob("emopipe-*-*"):
        pid = folder.name.split("-")[1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _check_writable(folder: Path, option: str) -> None:
    """Fail before any worker starts when outputs could not be written (instead of a restart loop)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise PipelineError(f"{option} {folder}: cannot write there: {exc.strerror or exc}") from None


def _project_version() -> str:
    """The package version, and the git commit when run from a checkout (what a report names)."""
    try:
        version = metadata.version("emotion-pipeline")
    except metadata.PackageNotFoundError:
        version = "unknown"
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty"], capture_output=True,
                                text=True, timeout=5).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{version} ({commit})" if commit else version


def _launch_record(topology) -> dict:
    """What every stage is told about this run (``StageContext.launch``); the log records it in ``runs``.

    The id sorts by start time; its random tail keeps two runs started in the same second apart.
    """
    started = time.time()
    return {
        "id": time.strftime("%Y%m%d-%H%M%S", time.localtime(started)) + "-" + secrets.token_hex(2),
        "started": started,
        "config": topology.resolved_yaml(),
        "host": socket.gethostname(),
        "version": _project_version(),
    }


class _Commands(click.Group):
    """Every command's errors end here: one line naming what is wrong and where, and a named exit code."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except PipelineError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(ExitCode.CONFIG)


@click.group(cls=_Commands)
def main() -> None:
    """Real-time facial emotion recognition as a streaming pipeline of processes."""


class _EventSink:
    """Feeds launcher events to ``--stats`` (a table every 5 s) and the Prometheus collector."""

    def __init__(self, print_stats: bool, collector=None):
        self.print_stats = print_stats
        self.collector = collector
        self.live: dict[tuple, dict] = {}
        self.printed = 0.0

    def __call__(self, event: dict) -> None:
        from pipeline.streaming.metrics import format_table, summarise

        if self.collector is not None:
            self.collector.update(event)
        if event.get("event") not in ("stats", "done"):
            return
        self.live[(event["stage"], event["worker"])] = event["stats"]
        if self.print_stats and time.monotonic() - self.printed > 5:
            self.printed = time.monotonic()
            click.echo(format_table(summarise(list(self.live.values()))), err=True)


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--source", help="override the capture source: camera index, video file, image folder or URL")
@click.option(
    "--out",
    "out_dir",
    default="out",
    show_default=True,
    type=click.Path(file_okay=False),
    help="directory for sink output (annotated.mp4, emotions.sqlite)",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="STAGE.KEY=VALUE",
    help="override a stage field or param, or a top-level field (keys=DIR)",
)
@click.option("--stages", "only", help="comma-separated stages to run on this machine (default: all)")
@click.option(
    "--runtime-dir",
    type=click.Path(file_okay=False),
    help="folder for default ipc:// endpoints (give the same one to runs that share a machine)",
)
@click.option("--stats", is_flag=True, help="print per-stage figures every few seconds")
@click.option("--metrics-port", type=click.IntRange(1, 65535), help="serve Prometheus metrics on 127.0.0.1:PORT/metrics")
@click.option(
    "--max-restarts", default=3, show_default=True, type=click.IntRange(0, 100), help="restarts allowed per crashed worker"
)
@click.option(
    "--launcher",
    "launcher_kind",
    type=click.Choice(["process", "ray"]),
    default="process",
    show_default=True,
    help="process: one process per worker on this machine; ray: one Ray actor per worker on a Ray cluster",
)
@click.option(
    "--address",
    default="auto",
    show_default=True,
    help="with --launcher ray: the cluster (auto, HOST:PORT, or ray://HOST:10001 for Ray Client)",
)
@click.option(
    "--ray-strategy",
    type=click.Choice(["spread", "pack"]),
    default="spread",
    show_default=True,
    help="with --launcher ray: spread workers that no `placement` pins over the nodes, or pack them on few",
)
@click.option("-v", "--verbose", is_flag=True)
def run(
    config,
    source,
    out_dir,
    overrides,
    only,
    runtime_dir,
    stats,
    metrics_port,
    max_restarts,
    launcher_kind,
    address,
    ray_strategy,
    verbose,
):
    """Run the pipeline described by CONFIG until its sources end (or Ctrl-C)."""
    from pipeline.streaming.launcher import install_signal_handlers
    from pipeline.streaming.metrics import format_table
    from pipeline.streaming.topology import load_topology

    level = _setup_logging(verbose)
    _check_writable(Path(out_dir), "--out")
    own_runtime = runtime_dir is None
    _remove_stale_runtime_dirs()
    runtime = Path(runtime_dir or tempfile.mkdtemp(prefix=f"emopipe-{os.getpid()}-"))
    try:
        topology = load_topology(config, runtime, list(overrides), source)
        names = [s.strip() for s in only.split(",")] if only else None
        unknown = [n for n in names or [] if n not in topology.stages]
        if unknown:
            raise PipelineError(f"--stages: no stage named {', '.join(unknown)}; stages are {', '.join(topology.stages)}")

        collector = None
        if metrics_port:
            from pipeline.streaming.prometheus import serve

            collector = serve(metrics_port)
        launch = _launch_record(topology)
        log.info("run %s", launch["id"])
        context = {"out": str(Path(out_dir).resolve()), "log_level": level, "log_format": LOG_FORMAT, "launch": launch}
        on_event = _EventSink(stats, collector)
        if launcher_kind == "ray":
            launcher = _ray_launcher(topology, context, names, address, ray_strategy.upper(), max_restarts, on_event)
        else:
            from pipeline.streaming.launcher import ProcessLauncher

            launcher = ProcessLauncher(topology, context, only=names, max_restarts=max_restarts, on_event=on_event)
        install_signal_handlers(launcher)
        result = launcher.run()
    finally:
        if own_runtime:
            shutil.rmtree(runtime, ignore_errors=True)
    seconds = result.ended - result.started
    firsts = [row["first_ts"] for row in result.stages.values() if row.get("first_ts")]
    first = f"; first frame out after {min(firsts) - result.started:.1f}s" if firsts else ""
    click.echo(f"\n{topology.name}: run {launch['id']} finished in {seconds:.1f}s with exit code {result.code}{first}")
    click.echo(format_table(result.stages))
    for line in result.lost:
        click.echo(f"lost: {line}", err=True)
    sys.exit(result.code)


def _ray_launcher(topology, context, only, address, strategy, max_restarts, on_event):
    """The Ray launcher, if Ray is installed (it is an optional extra)."""
    if only:
        raise PipelineError("--stages: not with --launcher ray, which places every stage of the file on the cluster")
    try:
        from pipeline.streaming.ray_launcher import RayLauncher
    except ImportError as exc:
        raise PipelineError(f"--launcher ray needs Ray ({exc}): pip install -e '.[cluster]'") from None
    return RayLauncher(topology, context, address, strategy, max_restarts, on_event)


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="STAGE.KEY=VALUE")
@click.option("--source")
def validate(config, overrides, source):
    """Check CONFIG without starting anything."""
    from pipeline.streaming.topology import load_topology

    topology = load_topology(config, tempfile.gettempdir(), list(overrides), source)
    for name in topology.order:
        stage = topology.stages[name]
        inputs = ", ".join(link.source for link in stage.inputs) or "-"
        where = f"  placement: {', '.join(stage.placement)}" if stage.placement else ""  # read by --launcher ray
        click.echo(f"{name:<12} {stage.type:<10} workers={stage.workers}  inputs: {inputs}{where}")
    click.echo(f"{config}: ok")


@main.group()
def keys() -> None:
    """CurveZMQ key pairs for the tcp:// links between hosts."""


@keys.command("new")
@click.argument("directory", type=click.Path(file_okay=False))
@click.argument("names", nargs=-1, required=True)
@click.option("--force", is_flag=True, help="replace existing pairs (key rotation: peers need the new public key)")
def new_keys(directory, names, force):
    """Make a key pair for each host NAME in DIRECTORY: NAME.key (public, to copy to the other
    hosts) and NAME.key_secret (mode 0600, never leaves this host)."""
    import re

    from pipeline.streaming.keys import HOST_PATTERN, new_key_pair

    for name in names:
        if not re.fullmatch(HOST_PATTERN, name):
            raise PipelineError(f"keys new: {name!r} is not a host name (letters, digits, '_', '.', '-')")
        public, secret = new_key_pair(directory, name, force)
        click.echo(f"{public}  (public: copy to the hosts that talk to {name})")
        click.echo(f"{secret}  (secret: keep on {name})")


@main.command("stages")
def list_stages():
    """List the registered stage types and their params."""
    from pipeline.streaming import registry

    for type_name in sorted(registry.available()):
        cls = registry.get(type_name)
        click.echo(f"{type_name}  ({cls.__module__}.{cls.__name__}): {(cls.__doc__ or '').strip().splitlines()[0]}")
        for field, info in cls.Params.model_fields.items():
            click.echo(f"    {field} = {info.default!r}: {info.description or ''}")


# Options shared by `train` and `ensemble`, the two commands that export a served model.
_QUANTIZE = click.option(
    "--quantize/--no-quantize",
    default=True,
    show_default=True,
    help="export int8 weights (a quarter of the float graph's CPU a face, same accuracy within 0.1 point)",
)
_SCORE_TEST = click.option(
    "--score-test",
    is_flag=True,
    help="also score the test split (FER2013 PrivateTest) at the end: once, for the model you ship",
)


@main.command()
@click.option("--data", required=True, type=click.Path(exists=True), help="FER2013 folder (train/, test/) or fer2013.csv")
@click.option(
    "--out", "out_dir", type=click.Path(file_okay=False), help="folder for the model (default: a new runs/train-<time>)"
)
@click.option("--replace-default", is_flag=True, help="allow --out to be the shipped models/default")
@click.option(
    "--segmentation",
    type=click.Choice(["off", "on", "attention"]),  # pipeline.vision.model.SEGMENTATION_MODES
    default="off",
    show_default=True,
    help="K-means segmentation: on = a second input channel, attention = spatial gates on the gray face's features",
)
@click.option("--epochs", default=24, show_default=True, type=click.IntRange(1, 1000))
@click.option(
    "--width",
    default=1.0,
    show_default=True,
    type=click.FloatRange(0, min_open=True),
    help="multiplies every layer's filters: 2 is about 4x the parameters and the CPU an image",
)
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(1, 4096))
@click.option("--limit", type=click.IntRange(1), help="use at most N training images per class (quick runs)")
@click.option("--seed", default=1234, show_default=True, type=int)
@click.option("--threads", default=0, show_default=True, type=click.IntRange(0), help="TensorFlow threads (0: all cores)")
@click.option("--patience", default=6, type=click.IntRange(0), help="epochs with no gain before stopping (0: never)")
@click.option("--erase", default=0.0, show_default=True, type=click.FloatRange(0, 1), help="random-erasing probability per face")
@click.option("--camera", default=0.0, show_default=True, type=click.FloatRange(0, 1), help="camera-noise probability per face")
@click.option(
    "--teacher",
    type=click.Path(exists=True, file_okay=False),
    help="distil from this served model directory (e.g. an `ensemble`): its probabilities on the training faces, "
    "computed once and cached, go into the targets",
)
@click.option(
    "--distill-weight",
    default=0.5,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="with --teacher: the teacher's share of each target (0: the labels alone, 1: the teacher alone)",
)
@click.option(
    "--distill-temperature",
    default=2.0,
    show_default=True,
    type=click.FloatRange(0, min_open=True),
    help="with --teacher: softens its probabilities as p ** (1/T), renormalised (1: as they are, higher: flatter)",
)
@_QUANTIZE
@_SCORE_TEST
@click.option("--resume", is_flag=True, help="continue the unfinished run in --out from its last epoch")
@click.option("--export-only", is_flag=True, help="only export and evaluate the finished run in --out")
@click.option(
    "--from-weights",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="with --export-only: export these weights (e.g. an unfinished run's checkpoint/latest.weights.h5)",
)
def train(
    data, out_dir, replace_default, segmentation, epochs, width, batch_size, limit, seed, threads, patience, erase, camera,
    teacher, distill_weight, distill_temperature, quantize, score_test, resume, export_only, from_weights,
):  # fmt: skip
    """Train the emotion CNN and export it (.keras, .tflite, model.json, plots, report)."""
    out_dir = _train_out(out_dir, replace_default, resume or export_only)
    from train.train import TrainConfig, finalize, run_training

    _setup_logging(False)
    click.echo(f"training into {out_dir}", err=True)
    cfg = TrainConfig(
        data=data,
        out=out_dir,
        epochs=epochs,
        width=width,
        batch_size=batch_size,
        limit=limit,
        seed=seed,
        threads=threads,
        patience=patience,
        erase=erase,
        camera=camera,
        segmentation=segmentation,
        teacher=teacher,
        distill_weight=distill_weight,
        distill_temperature=distill_temperature,
        quantize=quantize,
        score_test=score_test,
        resume=resume,
    )
    meta = finalize(cfg, weights=from_weights) if export_only else run_training(cfg)
    ev = meta["evaluation"]
    click.echo(f"{out_dir}: {ev['split']} accuracy {ev['accuracy']:.4f}, macro-F1 {ev['macro_f1']:.4f}, n={ev['n']}")


def _train_out(out_dir: str | None, replace_default: bool, continuing: bool) -> str:
    """Where ``train`` writes: never over the shipped model by accident, never into an old run unasked."""
    from pipeline.vision.model import DEFAULT_MODEL_DIR

    if out_dir is None:
        if continuing:
            raise PipelineError("--resume and --export-only continue a run: name it with --out")
        return str(Path("runs") / time.strftime("train-%Y%m%d-%H%M%S"))
    if Path(out_dir).resolve() == DEFAULT_MODEL_DIR.resolve() and not replace_default:
        raise PipelineError(f"--out {out_dir}: that is the shipped model; pass --replace-default to replace it, "
                            "or choose another folder")  # fmt: skip
    return out_dir


@main.command()
@click.argument("models", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--data", required=True, type=click.Path(exists=True), help="FER2013 folder (train/, test/) or fer2013.csv")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--mirror/--no-mirror", default=True, show_default=True, help="also average over the mirrored face")
@_QUANTIZE
@_SCORE_TEST
def ensemble(models, data, out_dir, mirror, quantize, score_test):
    """Serve several trained model directories as one model that averages their probabilities."""
    from train.train import export_ensemble

    _setup_logging(False)
    meta = export_ensemble(list(models), out_dir, data, mirror, quantize, score_test)
    ev, val = meta["evaluation"], meta["validation"]
    click.echo(f"{out_dir}: validation accuracy {val['accuracy']:.4f}; {ev['split']} accuracy {ev['accuracy']:.4f}, "
               f"macro-F1 {ev['macro_f1']:.4f}, n={ev['n']}")  # fmt: skip


@main.command()
@click.option(
    "--data",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="image folder with one subfolder per FER class name",
)
@click.option("--model", help="model directory or .tflite (default: the shipped model)")
@click.option("--detect", is_flag=True, help="find the largest face with Haar first (uncropped photos)")
@click.option("--prefix", help="only files whose name starts with this (e.g. PrivateTest_ in FER2013's test/)")
@click.option(
    "--redetect",
    type=click.Choice(["grey", "reflect"]),
    help="FER faces: upscale each into a canvas padded with grey or its reflection, re-detect it with Haar, "
    "and score the pipeline's crop against FER's framing",
)
@click.option(
    "--crop",
    metavar="SCALE,DX,DY",
    help="with --redetect: also score the Haar box mapped by this framing (default: the crop in the model's model.json)",
)
@click.option(
    "--degrade",
    type=click.Choice(["blur", "lowres", "jpeg", "dark", "noise"]),
    help="cropped faces only: degrade each face first (blur, 20-px face, JPEG q15, underexposed, sensor noise)",
)
@click.option(
    "--no-lift-dim",
    "no_lift",
    is_flag=True,
    help="score dim faces as they are (the classify stage lifts them by default: lift_dim)",
)
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def evaluate(data, model, detect, prefix, redetect, crop, degrade, no_lift, as_json):
    """Score a model on labelled images."""
    from train.evaluate import evaluate_folder
    from train.report import format_report

    logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT)
    if degrade and (detect or redetect):
        raise click.UsageError("--degrade is for cropped faces: it excludes --detect and --redetect")
    if redetect:
        if no_lift:
            raise click.UsageError(
                "--no-lift-dim is for cropped faces and --detect; --redetect scores faces as classify serves them"
            )
        if detect:
            raise click.UsageError("--redetect and --detect exclude each other: --redetect is for cropped FER faces")
        from pipeline.vision.faces import Framing
        from train.redetect import format_redetect, redetect_folder

        framing = None
        if crop:
            try:
                framing = Framing.from_dict(dict(zip(("scale", "dx", "dy"), (float(v) for v in crop.split(",")), strict=True)))
            except ValueError as exc:
                raise click.BadParameter(f"expected SCALE,DX,DY such as 1.05,0,0.02: {exc}", param_hint="--crop") from None
        result = redetect_folder(data, model, prefix, redetect, framing)
        click.echo(json.dumps(result) if as_json else format_redetect(result), nl=as_json)
        return
    result = evaluate_folder(data, model, detect, prefix, degrade, lift=not no_lift)
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(format_report(result, f"{data}"), nl=False)
    if result["no_face"]:
        click.echo(f"no face found in {len(result['no_face'])} images (counted as misses)")
    if result["skipped"]:
        click.echo(f"skipped {len(result['skipped'])} unreadable images")


@main.command()
@click.argument("models", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--data",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="image folder with one subfolder per FER class name (FER2013's test/)",
)
@click.option("--prefix", default="PublicTest_", show_default=True, help="only files whose name starts with this")
@click.option("--max-members", default=4, show_default=True, type=click.IntRange(1, 8), help="largest combination")
@click.option("--baseline", metavar="A+B", help="a combination (directory names joined by +): each row's gain over it")
@click.option("--limit", type=click.IntRange(1), help="at most N faces per class (quick runs)")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def compare(models, data, prefix, max_members, baseline, limit, as_json):
    """Score models and every average of up to --max-members of them, clean and degraded, as served."""
    from train.compare import compare as compare_models
    from train.compare import format_compare

    logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT)
    logging.getLogger("train.compare").setLevel(logging.INFO)  # its progress: a full run takes minutes
    if not prefix or prefix.startswith("PrivateTest"):
        click.echo("warning: this scores PrivateTest, the test split: a choice made on it has an optimistic score", err=True)
    result = compare_models(list(models), data, prefix or None, max_members, baseline, limit)
    click.echo(json.dumps(result) if as_json else format_compare(result), nl=as_json)


@main.command("evaluate-detect")
@click.option(
    "--data", required=True, type=click.Path(exists=True, file_okay=False), help="WIDER FACE folder (images/, boxes.csv)"
)
@click.option("--config", default="configs/local.yaml", show_default=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="STAGE.KEY=VALUE", help="override a param (--set detect.min_size=40)")
@click.option("--limit", type=click.IntRange(1), help="only the first N photos (sorted by path)")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def evaluate_detect(data, config, overrides, limit, as_json):
    """Score CONFIG's detect stage on annotated photos (full scan): recall, precision, recall by size, ms a photo."""
    from pipeline.tools.yardstick import evaluate_photos, format_detection

    logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT)
    result = evaluate_photos(config, data, overrides, limit)
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(format_detection(result, f"{config} detect, full scan, {result['n_images']} photos (IoU {result['iou_min']})"))
    click.echo(
        f"n_faces {result['n_faces']}; {result['ms_per_image']:.1f} ms a photo, {result['cpu_ms_per_image']} ms of CPU "
        "(medians, one thread)"
    )


@main.command("make-clips")
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False), help="WIDER FACE folder")
@click.option("--out", "out_dir", default="clips", show_default=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--size", "sizes", multiple=True, default=("1280x720", "640x360"), show_default=True, help="WIDTHxHEIGHT")
@click.option("--photos", default=8, show_default=True, type=click.IntRange(1), help="photos per clip, one segment each")
@click.option("--seconds", default=3.0, show_default=True, type=click.FloatRange(0.1), help="seconds per photo")
@click.option("--fps", default=30.0, show_default=True, type=click.FloatRange(1, 240))
@click.option("--seed", default=0, show_default=True, type=int)
def make_clips(data, out_dir, sizes, photos, seconds, fps, seed):
    """Write moving-camera clips (pan and zoom over annotated photos) with boxes per frame."""
    from pipeline.tools.clips import make_clip, parse_size

    try:
        parsed = [parse_size(s) for s in sizes]
    except ValueError as exc:
        raise PipelineError(f"--size: {exc}") from None
    for size in parsed:
        video, boxes = make_clip(data, out_dir / f"clip-{size[0]}x{size[1]}", size, photos, seconds, fps, seed)
        click.echo(f"{video}  {boxes}")


@main.command("evaluate-clip")
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.option("--clip", required=True, type=click.Path(exists=True, dir_okay=False), help="a video (make-clips, or any)")
@click.option("--truth", type=click.Path(exists=True, dir_okay=False), help="boxes per frame (default: the clip's .csv)")
@click.option("--set", "overrides", multiple=True, metavar="STAGE.KEY=VALUE", help="override a stage field or param")
@click.option("--pacing", type=click.Choice(["realtime", "max"]), default="realtime", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def evaluate_clip(config, clip, truth, overrides, pacing, as_json):
    """Run CONFIG on a clip in processes: recall and precision per frame, latency, drops."""
    from pipeline.tools.yardstick import evaluate_clip as run_clip
    from pipeline.tools.yardstick import format_detection

    logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT)
    beside = Path(clip).with_suffix(".csv")
    truth = truth or (str(beside) if beside.exists() else None)
    result = run_clip(config, clip, truth, overrides, pacing)
    if as_json:
        click.echo(json.dumps(result))
        return
    lat = result["latency_ms"]
    click.echo(f"{config} on {clip}, {pacing}: {result['frames']} frames, {result['fps']} frames/s, "
               f"latency p50 {lat['p50']} / p95 {lat['p95']} / p99 {lat['p99']} ms, dropped {result['dropped']}")  # fmt: skip
    click.echo(f"one face in {result['one_face_share']:.1%} of frames")
    if truth:
        click.echo(format_detection(result, f"over {result['scored_frames']} frames (IoU 0.4)"))


@main.command()
@click.option("--db", required=True, type=click.Path(dir_okay=False), help="an emotion log (OUT/emotions.sqlite)")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="folder for index.html")
@click.option("--runs", "runs", default="latest", show_default=True, help="latest, all, or run ids separated by commas")
@click.option("--bin", "bin_s", default=1.0, show_default=True, type=click.FloatRange(0.01), help="seconds per time bin")
@click.option("--pdf/--no-pdf", default=True, show_default=True, help="also write report.pdf (print-ready)")
def report(db, out_dir, runs, bin_s, pdf):
    """Write an HTML (and PDF) report with plots and CSV exports from an emotion log (also while it is written)."""
    from pipeline.analytics.report import write_report

    path = write_report(db, out_dir, bin_s, runs=runs, pdf=pdf)
    click.echo(path)


@main.command()
@click.option("--db", required=True, type=click.Path(dir_okay=False), help="an emotion log (OUT/emotions.sqlite)")
def migrate(db):
    """Convert an emotion log of schema version 1 to the current version, in place."""
    from pipeline.analytics.schema import SCHEMA_VERSION, migrate_file

    _setup_logging(False)
    run_id = migrate_file(db)
    click.echo(f"{db}: schema version {SCHEMA_VERSION}" + (f"; its rows are run {run_id}" if run_id else " already"))


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--source", required=True, type=click.Path(exists=True), help="a video file")
@click.option("--fps", "paced_fps", type=float, help="pace the paced runs at this rate (default: the file's fps)")
@click.option("--frames", type=click.IntRange(2), help="use only the first N frames (quick checks)")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@click.option("--plot", type=click.Path(dir_okay=False), help="write latency and throughput plots to this PNG")
@click.option(
    "--codec", type=click.Choice(["auto", "shm", "raw", "jpeg"]), help="force every link's image codec (compare transports)"
)
@click.option(
    "--detect-data",
    type=click.Path(file_okay=False),
    default=str(DEFAULT_WIDER),
    show_default=True,
    help="WIDER FACE folder: score detection recall on a generated clip beside the speed ('' to skip)",
)
def bench(config, source, paced_fps, frames, as_json, plot, codec, detect_data):
    """Measure throughput, latency, CPU and memory of CONFIG against a sequential baseline, and detection recall."""
    from pipeline.tools.bench import format_bench, plot_bench, run_bench

    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    if detect_data and not Path(detect_data).is_dir():
        log.warning("--detect-data %s: no such folder; detection recall is not measured", detect_data)
        detect_data = None
    result = run_bench(config, source, paced_fps, frames, codec, detect_data or None)
    if plot:
        plot_bench(result, Path(plot))
    if as_json:
        result.pop("runs")
        click.echo(json.dumps(result))
    else:
        click.echo(format_bench(result))


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--source", required=True, type=click.Path(exists=True), help="a video file, looped")
@click.option("--minutes", default=10.0, show_default=True, type=click.FloatRange(0.05, 24 * 60))
@click.option("--set", "overrides", multiple=True, metavar="STAGE.KEY=VALUE", help="override a stage field or param")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def soak(config, source, minutes, overrides, as_json):
    """Run CONFIG for MINUTES on a looped file; print latency percentiles and memory per stage per minute."""
    from pipeline.tools.soak import format_soak, run_soak

    logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT)
    result = run_soak(config, source, minutes, list(overrides))
    click.echo(json.dumps(result) if as_json else format_soak(result))
    sys.exit(result["exit_code"])


if __name__ == "__main__":
    main()
