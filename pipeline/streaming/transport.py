"""All socket code: the links between workers and the control channel to the launcher.

Wiring: every worker of a consumer stage binds its own endpoint; every producer worker holds
one PUSH socket per consumer worker and spreads frames over them itself. Doing the round
robin here (instead of letting one PUSH socket do it) lets a producer skip a worker whose
queue is full or which is restarting, and send end-of-stream to every worker. Sockets are
made inside the worker from its own context, with ``linger=0``, and closed in ``close``.

Security: a link whose plan carries Curve keys is a CurveZMQ link (Ironhouse). The binding
worker runs a ZAP authenticator in its context that accepts only the client keys its plan
lists; the connecting side insists on the server key its plan names. Readiness (the
handshake) and end-of-stream travel on these same sockets, so a peer without a listed key can
neither look ready, nor send a frame, nor end a stream. ipc:// links stay on one machine and
carry no keys; the launcher's control socket is ipc:// too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import msgpack
import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message

from pipeline.errors import LinkError, MessageError
from pipeline.streaming.keys import CurveClient, CurveServer
from pipeline.streaming.message import MAX_BUFFER_BYTES, MAX_HEADER_BYTES, Message, decode
from pipeline.streaming.plan import InputPlan, OutputPlan
from pipeline.streaming.shm import SharedFrames

log = logging.getLogger(__name__)

POLL_MS = 100
PEER_TIMEOUT_S = 60.0  # how long a consumer may be gone (a crashed worker being restarted) before a send gives up
FINISH_TIMEOUT_S = 600.0  # how long a producer waits for connected consumers to take its last frames
WAIT_FIRST_LOG_S = 3.0  # a consumer that has not bound by then is probably not started anywhere
WAIT_LOG_EVERY_S = 5.0
MAX_MESSAGE_BYTES = MAX_HEADER_BYTES + 2 * MAX_BUFFER_BYTES  # ZMQ_MAXMSGSIZE: bigger ones are refused unread
ZAP_DOMAIN = "emotion-pipeline"
MAX_REFUSED_LOGGED = 100  # unknown keys logged once each, up to this many (a flood must not fill the log)
_HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH,  # the server's authenticator refused our key
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,  # keys that do not match, or keys on one side only
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
)
_LINK_EVENTS = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
for _event in _HANDSHAKE_FAILED:
    _LINK_EVENTS |= _event


def _secure_client(sock: zmq.Socket, curve: CurveClient) -> None:
    """Make ``sock`` a CurveZMQ client that talks only to the holder of ``curve.server``'s secret."""
    sock.curve_secretkey = curve.secret
    sock.curve_publickey = curve.public
    sock.curve_serverkey = curve.server


def _secure_server(sock: zmq.Socket, curve: CurveServer) -> None:
    """Make ``sock`` a CurveZMQ server whose clients are checked by this context's authenticator."""
    sock.curve_secretkey = curve.secret
    sock.curve_publickey = curve.public
    sock.curve_server = True
    sock.zap_domain = ZAP_DOMAIN.encode()
    # Without a ZAP handler libzmq would accept any client key; with this option (where the
    # library offers it) it refuses instead, should the authenticator ever be missing.
    with contextlib.suppress(AttributeError, zmq.ZMQError):
        sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)


class _KnownClients:
    """The authenticator's check: a client key is accepted only if the plan lists it."""

    def __init__(self, curve: CurveServer, label: str):
        self.clients, self.label = curve.clients, label
        self._refused: set[bytes] = set()

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self.clients:
            return True
        if key not in self._refused and len(self._refused) < MAX_REFUSED_LOGGED:
            self._refused.add(key)
            log.warning(
                "%s: refused a peer with an unknown key %s...: accepted are the keys of %s",
                self.label,
                key[:8].decode(errors="replace"),
                ", ".join(sorted(set(self.clients.values()))),
            )
        return False


def _start_authenticator(ctx: zmq.Context, curve: CurveServer, label: str) -> ThreadAuthenticator:
    """A ZAP handler for this worker's context; it must run before the socket binds."""
    auth = ThreadAuthenticator(ctx, log=logging.getLogger(f"{__name__}.zap"))
    auth.configure_curve_callback(ZAP_DOMAIN, _KnownClients(curve, label))
    auth.start()
    return auth


