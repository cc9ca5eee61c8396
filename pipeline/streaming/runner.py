"""The loop around a stage: sockets, policies, end-of-stream, reordering, metrics, errors.

One call of ``run_worker`` is one worker of one stage. The launcher runs it in a process
(production) or a thread (fast tests); sockets are always made here, from a fresh context.

Wiring: every worker of a consumer stage binds its own endpoint; every producer worker holds
one PUSH socket per consumer worker and spreads frames over them itself. Doing the round
robin here (instead of letting one PUSH socket do it) lets a producer skip a worker whose
queue is full or which is restarting, and send end-of-stream to every worker.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import signal
import threading
import time
from collections import deque
from dataclasses import replace
from typing import Any

import msgpack
import zmq
from zmq.utils.monitor import recv_monitor_message

from pipeline.errors import MessageError, PipelineError
from pipeline.streaming.message import Message, decode, encode
from pipeline.streaming.metrics import StageMetrics
from pipeline.streaming.reorder import ReorderBuffer
from pipeline.streaming.shm import FrameRing, SharedFrames
from pipeline.streaming.stage import Stage
from pipeline.streaming.topology import InputConfig, Topology

log = logging.getLogger(__name__)

POLL_MS = 100
STATS_EVERY_S = 1.0
EOS_SEND_TIMEOUT_S = 60.0  # long enough for a crashed consumer worker to be restarted
WAIT_LOG_EVERY_S = 5.0


class Output:
    """One link to a consumer stage: a PUSH socket per consumer worker, and a send policy."""

    def __init__(
        self,
        ctx: zmq.Context,
        endpoints: list[str],
        link: InputConfig,
        stop: threading.Event,
        image: bool = True,
        codec: str = "raw",
    ):
        self.link = link
        self.image = image  # False: nothing downstream uses the image, so it is not sent
        self.codec = codec  # shm, raw or jpeg (``auto`` resolved by the topology)
        self.stop = stop
        self.sockets = []
        # Connection events tell when consumer workers are ready (they bind only then) and when
        # they hang up. The monitor is attached before connecting, so no event is missed.
        self._monitors = []
        for endpoint in endpoints:
            sock = ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.SNDHWM, link.hwm)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.IMMEDIATE, 1)  # queue only to workers that are connected
            self._monitors.append(sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED))
            sock.connect(endpoint)
            self.sockets.append(sock)
        self._next = 0
        self._poller = zmq.Poller()
        for sock in self.sockets:
            self._poller.register(sock, zmq.POLLOUT)
        self._connected = [False] * len(self.sockets)

    def send(self, frames: list) -> bool:
        """Send to the next worker with room. Returns False if the frame was dropped."""
        n = len(self.sockets)
        while not self.stop.is_set():
            for k in range(n):
                i = (self._next + k) % n
                try:
                    self.sockets[i].send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    continue
                self._next = (i + 1) % n
                return True
            if self.link.policy == "drop-oldest":
                return False  # every queue is full: the consumer keeps the frames it has
            self._poller.poll(POLL_MS)
        return False

    def broadcast(self, frames: list) -> None:
        """Send to every worker (end-of-stream), waiting for restarting workers up to a limit."""
        deadline = time.monotonic() + EOS_SEND_TIMEOUT_S
        for sock in self.sockets:
            while True:
                try:
                    sock.send_multipart(frames, flags=zmq.NOBLOCK)
                    break
                except zmq.Again:
                    if self.stop.is_set() or time.monotonic() > deadline:
                        log.error("end-of-stream not delivered to %s", sock.getsockopt_string(zmq.LAST_ENDPOINT))
                        break
                    sock.poll(POLL_MS, zmq.POLLOUT)

    def wait_until_connected(self, label: str) -> None:
        """Block until every consumer worker has connected (or ``stop``), logging while it waits.

        Consumers bind only once they are ready (see ``run_worker``), so this is how readiness
        travels upstream: a source sends its first frame when the whole graph can take it.
        """
        next_log = time.monotonic() + WAIT_LOG_EVERY_S
        while not all(self._update_connections()) and not self.stop.is_set():
            zmq.select(self._monitors, [], [], POLL_MS / 1000)
            if time.monotonic() > next_log:
                next_log += WAIT_LOG_EVERY_S
                missing = [s.getsockopt_string(zmq.LAST_ENDPOINT) for s, ok in zip(self.sockets, self._connected) if not ok]
                log.info("%s: waiting for consumers at %s", label, ", ".join(missing))

    def wait_for_consumers(self, timeout_s: float) -> None:
        """Wait until every consumer worker that was connected has hung up.

        A consumer exits only after it has received end-of-stream, which travels behind the
        last frame, so once it hangs up nothing sent to it is still queued here. Closing
        earlier, even with ZMQ_LINGER, lost the last frames to a busy worker now and then.
        """
        deadline = time.monotonic() + timeout_s
        while any(self._update_connections()) and time.monotonic() < deadline and not self.stop.is_set():
            zmq.select(self._monitors, [], [], POLL_MS / 1000)

    def _update_connections(self) -> list[bool]:
        for i, monitor in enumerate(self._monitors):
            while monitor.poll(0):
                event = recv_monitor_message(monitor)["event"]
                self._connected[i] = event == zmq.EVENT_HANDSHAKE_SUCCEEDED
        return self._connected

    def close(self) -> None:
        for sock, monitor in zip(self.sockets, self._monitors):
            sock.disable_monitor()
            monitor.close(linger=0)
            sock.close(linger=0)


class Input:
    """A worker's bound PULL socket. With a drop-oldest link it keeps only the newest frames."""

    def __init__(
        self,
        ctx: zmq.Context,
        endpoint: str,
        links: list[InputConfig],
        metrics: StageMetrics,
        name: str,
        shared: SharedFrames | None = None,
    ):
        self.sock = ctx.socket(zmq.PULL)
        self.shared = shared  # maps images sent through shared memory; None: refused
        self.capacity = max(link.hwm for link in links)
        self.sock.setsockopt(zmq.RCVHWM, self.capacity)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(endpoint)
        self.leaky = any(link.policy == "drop-oldest" for link in links)
        self.pending: deque[Message] = deque()
        self.metrics = metrics
        self.name = name
        self.errors: list[str] = []

    def next(self, timeout_ms: int) -> Message | None:
        """The next message to process, or None after ``timeout_ms`` without one."""
        limit = None if self.leaky else 1
        if self.leaky or not self.pending:
            self._drain(limit)  # what has arrived already: a busy stage skips the poll
        if not self.pending and self.sock.poll(timeout_ms):
            self._drain(limit)
        return self.pending.popleft() if self.pending else None

    def _drain(self, limit: int | None = None) -> None:
        received = 0
        while limit is None or received < limit:
            try:
                frames = self.sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            received += 1
            try:
                msg = decode(frames, self.shared)
            except MessageError as exc:
                self.metrics.errors += 1
                log.error("%s: dropped malformed message: %s", self.name, exc)
                self.errors.append(str(exc))
                continue
            if not msg.is_eos:
                msg.meta["_received"] = time.time()  # for the queue-wait figure
            self.pending.append(msg)
            if self.leaky:
                self._drop_oldest()

    def _drop_oldest(self) -> None:
        frames = [m for m in self.pending if not m.is_eos]
        while len(frames) > self.capacity:
            dropped = frames.pop(0)
            self.pending.remove(dropped)  # end-of-stream is never dropped
            self.metrics.dropped += 1
            if self.shared is not None:
                self.shared.release(dropped.shared)

    def close(self) -> None:
        self.sock.close(linger=0)


