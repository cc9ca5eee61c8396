"""One worker of one stage: its lifecycle around the stage's ``process``.

``run_worker`` is what a launcher runs, in a process (production) or a thread (fast tests):
it builds the worker from its compiled plan (``pipeline.streaming.plan``), starts the stage,
binds its input once it and everything downstream is ready, runs the loop until every
stream has ended, and closes everything. Sockets live in ``transport``, the sending side in
``outbound``; the loop here reads like the stage lifecycle.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import zmq

from pipeline.errors import ExitCode, LinkError, PipelineError
from pipeline.streaming.message import Message
from pipeline.streaming.metrics import StageMetrics
from pipeline.streaming.outbound import Outbound
from pipeline.streaming.plan import REORDER_CAPACITY, WorkerPlan
from pipeline.streaming.reorder import ReorderBuffer
from pipeline.streaming.shm import SharedFrames
from pipeline.streaming.stage import Stage, StageContext
from pipeline.streaming.transport import FINISH_TIMEOUT_S, POLL_MS, Control, PullInput

log = logging.getLogger(__name__)

STATS_EVERY_S = 1.0
ORPHAN_CHECK_S = 0.2
LOUD_ERRORS = 20  # per-frame errors logged one by one; after that, one in QUIET_EVERY
QUIET_EVERY = 1000


def run_worker(
    plan: WorkerPlan,
    settings: dict[str, Any],
    control_endpoint: str | None,
    stop: threading.Event | None = None,
) -> int:
    """Run one worker until end-of-stream or ``stop``; return its exit code.

    Args:
        plan: the worker's wiring.
        settings: run-wide settings from the launcher (``out``: the output folder; ``launch``:
            the run's id, start, resolved config, host and version, see ``StageContext``).
        control_endpoint: where to send events for the launcher (None: nowhere).
        stop: set to stop the worker (threads); a process also stops on SIGTERM.
    """
    stop = stop or threading.Event()
    in_process = threading.current_thread() is threading.main_thread()
    if in_process:
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the launcher handles Ctrl-C for the group
        _stop_when_orphaned(stop)
        os.nice(plan.nice)
    stage: Stage = plan.stage_cls(plan.params, name=plan.stage, context=_context(plan, settings))
    ctx = zmq.Context()
    control = Control(ctx, control_endpoint, plan.stage, plan.worker)
    loop = _Loop(plan, stage, Outbound(ctx, plan.outputs, stop, plan.label), control, stop)
    inp: PullInput | None = None
    finished = False
    try:
        try:
            stage.on_start()
            start = _resume(stage, plan, settings) if plan.input is None else 0  # a source picks up where it was
        except PipelineError as exc:  # bad source, model, file: restarting will not help
            log.error("%s: %s", plan.label, exc)
            control.emit("fatal", error=str(exc), code=ExitCode.CONFIG)
            return ExitCode.CONFIG
        # Ready once started and every consumer is ready; only then bind the input, so that
        # upstream (and in the end the source) waits instead of queueing frames during start-up.
        loop.outbound.wait_until_connected()
        if plan.input is not None:
            inp = PullInput(ctx, plan.input, loop.shared, loop.report.malformed, loop.report.dropped, plan.label)
        control.emit("started")
        log.info("%s: started in process %d (nice %d)", plan.label, os.getpid(), os.getpriority(os.PRIO_PROCESS, 0))
        loop.run_source(start, _progress_file(plan, settings)) if inp is None else loop.run_stage(inp)
        finished = True
        return ExitCode.OK
    except LinkError as exc:  # a consumer gone for good: the run cannot complete
        log.error("%s: %s", plan.label, exc)
        control.emit("fatal", error=str(exc), code=ExitCode.FAILED)
        return ExitCode.FAILED
    finally:
        _stop_stage(stage, plan.label)
        loop.metrics.sample_resources()
        stats = loop.metrics.snapshot()  # complete figures, not only recent ones
        stats["lost"] = _losses(stage, loop.metrics, plan)
        control.emit("done", stats=stats)
        if finished:
            loop.outbound.finish(FINISH_TIMEOUT_S)
        loop.outbound.close()
        if inp is not None:
            inp.close()
        control.close()
        ctx.term()


def _stop_when_orphaned(stop: threading.Event) -> None:
    """Set ``stop`` once the launcher is gone without stopping us (kill -9): every wait in the
    worker (a send to a consumer that already left, the wait for consumers to hang up) ends on
    ``stop``, so the worker exits within ``ORPHAN_CHECK_S`` instead of after the waits' bounds."""
    parent = os.getppid()

    def watch() -> None:
        while not stop.wait(ORPHAN_CHECK_S):
            if os.getppid() != parent:
                log.warning("launcher (process %d) gone; stopping", parent)
                stop.set()

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()


def _context(plan: WorkerPlan, settings: dict[str, Any]) -> StageContext:
    return StageContext(
        out=settings.get("out", "."),
        worker=plan.worker,
        label=plan.label,
        stream=plan.stream,
        streams=tuple(plan.producers) or (plan.stream,),
        run=plan.run,
        restarts=int(settings.get("restarts", 0)),
        launch=settings.get("launch", {}),
    )


def _progress_file(plan: WorkerPlan, settings: dict[str, Any]) -> Path | None:
    """Where a source records how many frames it emitted, so that a restart resumes after them."""
    state = settings.get("state_dir")
    return Path(state) / f"{plan.id}.emitted" if state else None


class _Progress:
    """A source's count of emitted frames in its progress file, rewritten in place after every frame.

    One open file and a ``pwrite`` of a fixed-width number: rewriting the file by name (open,
    truncate, close) cost ~0.1 ms of CPU a frame and made ext4 start a write-back every time.
    The number is written in one call before the next frame, so a killed source leaves the
    last count whole.
    """

    WIDTH = 20  # digits and padding: the count never needs more

    def __init__(self, path: Path | None, count: int):
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644) if path is not None else None
        self.record(count)  # whatever an earlier run left there is overwritten from the start

    def record(self, count: int) -> None:
        if self.fd is not None:
            os.pwrite(self.fd, f"{count:>{self.WIDTH}}".encode(), 0)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _resume(stage: Stage, plan: WorkerPlan, settings: dict[str, Any]) -> int:
    """The number a restarted source continues at (0 on a first start)."""
    path = _progress_file(plan, settings)
    try:
        emitted = int(path.read_text()) if path is not None and settings.get("restarts") else 0
    except (OSError, ValueError):
        emitted = 0
    if emitted:
        log.info("%s: restarted after %d frames; resuming after them", plan.label, emitted)
        stage.resume(emitted)
    return emitted


