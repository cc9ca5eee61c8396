"""Start the workers of a topology, watch them, restart crashed ones, and summarise.

``ProcessLauncher`` runs each worker in its own OS process (production); ``ThreadLauncher``
runs the same ``run_worker`` in threads (fast tests). They differ only in how a worker starts
and stops.
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


@dataclass
class Worker:
    plan: WorkerPlan
    handle: Any = None
    restarts: int = 0
    finished: bool = False
    fatal: str | None = None
    stats: dict[str, Any] | None = None

    @property
    def stage(self) -> str:
        return self.plan.stage

    @property
    def index(self) -> int:
        return self.plan.worker

    @property
    def label(self) -> str:
        return f"{self.stage}[{self.index}]"


@dataclass
class RunResult:
    """How a run ended: exit code, per-stage summary, events seen."""

    code: int
    stages: dict[str, dict[str, Any]]
    events: list[dict[str, Any]] = field(default_factory=list)
    snapshots: list[dict[str, Any]] = field(default_factory=list)  # each worker's last figures
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
        self.control_endpoint = f"ipc://{topology.runtime_dir / 'control'}"
        self._pids: set[int] = set()  # of workers that ran, to clean up frame rings they left

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

    # --- supervision -------------------------------------------------------------
    def run(self) -> RunResult:
        """Start every local worker, supervise, and return when all have ended."""
        self.topology.runtime_dir.mkdir(parents=True, exist_ok=True)
        ctx = zmq.Context()
        control = ctx.socket(zmq.PULL)
        control.setsockopt(zmq.LINGER, 0)
        control.bind(self.control_endpoint)
        workers = [Worker(plan) for plan in self.plans]  # consumers first
        result = RunResult(code=0, stages={}, started=time.time())
        try:
            for w in workers:
                self.start_worker(w)
            log.info("started %d workers: %s", len(workers), ", ".join(w.label for w in workers))
            result.code = self._supervise(workers, control, result.events)
        finally:
            self._stop_all(workers)
            self._drain(control, workers, result.events)
            control.close(linger=0)
            ctx.term()
            remove_rings(self._pids)
        result.ended = time.time()
        result.snapshots = [w.stats for w in workers if w.stats]
        result.stages = summarise(result.snapshots)
        return result

    def _supervise(self, workers: list[Worker], control: zmq.Socket, events: list) -> int:
        while True:
            if control.poll(200):
                self._drain(control, workers, events)
            fatal = next((w for w in workers if w.fatal), None)
            if fatal:
                log.error("stopping: %s failed: %s", fatal.label, fatal.fatal)
                return ExitCode.CONFIG
            if self.stop_requested.is_set():
                log.info("stop requested: stopping %d workers", sum(not w.finished for w in workers))
                return ExitCode.INTERRUPTED
            for w in workers:
                if w.finished:
                    continue
                code = self.exit_code(w)
                if code is None:
                    continue
                self._drain(control, workers, events)
                if w.fatal:
                    break
                if code == 0:
                    w.finished = True
                    continue
                if w.restarts >= self.max_restarts:
                    log.error("%s crashed (exit %s) after %d restarts: giving up", w.label, code, w.restarts)
                    return ExitCode.FAILED
                w.restarts += 1
                log.warning("%s crashed (exit %s); restarting (%d/%d)", w.label, code, w.restarts, self.max_restarts)
                events.append({"event": "restart", "stage": w.stage, "worker": w.index, "exit": code})
                self.start_worker(w)
            if all(w.finished for w in workers):
                return ExitCode.OK

    def _drain(self, control: zmq.Socket, workers: list[Worker], events: list) -> None:
        by_key = {(w.stage, w.index): w for w in workers}
        while True:
            try:
                event = msgpack.unpackb(control.recv(zmq.NOBLOCK))
            except zmq.Again:
                return
            w = by_key.get((event.get("stage"), event.get("worker")))
            kind = event.get("event")
            if kind == "started":
                self._pids.add(event["pid"])
            if w is not None and kind in ("stats", "done"):
                w.stats = event["stats"]
            if w is not None and kind == "fatal":
                w.fatal = event.get("error", "failed")
            if kind != "stats":
                events.append(event)
            if self.on_event:
                self.on_event(event)

    def _stop_all(self, workers: list[Worker]) -> None:
        running = [w for w in workers if w.handle is not None and self.exit_code(w) is None]
        for w in running:
            self.terminate(w)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while any(self.exit_code(w) is None for w in running) and time.monotonic() < deadline:
            time.sleep(0.05)
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
            args=(worker.plan, self.context, self.control_endpoint),
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
                box["code"] = run_worker(worker.plan, self.context, self.control_endpoint, stop)
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
        launcher.stop_requested.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