class Control:
    """Events to the launcher (started, stats, error, done, fatal) over a PUSH socket."""

    def __init__(self, ctx: zmq.Context, endpoint: str | None, stage: str, worker: int):
        self.sock = None
        if endpoint:
            self.sock = ctx.socket(zmq.PUSH)
            self.sock.setsockopt(zmq.LINGER, 1000)
            self.sock.setsockopt(zmq.SNDHWM, 1000)
            self.sock.connect(endpoint)
        self.base = {"stage": stage, "worker": worker, "pid": os.getpid()}

    def emit(self, event: str, **data: Any) -> None:
        if self.sock is not None:
            # The launcher is gone or flooded: events are advisory, so a full queue drops them.
            with contextlib.suppress(zmq.Again):
                self.sock.send(msgpack.packb({"event": event, **self.base, **data}), flags=zmq.NOBLOCK)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()


def run_worker(
    topology: Topology,
    name: str,
    worker: int,
    context: dict[str, Any],
    control_endpoint: str | None,
    stop: threading.Event | None = None,
) -> int:
    """Run one worker of stage ``name`` until end-of-stream or ``stop``. Returns an exit code."""
    stop = stop or threading.Event()
    in_process = threading.current_thread() is threading.main_thread()
    if in_process:
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the launcher handles Ctrl-C for the group
    label = f"{name}[{worker}]" if topology.stages[name].workers > 1 else name
    ctx = zmq.Context()
    control = Control(ctx, control_endpoint, name, worker)
    metrics = StageMetrics(name, worker)
    stage_cls = topology.classes[name]
    stage: Stage = stage_cls(
        topology.params[name],
        name=name,
        context={
            **context,
            "worker": worker,
            "label": label,
            "stream": topology.stream_id(name) if stage_cls.is_source else None,
            "streams": sorted(topology.streams[name]),
        },
    )
    outputs: list[Output] = []
    inp: Input | None = None
    shared = SharedFrames()
    finished = False
    loop = None
    try:
        for consumer, link in topology.consumers(name):
            image = topology.needs_image[consumer.name]
            codec = topology.codec(consumer.name, link)
            outputs.append(Output(ctx, topology.endpoints(consumer.name), link, stop, image, codec))
        try:
            stage.on_start()
        except PipelineError as exc:  # bad source, model, file: restarting will not help
            log.error("%s: %s", label, exc)
            control.emit("fatal", error=str(exc))
            return 2
        # Ready once started and every consumer is ready; only then bind the input, so that
        # upstream (and in the end the source) waits instead of queueing frames during start-up.
        for out in outputs:
            out.wait_until_connected(label)
        if not stage_cls.is_source:
            links = topology.stages[name].inputs
            accepts_shm = any(topology.codec(name, link) == "shm" for link in links)
            inp = Input(ctx, topology.bind_endpoints(name)[worker], links, metrics, label, shared if accepts_shm else None)
        control.emit("started")
        log.info("%s: started in process %d", label, os.getpid())
        loop = _Loop(topology, name, label, stage, inp, outputs, metrics, control, stop, in_process, shared)
        loop.run()
        finished = True
        return 0
    finally:
        try:
            stage.on_stop()
        except Exception:  # noqa: BLE001 - a failing flush is reported, the worker still exits
            log.exception("%s: on_stop failed", label)
        _resources(metrics)
        control.emit("done", stats=metrics.snapshot())
        for out in outputs:
            if finished:
                out.wait_for_consumers(EOS_SEND_TIMEOUT_S)
            out.close()
        if inp is not None:
            inp.close()
        if loop is not None:
            loop.close_rings()
        control.close()
        ctx.term()