def _losses(stage: Stage, metrics: StageMetrics, plan: WorkerPlan) -> list[str]:
    """What this worker lost: what the stage reports, and frames it failed on where that loses data."""
    try:
        lost = list(stage.losses())
    except Exception as exc:  # noqa: BLE001 - a broken report must not hide the others
        lost = [f"could not tell its losses: {exc!r}"]
    failed = metrics.errors - metrics.malformed
    if failed and plan.stage_cls.is_sink:
        lost.append(f"{failed} frames failed and were not written")
    elif metrics.frames_in and failed >= metrics.frames_in:
        lost.append(f"failed on every frame ({failed})")
    return [f"{plan.label}: {line}" for line in lost]


def _stop_stage(stage: Stage, label: str) -> None:
    try:
        stage.on_stop()
    except Exception:  # noqa: BLE001 - a failing flush is reported, the worker still exits
        log.exception("%s: on_stop failed", label)


class _Reporter:
    """The one place where what happens to frames is counted and told: errors, drops, stats."""

    def __init__(self, label: str, metrics: StageMetrics, control: Control, shared: SharedFrames):
        self.label, self.metrics, self.control, self.shared = label, metrics, control, shared
        self._last_stats = time.monotonic()

    def fail(self, msg: Message | None, problem: str, exc: BaseException | None = None) -> None:
        """A frame this worker could not handle: released, counted, logged, sent to the launcher.

        The first ``LOUD_ERRORS`` are told one by one, then one in ``QUIET_EVERY`` with the count,
        so that a flood of hostile messages cannot flood the log.
        """
        error = problem if msg is None else f"{msg.where}: {problem}"
        if msg is not None:
            self.shared.release(msg.shared)
        self.metrics.errors += 1
        if self.metrics.errors <= LOUD_ERRORS or self.metrics.errors % QUIET_EVERY == 0:
            more = f" ({self.metrics.errors} errors so far)" if self.metrics.errors > LOUD_ERRORS else ""
            log.error("%s: %s%s", self.label, error, more, exc_info=exc)
            self.control.emit("error", error=error + more)

    def malformed(self, error: str) -> None:
        self.metrics.malformed += 1  # not a frame of this run: counted apart from lost ones
        self.fail(None, f"dropped malformed message: {error}")

    def dropped(self, msg: Message) -> None:
        self.metrics.dropped += 1
        self.shared.release(msg.shared)

    def late(self, msg: Message) -> None:  # arrived after the reorder buffer moved past it
        self.metrics.late += 1
        self.shared.release(msg.shared)

    def tick(self) -> None:
        """Send the figures to the launcher about once a second."""
        if time.monotonic() - self._last_stats >= STATS_EVERY_S:
            self._last_stats = time.monotonic()
            self.metrics.sample_resources()
            self.control.emit("stats", stats=self.metrics.snapshot(recent=200))


