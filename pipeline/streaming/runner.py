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
from typing import Any

import zmq

from pipeline.errors import ExitCode, PipelineError
from pipeline.streaming.message import Message
from pipeline.streaming.metrics import StageMetrics
from pipeline.streaming.outbound import Outbound
from pipeline.streaming.plan import REORDER_CAPACITY, WorkerPlan
from pipeline.streaming.reorder import ReorderBuffer
from pipeline.streaming.shm import SharedFrames
from pipeline.streaming.stage import Stage, StageContext
from pipeline.streaming.transport import EOS_SEND_TIMEOUT_S, POLL_MS, Control, PullInput

log = logging.getLogger(__name__)

STATS_EVERY_S = 1.0


def run_worker(
    plan: WorkerPlan,
    settings: dict[str, Any],
    control_endpoint: str | None,
    stop: threading.Event | None = None,
) -> int:
    """Run one worker until end-of-stream or ``stop``; return its exit code.

    Args:
        plan: the worker's wiring.
        settings: run-wide settings from the launcher (``out``: the output folder).
        control_endpoint: where to send events for the launcher (None: nowhere).
        stop: set to stop the worker (threads); a process also stops on SIGTERM.
    """
    stop = stop or threading.Event()
    in_process = threading.current_thread() is threading.main_thread()
    if in_process:
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the launcher handles Ctrl-C for the group
    stage: Stage = plan.stage_cls(plan.params, name=plan.stage, context=_context(plan, settings))
    ctx = zmq.Context()
    control = Control(ctx, control_endpoint, plan.stage, plan.worker)
    loop = _Loop(plan, stage, Outbound(ctx, plan.outputs, stop, plan.label), control, stop, in_process)
    inp: PullInput | None = None
    finished = False
    try:
        try:
            stage.on_start()
        except PipelineError as exc:  # bad source, model, file: restarting will not help
            log.error("%s: %s", plan.label, exc)
            control.emit("fatal", error=str(exc))
            return ExitCode.CONFIG
        # Ready once started and every consumer is ready; only then bind the input, so that
        # upstream (and in the end the source) waits instead of queueing frames during start-up.
        loop.outbound.wait_until_connected()
        if plan.input is not None:
            inp = PullInput(ctx, plan.input, loop.shared, loop.report.malformed, loop.report.dropped, plan.label)
        control.emit("started")
        log.info("%s: started in process %d", plan.label, os.getpid())
        loop.run_source() if inp is None else loop.run_stage(inp)
        finished = True
        return ExitCode.OK
    finally:
        _stop_stage(stage, plan.label)
        loop.metrics.sample_resources()
        control.emit("done", stats=loop.metrics.snapshot())  # complete figures, not only recent ones
        if finished:
            loop.outbound.finish(EOS_SEND_TIMEOUT_S)
        loop.outbound.close()
        if inp is not None:
            inp.close()
        control.close()
        ctx.term()


def _context(plan: WorkerPlan, settings: dict[str, Any]) -> StageContext:
    return StageContext(
        out=settings.get("out", "."),
        worker=plan.worker,
        label=plan.label,
        stream=plan.stream,
        streams=tuple(plan.expected_eos) or (plan.stream,),
        run=plan.run,
    )


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
        """A frame this worker could not handle: released, counted, logged, sent to the launcher."""
        error = problem if msg is None else f"{msg.where}: {problem}"
        if msg is not None:
            self.shared.release(msg.shared)
        self.metrics.errors += 1
        log.error("%s: %s", self.label, error, exc_info=exc)
        self.control.emit("error", error=error)

    def malformed(self, error: str) -> None:
        self.fail(None, f"dropped malformed message: {error}")

    def dropped(self, msg: Message) -> None:
        self.metrics.dropped += 1
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

    def __init__(self, plan: WorkerPlan, stage: Stage, outbound: Outbound, control: Control, stop, in_process: bool):
        self.plan, self.stage, self.outbound, self.stop = plan, stage, outbound, stop
        self.metrics, self.shared = StageMetrics(plan.stage, plan.worker), SharedFrames()
        self.report = _Reporter(plan.label, self.metrics, control, self.shared)
        wait = plan.input and plan.input.reorder_wait_s
        self.reorder = ReorderBuffer(REORDER_CAPACITY, wait) if wait else None
        self.waiting = dict(plan.expected_eos)  # stream -> end-of-stream markers still to come
        self.parent = os.getppid() if in_process else None

    def run_source(self) -> None:
        frames, count = iter(self.stage.generate()), 0
        self.metrics.first_frame()
        while not self._stopping():
            with self.metrics.timed():
                msg = next(frames, None)
            if msg is None:
                break
            msg.stream, msg.seq, count = self.plan.stream, count, count + 1
            self._send(msg)
            self.report.tick()
        if not self.stop.is_set():
            self.outbound.broadcast(Message.eos(self.plan.stream, count))

    def run_stage(self, inp: PullInput) -> None:
        while self.waiting and not self._stopping():
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
            self.metrics.late += 1
            self.shared.release(msg.shared)
        for m in ready:
            self._process(m)

    def _on_eos(self, msg: Message) -> None:
        if self.waiting.get(msg.stream, 0) > 1:
            self.waiting[msg.stream] -= 1  # other upstream workers still have frames of this stream
        elif self.waiting.pop(msg.stream, None) is None:
            log.warning("%s: end-of-stream for unknown or finished stream %r ignored", self.plan.label, msg.stream)
        else:
            for m in self.reorder.flush(msg.stream) if self.reorder else ():
                self._process(m)
            self.stage.on_eos(msg)
            self.outbound.broadcast(msg)
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
        sent, dropped = self.outbound.send(msg)
        self.metrics.dropped += dropped
        self.metrics.frames_out += sent or not self.outbound.links

    def _stopping(self) -> bool:  # stop requested, or the launcher died without stopping us (kill -9)
        return self.stop.is_set() or (self.parent is not None and os.getppid() != self.parent)