def _process_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _resources(metrics: StageMetrics) -> None:
    metrics.cpu_s = _process_cpu_s()
    try:
        with open("/proc/self/statm") as f:
            metrics.rss_mib = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        metrics.rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _Loop:
    """The receive-process-send loop of one worker (see ``run_worker``)."""

    def __init__(self, topology, name, label, stage, inp, outputs, metrics, control, stop, in_process, shared):
        self.topology, self.name, self.label, self.stage = topology, name, label, stage
        self.inp, self.outputs, self.metrics, self.control, self.stop = inp, outputs, metrics, control, stop
        self.shared = shared  # frames read from upstream rings
        self.rings: list[FrameRing] = []  # this worker's ring (one more if the frame size grows)
        self.parent = os.getppid() if in_process else None
        self.is_sink = type(stage).is_sink
        self.streams = topology.streams[name]
        self.needs_image = "image" in type(stage).requirements(stage.params)
        self.reorder = None
        if type(stage).ordered_input and topology.out_of_order[name]:
            # Links that block lose no frame (but for a crash): a gap is worth waiting for.
            leaky = any(link.policy == "drop-oldest" for link in topology.stages[name].inputs)
            self.reorder = ReorderBuffer(capacity=128, max_wait_s=0.25 if leaky else 10.0)
        self._encoded: dict[tuple[str, bool], list] = {}
        self._last_stats = time.monotonic()

    def run(self) -> None:
        if self.inp is None:
            self._run_source()
        else:
            self._run_stage()

    # --- sources ---------------------------------------------------------------
    def _run_source(self) -> None:
        stream = self.stage.context["stream"]
        count = 0
        self.metrics.cpu_at_first_frame_s = _process_cpu_s()
        t0, c0 = time.perf_counter(), time.thread_time()
        for msg in self.stage.generate():
            busy = time.perf_counter() - t0
            self.metrics.busy_s += busy
            self.metrics.process_ms.append(busy * 1000)
            self.metrics.cpu_ms.append((time.thread_time() - c0) * 1000)
            msg.stream, msg.seq = stream, count
            count += 1
            self._emit(msg)
            self._tick()
            if self.stop.is_set() or self._orphaned():
                break
            t0, c0 = time.perf_counter(), time.thread_time()
        if not self.stop.is_set():
            self._broadcast(Message.eos(stream, count))

    # --- other stages -----------------------------------------------------------
    def _run_stage(self) -> None:
        waiting = {s: self.topology.expected_eos(self.name, s) for s in self.topology.streams[self.name]}
        while waiting and not self.stop.is_set() and not self._orphaned():
            msg = self.inp.next(POLL_MS)
            if self.inp.errors:
                for error in self.inp.errors:
                    self.control.emit("error", error=f"malformed message: {error}")
                self.inp.errors.clear()
            if msg is not None:
                if msg.is_eos:
                    self._on_eos(msg, waiting)
                else:
                    self._on_frame(msg)
            if self.reorder is not None:
                for ready in self.reorder.expired():
                    self._process(ready)
            self._tick()

    def _on_frame(self, msg: Message) -> None:
        problem = None
        if msg.stream not in self.streams:
            problem = f"unknown stream {msg.stream!r} (expected {', '.join(sorted(self.streams))})"
        elif self.needs_image and msg.image is None:
            problem = f"stream {msg.stream} frame {msg.seq} has no image"
        if problem:
            self.shared.release(msg.shared)
            self.metrics.errors += 1
            log.error("%s: dropped malformed message: %s", self.label, problem)
            self.control.emit("error", error=f"malformed message: {problem}")
            return
        if self.metrics.frames_in == 0:
            self.metrics.cpu_at_first_frame_s = _process_cpu_s()
        self.metrics.frames_in += 1
        received = msg.meta.pop("_received", time.time())
        upstream = max(msg.stamps.values(), default=msg.ts)
        self.metrics.wait_ms.append(max(0.0, received - upstream) * 1000)
        if self.reorder is None:
            self._process(msg)
            return
        ready, late = self.reorder.push(msg)
        self.metrics.late += late
        if late:
            self.shared.release(msg.shared)
        for m in ready:
            self._process(m)

    def _on_eos(self, msg: Message, waiting: dict[str, int]) -> None:
        if msg.stream not in waiting:
            log.warning("%s: end-of-stream for unknown or finished stream %r ignored", self.label, msg.stream)
            return
        waiting[msg.stream] -= 1
        if waiting[msg.stream] > 0:
            return  # other upstream workers still have frames of this stream
        del waiting[msg.stream]
        if self.reorder is not None:
            for m in self.reorder.flush(msg.stream):
                self._process(m)
        self.stage.on_eos(msg)
        self._broadcast(msg)
        log.info("%s: end of stream %s after %d frames", self.label, msg.stream, msg.seq)

    def _process(self, msg: Message) -> None:
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            out = self.stage.process(msg)
        except Exception as exc:  # noqa: BLE001 - one bad frame must not stop the stage
            self.shared.release(msg.shared)
            self.metrics.errors += 1
            log.exception("%s: stream %s frame %d: %s", self.label, msg.stream, msg.seq, exc)
            self.control.emit("error", error=f"stream {msg.stream} frame {msg.seq}: {exc!r}")
            return
        if msg.shared is not None and not self.shared.intact(msg.shared):
            self.metrics.errors += 1
            error = f"stream {msg.stream} frame {msg.seq}: its shared-memory slot was reclaimed while in use; dropped"
            log.error("%s: %s", self.label, error)
            self.control.emit("error", error=error)
            return
        busy = time.perf_counter() - t0
        self.metrics.busy_s += busy
        self.metrics.process_ms.append(busy * 1000)
        self.metrics.cpu_ms.append((time.thread_time() - c0) * 1000)
        if self.is_sink:
            now = time.time()
            self.metrics.first_ts = self.metrics.first_ts or now
            self.metrics.latency_ms.append((now - msg.ts) * 1000)
            self.metrics.latency_series.append((msg.ts, (now - msg.ts) * 1000))
        if out is not None:
            self._emit(out)
        self.shared.release(msg.shared)  # unless _emit handed the slot on

    # --- sending ---------------------------------------------------------------
    def _emit(self, msg: Message) -> None:
        msg.stamps[self.name] = time.time()
        self._encoded.clear()
        held = msg.shared if msg.shared is not None and not msg.shared.released and msg.shared.array is msg.image else None
        handoff = None  # the output that takes over the slot the image came in
        if held is not None:
            handoff = next((o for o in reversed(self.outputs) if o.image and o.codec == "shm"), None)
        # The hand-off goes last: once a consumer has the slot it may free it at any moment, so
        # every other output must have read the pixels before.
        sent = False
        for out in [o for o in self.outputs if o is not handoff] + ([handoff] if handoff else []):
            if out is handoff:
                ok = out.send(encode(msg, "shm", shared_ref=held.ref))
                held.released = ok  # the consumer releases it now; if dropped, we still do
            elif out.image and out.codec == "shm" and msg.image is not None:
                ok = self._send_copy(msg, out)
            else:
                ok = out.send(self._frames(msg, out))
            if ok:
                sent = True
            else:
                self.metrics.dropped += 1
        if sent or not self.outputs:
            self.metrics.frames_out += 1

    def _send_copy(self, msg: Message, out: Output) -> bool:
        """Write the image to this worker's ring and send the reference."""
        try:
            ref = self._put(msg.image, out)
        except OSError as exc:  # no room for a ring (a small /dev/shm): pixels go through the socket
            log.warning("%s: no shared memory for frames (%s); sending them inline", self.label, exc)
            out.codec = "raw"
            return out.send(self._frames(msg, out))
        if ref is None:
            return False
        if out.send(encode(msg, "shm", shared_ref=ref)):
            return True
        self.rings[-1].free(ref)
        return False

    def _put(self, image, out: Output) -> dict | None:
        """Copy ``image`` into this worker's ring; a full ring waits (block) or drops (drop-oldest)."""
        if not self.rings or image.nbytes > self.rings[-1].ring.slot_bytes:
            self.rings.append(FrameRing(self.label, image.nbytes))
        while not self.stop.is_set():
            ref = self.rings[-1].put(image)
            if ref is not None or out.link.policy == "drop-oldest":
                return ref
            self.stop.wait(0.001)  # every frame in flight: wait for one to be released downstream
        return None

    def close_rings(self) -> None:
        for ring in self.rings:
            ring.close()

    def _broadcast(self, msg: Message) -> None:
        self._encoded.clear()
        for out in self.outputs:
            out.broadcast(self._frames(msg, out))

    def _frames(self, msg: Message, out: Output) -> list:
        key = (out.codec, out.image)
        if key not in self._encoded:  # encode once per form, even with several consumers
            codec = "raw" if out.codec == "shm" else out.codec  # shm links without image
            wire = msg if out.image else replace(msg, image=None)
            if out.image and codec == "raw" and msg.shared is not None and msg.shared.array is msg.image:
                # ZeroMQ reads raw buffers after send() returns, when the slot may be reused.
                wire = replace(msg, image=msg.image.copy())
            self._encoded[key] = encode(wire, image_codec=codec)
        return self._encoded[key]

    def _tick(self) -> None:
        now = time.monotonic()
        if now - self._last_stats >= STATS_EVERY_S:
            self._last_stats = now
            _resources(self.metrics)
            snap = self.metrics.snapshot()
            for key in ("process_ms", "cpu_ms", "wait_ms", "latency_ms", "latency_series"):
                snap[key] = snap[key][-200:]  # periodic stats: recent frames only
            self.control.emit("stats", stats=snap)

    def _orphaned(self) -> bool:
        """The launcher died without stopping us (kill -9): stop instead of lingering."""
        return self.parent is not None and os.getppid() != self.parent
