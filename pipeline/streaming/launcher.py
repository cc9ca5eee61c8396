"""Start the workers of a topology, watch them, restart crashed ones, and summarise.

``ProcessLauncher`` runs each worker in its own OS process (production); ``ThreadLauncher``
runs the same ``run_worker`` in threads (fast tests); ``ray_launcher.RayLauncher`` runs it in
Ray actors on a cluster. They differ only in how a worker starts and stops, and in how its
events reach the launcher (``open``, ``receive``, ``close``).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cv2
import msgpack
import zmq

from pipeline.errors import ExitCode
from pipeline.streaming.metrics import summarise
from pipeline.streaming.plan import WorkerPlan, compile_plans
from pipeline.streaming.runner import run_worker
from pipeline.streaming.shm import remove_rings
from pipeline.streaming.topology import Topology

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 10.0
STALL_TIMEOUT_S = 20.0  # a worker whose producers all finished, with no input for this long, waits in vain


@dataclass
class Worker:
    """One worker as the launcher sees it: its plan, its process or thread, what it reported."""

    plan: WorkerPlan
    handle: Any = None
    restarts: int = 0
    finished: bool = False
    fatal: str | None = None
    fatal_code: int = ExitCode.CONFIG
    stats: dict[str, Any] | None = None
    earlier: list[dict[str, Any]] = field(default_factory=list)  # last figures of each earlier start
    last_input: float = field(default_factory=time.monotonic)  # when frames_in last grew

    @property
    def stage(self) -> str:
        return self.plan.stage

    @property
    def index(self) -> int:
        return self.plan.worker

    @property
    def label(self) -> str:
        return f"{self.stage}[{self.index}]"

    def restart(self) -> None:
        if self.stats:
            self.earlier.append(self.stats)
        self.stats, self.restarts, self.last_input = None, self.restarts + 1, time.monotonic()

    def snapshots(self) -> list[dict[str, Any]]:
        """Figures of every start of this worker (a restarted worker's counts add up)."""
        return self.earlier + ([self.stats] if self.stats else [])


@dataclass
class RunResult:
    """How a run ended: exit code, per-stage summary, events seen, data lost."""

    code: int
    stages: dict[str, dict[str, Any]]
    events: list[dict[str, Any]] = field(default_factory=list)
    snapshots: list[dict[str, Any]] = field(default_factory=list)  # each start of each worker, last figures
    lost: list[str] = field(default_factory=list)  # what was lost, one line each; non-empty: code is not OK
    started: float = 0.0
    ended: float = 0.0


class Launcher:
    """Runs a topology's local stages until they finish, fail, or are stopped.

    Args:
        topology: the validated topology.
        context: run-wide settings for stages (``out`` directory, ...).
        only: names of the stages to run here (``--stages``); None for all.
        max_restarts: how many times one worker may be restarted after a crash.
        on_event: called with every control event (for ``--stats`` and the benchmark).
    """

    def __init__(
        self,
        topology: Topology,
        context: dict[str, Any],
        only: list[str] | None = None,
        max_restarts: int = 3,
        on_event: Callable[[dict[str, Any]], None] | None = None,
    ):
        self.topology = topology
        self.context = context
        self.plans = compile_plans(topology, only)
        self.max_restarts = max_restarts
        self.on_event = on_event
        self.stop_requested = threading.Event()
        self.stop_code = ExitCode.INTERRUPTED  # SIGTERM makes it TERMINATED
        self.control_endpoint = f"ipc://{topology.runtime_dir / 'control'}"
        self._pids: set[int] = set()  # of workers that ran, to clean up frame rings they left
        self._ctx: zmq.Context | None = None
        self._control: zmq.Socket | None = None  # events from the workers, while running

    # --- how a worker starts and stops: overridden by the two launchers ----------
    def start_worker(self, worker: Worker) -> None:
        raise NotImplementedError

    def exit_code(self, worker: Worker) -> int | None:
        """The worker's exit code, or None while it runs."""
        raise NotImplementedError

    def terminate(self, worker: Worker) -> None:
        raise NotImplementedError

    def kill(self, worker: Worker) -> None:
        raise NotImplementedError

    def settings(self, worker: Worker) -> dict[str, Any]:
        """Run-wide settings for one start of a worker."""
        return {**self.context, "restarts": worker.restarts, "state_dir": str(self.topology.runtime_dir)}

    def exit_reason(self, worker: Worker, code: int) -> str:
        """How a crashed worker ended, for the log."""
        return f"exit {code}"

    # --- where events come from: a ZeroMQ PULL socket here, Ray actor calls on a cluster ---
    def open(self) -> None:
        """Get ready to start workers: bind the control socket that their events come to."""
        self.topology.runtime_dir.mkdir(parents=True, exist_ok=True)
        self._ctx = zmq.Context()
        self._control = self._ctx.socket(zmq.PULL)
        self._control.setsockopt(zmq.LINGER, 0)
        self._control.bind(self.control_endpoint)

    def receive(self, timeout_ms: int) -> list[dict[str, Any]]:
        """Events the workers sent, waiting up to ``timeout_ms`` for the first."""
        events: list[dict[str, Any]] = []
        if self._control is None or not self._control.poll(timeout_ms):
            return events
        while True:
            try:
                events.append(msgpack.unpackb(self._control.recv(zmq.NOBLOCK)))
            except zmq.Again:
                return events

    def close(self) -> None:
        """After the last worker stopped: close the control socket, remove frame rings left behind."""
        if self._control is not None:
            self._control.close(linger=0)
            self._ctx.term()
            self._control = None
        remove_rings(self._pids)

    # --- supervision -------------------------------------------------------------
    def run(self) -> RunResult:
        """Start every local worker, supervise, and return when all have ended."""
        result = RunResult(code=ExitCode.OK, stages={}, started=time.time())
        workers: list[Worker] = []
        try:
            self.open()
            workers = [Worker(plan) for plan in self.plans]  # consumers first
            for w in workers:
                self.start_worker(w)
            log.info("started %d workers: %s", len(workers), ", ".join(w.label for w in workers))
            result.code = self._supervise(workers, result)
        finally:
            self._stop_all(workers, result.events)
            self._handle(self.receive(0), workers, result.events)
            self.close()
        result.ended = time.time()
        result.snapshots = [s for w in workers for s in w.snapshots()]
        result.stages = summarise(result.snapshots)
        result.lost += [line for s in result.snapshots for line in s.get("lost", [])]
        if result.lost and result.code == ExitCode.OK:
            result.code = ExitCode.FAILED
        return result

    def _supervise(self, workers: list[Worker], result: RunResult) -> int:
        while True:
            self._handle(self.receive(200), workers, result.events)
            fatal = next((w for w in workers if w.fatal), None)
            if fatal:
                log.error("stopping: %s failed: %s", fatal.label, fatal.fatal)
                result.lost.append(f"{fatal.label}: {fatal.fatal}")
                return fatal.fatal_code
            if self.stop_requested.is_set():
                log.info("stop requested: stopping %d workers", sum(not w.finished for w in workers))
                return self.stop_code
            for w in workers:
                if not w.finished and not self._check(w, workers, result.events):
                    log.error("%s crashed after %d restarts: giving up", w.label, w.restarts)
                    result.lost.append(f"{w.label}: crashed more than --max-restarts {self.max_restarts} times")
                    return ExitCode.FAILED
            self._stop_stalled(workers, result)
            if all(w.finished for w in workers):
                return ExitCode.OK

    def _check(self, w: Worker, workers: list[Worker], events: list) -> bool:
        """Look at a running worker: note its end, restart it after a crash. False: out of restarts."""
        code = self.exit_code(w)
        if code is None:
            return True
        self._drain_pending(workers, events)
        if w.fatal:
            return True
        if code == 0:
            w.finished = True
            return True
        if w.restarts >= self.max_restarts:
            return False
        w.restart()
        log.warning("%s crashed (%s); restarting (%d/%d)", w.label, self.exit_reason(w, code), w.restarts, self.max_restarts)
        events.append({"event": "restart", "stage": w.stage, "worker": w.index, "exit": code})
        self.start_worker(w)
        return True

    def _stop_stalled(self, workers: list[Worker], result: RunResult) -> None:
        """Stop a worker that waits for an end-of-stream no producer will send.

        Its producers all ended here, yet it got no input for ``STALL_TIMEOUT_S``: it was
        restarted after their end-of-stream, or the marker was lost. Waiting longer cannot help.
        """
        done = {w.plan.id for w in workers if w.finished}
        local = {w.plan.id for w in workers}
        for w in workers:
            producers = set().union(*w.plan.producers.values()) if w.plan.producers else set()
            if w.finished or w.fatal or not producers or not producers <= local or not producers <= done:
                continue
            if time.monotonic() - w.last_input > STALL_TIMEOUT_S:
                log.error(
                    "%s: its producers ended but no end-of-stream reached it in %.0f s: stopping it", w.label, STALL_TIMEOUT_S
                )
                result.lost.append(f"{w.label}: never got end-of-stream from {', '.join(sorted(producers))}; stopped")
                self.terminate(w)
                w.finished = True

    def _drain_pending(self, workers: list[Worker], events: list) -> None:
        """Read what a worker sent before it ended (its last figures, a fatal error)."""
        self._handle(self.receive(0), workers, events)

    def _handle(self, received: list[dict[str, Any]], workers: list[Worker], events: list) -> None:
        by_key = {(w.stage, w.index): w for w in workers}
        for event in received:
            w = by_key.get((event.get("stage"), event.get("worker")))
            kind = event.get("event")
            if kind == "started":
                self._pids.add(event["pid"])
            if w is not None and kind in ("stats", "done"):
                if event["stats"]["frames_in"] > (w.stats or {}).get("frames_in", 0):
                    w.last_input = time.monotonic()
                w.stats = event["stats"]
            if w is not None and kind == "fatal":
                w.fatal = event.get("error", "failed")
                w.fatal_code = event.get("code", ExitCode.CONFIG)
            if kind != "stats":
                events.append(event)
            if self.on_event:
                self.on_event(event)

    def _stop_all(self, workers: list[Worker], events: list) -> None:
        running = [w for w in workers if w.handle is not None and self.exit_code(w) is None]
        for w in running:
            self.terminate(w)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while any(self.exit_code(w) is None for w in running) and time.monotonic() < deadline:
            self._handle(self.receive(50), workers, events)  # their last figures, while they stop
        for w in running:
            if self.exit_code(w) is None:
                log.error("%s did not stop within %.0fs: killing it", w.label, STOP_TIMEOUT_S)
                self.kill(w)


def _process_main(plan: WorkerPlan, context: dict, control: str) -> None:
    logging.basicConfig(level=context.get("log_level", logging.INFO), format=context.get("log_format"))
    # Parallelism comes from worker processes. OpenCV's own thread pool (cvtColor, resize) only
    # spins against the other stages: it cost classify and segment ~2 ms of CPU a frame.
    cv2.setNumThreads(1)
    raise SystemExit(int(run_worker(plan, context, control)))


class ProcessLauncher(Launcher):
    """One OS process per worker, started with ``spawn`` (no state inherited)."""

    _mp = mp.get_context("spawn")

    def start_worker(self, worker: Worker) -> None:
        process = self._mp.Process(
            target=_process_main,
            name=worker.label,
            args=(worker.plan, self.settings(worker), self.control_endpoint),
        )
        process.start()
        worker.handle = process  # only once started: stopping a worker that never started is a no-op

    def exit_code(self, worker: Worker) -> int | None:
        return worker.handle.exitcode

    def terminate(self, worker: Worker) -> None:
        worker.handle.terminate()

    def kill(self, worker: Worker) -> None:
        worker.handle.kill()


class ThreadLauncher(Launcher):
    """Workers as threads of this process: the same graph, for fast tests."""

    def start_worker(self, worker: Worker) -> None:
        stop = threading.Event()
        box: dict[str, int] = {}

        def target() -> None:
            try:
                box["code"] = run_worker(worker.plan, self.settings(worker), self.control_endpoint, stop)
            except BaseException:  # noqa: BLE001 - reported as a crash, like a dead process
                log.exception("%s crashed", worker.label)
                box["code"] = 1

        thread = threading.Thread(target=target, name=worker.label, daemon=True)
        worker.handle = (thread, stop, box)
        thread.start()

    def exit_code(self, worker: Worker) -> int | None:
        thread, _, box = worker.handle
        return None if thread.is_alive() else box.get("code", 1)

    def terminate(self, worker: Worker) -> None:
        worker.handle[1].set()

    def kill(self, worker: Worker) -> None:
        worker.handle[1].set()  # threads cannot be killed; the stop flag is all there is


def install_signal_handlers(launcher: Launcher) -> None:
    """Ctrl-C and SIGTERM stop the whole pipeline cleanly (sinks flush)."""

    def handler(signum, _frame):
        log.info("received %s", signal.Signals(signum).name)
        launcher.stop_code = ExitCode.TERMINATED if signum == signal.SIGTERM else ExitCode.INTERRUPTED
        launcher.stop_requested.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