class PushLink:
    """One link to a consumer stage: a PUSH socket per consumer worker, and its send policy."""

    def __init__(self, ctx: zmq.Context, plan: OutputPlan, stop: threading.Event):
        self.plan = plan
        self.stop = stop
        self.sockets: list[zmq.Socket] = []
        # Connection events tell when consumer workers are ready (they bind only then) and when
        # they hang up. The monitor is attached before connecting, so no event is missed.
        self._monitors: list[zmq.Socket] = []
        for endpoint in plan.endpoints:
            sock = ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.SNDHWM, plan.hwm)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.IMMEDIATE, 1)  # queue only to workers that are connected
            if plan.curve is not None:
                _secure_client(sock, plan.curve)
            self._monitors.append(sock.get_monitor_socket(_LINK_EVENTS))
            sock.connect(endpoint)
            self.sockets.append(sock)
        self._next = 0
        self._poller = zmq.Poller()
        for sock in self.sockets:
            self._poller.register(sock, zmq.POLLOUT)
        self._connected = [False] * len(self.sockets)
        self._failed: list[int | None] = [None] * len(self.sockets)  # the last handshake failure per socket

    def send(self, frames: list) -> bool:
        """Send to the next worker with room. Returns False if the frame was dropped.

        A full queue of a connected consumer is waited for as long as it takes (``block``), but
        no consumer worker connected for ``PEER_TIMEOUT_S`` raises ``LinkError``.
        """
        n = len(self.sockets)
        gone_since = None
        while not self.stop.is_set():
            for k in range(n):
                i = (self._next + k) % n
                try:
                    self.sockets[i].send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    continue
                self._next = (i + 1) % n
                return True
            if self.plan.policy == "drop-oldest":
                return False  # every queue is full: the consumer keeps the frames it has
            self._poller.poll(POLL_MS)
            gone_since = None if any(self._update_connections()) else gone_since or time.monotonic()
            if gone_since and time.monotonic() - gone_since > PEER_TIMEOUT_S:
                raise LinkError(f"no worker of {self.plan.consumer} connected at {', '.join(self.plan.endpoints)} "
                                f"for {PEER_TIMEOUT_S:.0f} s")  # fmt: skip
        return False

    def broadcast(self, frames: list) -> None:
        """Send to every worker (end-of-stream): behind a slow but connected consumer's queue for
        as long as it takes, to a missing one (a crashed worker being restarted) for ``PEER_TIMEOUT_S``."""
        for i, sock in enumerate(self.sockets):
            gone_since = None
            while True:
                try:
                    sock.send_multipart(frames, flags=zmq.NOBLOCK)
                    break
                except zmq.Again:
                    gone_since = None if self._update_connections()[i] else gone_since or time.monotonic()
                    if self.stop.is_set() or (gone_since and time.monotonic() - gone_since > PEER_TIMEOUT_S):
                        log.error("end-of-stream not delivered to %s", sock.getsockopt_string(zmq.LAST_ENDPOINT))
                        break
                    sock.poll(POLL_MS, zmq.POLLOUT)

    def wait_until_connected(self, label: str) -> None:
        """Block until every consumer worker has connected (or ``stop``), logging while it waits.

        Consumers bind only once they are ready (see ``run_worker``), so this is how readiness
        travels upstream: a source sends its first frame when the whole graph can take it.
        """
        next_log = time.monotonic() + WAIT_FIRST_LOG_S
        while not all(self._update_connections()) and not self.stop.is_set():
            zmq.select(self._monitors, [], [], POLL_MS / 1000)
            if time.monotonic() > next_log:
                next_log = time.monotonic() + WAIT_LOG_EVERY_S
                self._log_waiting(label)

    def _log_waiting(self, label: str) -> None:
        """Say which consumer is missing and the likely reason, by name."""
        consumer, plan = self.plan.consumer, self.plan
        missing = [(e, f) for e, ok, f in zip(plan.endpoints, self._connected, self._failed) if not ok]
        failed = [(e, f) for e, f in missing if f is not None]
        if failed:
            log.warning("%s: %s", label, _handshake_problem(plan, *failed[0]))
            return
        where = ", ".join(e for e, _ in missing)
        if plan.local:  # started by this run: it binds once it and its own consumers are ready
            log.info("%s: waiting for %s at %s (starting here, or waiting for its own consumers)", label, consumer, where)
        else:
            log.warning("%s: waiting for %s at %s: is a host running --stages ...,%s?", label, consumer, where, consumer)

    def wait_for_consumers(self, timeout_s: float) -> None:
        """Wait until every consumer worker that was connected has hung up.

        A consumer exits only after it has received end-of-stream, which travels behind the
        last frame, so once it hangs up nothing sent to it is still queued here. Closing
        earlier, even with ZMQ_LINGER, lost the last frames to a busy worker now and then,
        and all of a sink's backlog when it was far behind.
        """
        deadline = time.monotonic() + timeout_s
        while any(self._update_connections()) and not self.stop.is_set():
            if time.monotonic() > deadline:
                log.error(
                    "%s still connected after %.0f s: closing; frames still queued for it are lost", self.plan.consumer, timeout_s
                )
                return
            zmq.select(self._monitors, [], [], POLL_MS / 1000)

    def _update_connections(self) -> list[bool]:
        for i, monitor in enumerate(self._monitors):
            while monitor.poll(0):
                event = recv_monitor_message(monitor)["event"]
                self._connected[i] = event == zmq.EVENT_HANDSHAKE_SUCCEEDED
                if event in _HANDSHAKE_FAILED or self._connected[i]:
                    self._failed[i] = event if event in _HANDSHAKE_FAILED else None
        return self._connected

    def close(self) -> None:
        for sock, monitor in zip(self.sockets, self._monitors):
            sock.disable_monitor()
            monitor.close(linger=0)
            sock.close(linger=0)