def _problem(msg: Message, plan: WorkerPlan, open_streams: dict[str, int]) -> str | None:
    """Why a decoded frame cannot be processed here, or None."""
    if msg.stream not in open_streams:
        return f"unknown or finished stream (expected {', '.join(sorted(open_streams)) or 'none'})"
    if plan.needs_image and msg.image is None:
        return "has no image"
    return None


class _Loop:
    """Receive, process, send: the lifecycle of every frame in one worker."""

    def __init__(self, plan: WorkerPlan, stage: Stage, outbound: Outbound, control: Control, stop):
        self.plan, self.stage, self.outbound, self.stop = plan, stage, outbound, stop
        self.metrics, self.shared = StageMetrics(plan.stage, plan.worker), SharedFrames()
        self.report = _Reporter(plan.label, self.metrics, control, self.shared)
        self.reorder = ReorderBuffer(REORDER_CAPACITY, wait) if (wait := plan.input and plan.input.reorder_wait_s) else None
        self.waiting = {s: set(p) for s, p in plan.producers.items()}  # stream -> workers whose end-of-stream is due

    def run_source(self, count: int, progress_file: Path | None) -> None:
        frames = iter(self.stage.generate())
        self.metrics.first_frame()
        progress = _Progress(progress_file, count)
        try:
            while not self.stop.is_set() and (msg := self._generate(frames)) is not None:
                msg.stream, msg.seq, count = self.plan.stream, count, count + 1
                self._send(msg)
                progress.record(count)
                self.report.tick()
        finally:
            progress.close()
        if not self.stop.is_set():
            self.outbound.broadcast(Message.eos(self.plan.stream, count, self.plan.id))

    def _generate(self, frames: Iterator[Message]) -> Message | None:
        with self.metrics.timed():
            return next(frames, None)

    def run_stage(self, inp: PullInput) -> None:
        while self.waiting and not self.stop.is_set():
            msg = inp.next(POLL_MS)
            if msg is not None:
                self._on_eos(msg) if msg.is_eos else self._on_frame(msg)
            for ready in self.reorder.expired() if self.reorder else ():
                self._process(ready)
            self.report.tick()

    def _on_frame(self, msg: Message) -> None:
        if problem := _problem(msg, self.plan, self.waiting):
            return self.report.fail(msg, problem)
        self.metrics.frame_in(msg.meta.pop("_received", time.time()) - max(msg.stamps.values(), default=msg.ts))
        ready, late = self.reorder.push(msg) if self.reorder else ([msg], 0)
        if late:
            self.report.late(msg)
        for m in ready:
            self._process(m)

    def _on_eos(self, msg: Message) -> None:
        due = self.waiting.get(msg.stream, set())
        if msg.sender not in due:  # a repeat, or not from a worker upstream of this one
            return log.warning("%s: end-of-stream of %r from %r ignored", self.plan.label, msg.stream, msg.sender)
        due.discard(msg.sender)
        if due:
            return  # other upstream workers still have frames of this stream
        del self.waiting[msg.stream]
        for m in self.reorder.flush(msg.stream) if self.reorder else ():
            self._process(m)
        self.stage.on_eos(msg)
        self.outbound.broadcast(Message.eos(msg.stream, msg.seq, self.plan.id))
        log.info("%s: end of stream %s after %d frames", self.plan.label, msg.stream, msg.seq)

    def _process(self, msg: Message) -> None:
        try:
            with self.metrics.timed():
                out = self.stage.process(msg)
        except Exception as exc:  # noqa: BLE001 - one bad frame must not stop the stage
            return self.report.fail(msg, repr(exc), exc)
        if msg.shared is not None and not self.shared.intact(msg.shared):
            return self.report.fail(msg, "its shared-memory slot was reclaimed while in use; dropped")
        if self.plan.stage_cls.is_sink:
            self.metrics.sink_latency(msg.ts)
        if out is not None:
            self._send(out)
        self.shared.release(msg.shared)  # unless the send handed the slot on

    def _send(self, msg: Message) -> None:
        msg.stamps[self.plan.stage] = time.time()
        self.metrics.sent(*self.outbound.send(msg), sink=not self.outbound.links)