def _handshake_problem(plan: OutputPlan, endpoint: str, event: int) -> str:
    """What a failed handshake with a consumer most likely means, and what to do."""
    curve = plan.curve
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH and curve is not None:
        return f"{plan.consumer} at {endpoint} refused this host's key: copy the current {curve.host}.key to its key directory"
    server = f"the {curve.server_host}.key here" if curve is not None else "what this host expects"
    return (
        f"the handshake with {plan.consumer} at {endpoint} failed: its host's key is not {server} (rotated?), "
        "or only one side uses keys (insecure: true on one host only?)"
    )


class PullInput:
    """A worker's bound PULL socket. On a leaky link it keeps only the newest frames.

    Args:
        ctx: the worker's ZeroMQ context.
        plan: where to bind and how.
        shared: maps images sent through shared memory (refused on links that are not shm).
        on_malformed: called with the error of every message that cannot be decoded.
        on_dropped: called with every frame dropped to keep the newest ones.
        label: the worker's name, for logs.
    """

    def __init__(
        self,
        ctx: zmq.Context,
        plan: InputPlan,
        shared: SharedFrames,
        on_malformed: Callable[[str], None],
        on_dropped: Callable[[Message], None],
        label: str = "",
    ):
        self.plan = plan
        self.sock = ctx.socket(zmq.PULL)
        self.sock.setsockopt(zmq.RCVHWM, plan.hwm)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        self.auth: ThreadAuthenticator | None = None
        try:
            if plan.curve is not None:
                self.auth = _start_authenticator(ctx, plan.curve, label or plan.bind)
                _secure_server(self.sock, plan.curve)
            self.sock.bind(plan.bind)
        except BaseException:
            self.close()  # the worker's context.term() would wait forever for these
            raise
        self.shared = shared if plan.shm else None
        self.pending: deque[Message] = deque()
        self.on_malformed, self.on_dropped = on_malformed, on_dropped

    def next(self, timeout_ms: int) -> Message | None:
        """The next message to process, or None after ``timeout_ms`` without one."""
        limit = None if self.plan.leaky else 1
        if self.plan.leaky or not self.pending:
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
                self.on_malformed(str(exc))
                continue
            if not msg.is_eos:
                msg.meta["_received"] = time.time()  # for the queue-wait figure
            self.pending.append(msg)
            if self.plan.leaky:
                self._drop_oldest()

    def _drop_oldest(self) -> None:
        frames = [m for m in self.pending if not m.is_eos]
        while len(frames) > self.plan.hwm:
            dropped = frames.pop(0)
            self.pending.remove(dropped)  # end-of-stream is never dropped
            self.on_dropped(dropped)

    def close(self) -> None:
        self.sock.close(linger=0)
        if self.auth is not None:
            self.auth.stop()
            self.auth = None


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
