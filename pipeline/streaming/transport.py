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
carry no keys, also to the workers of a secured stage that run on the producer's machine (Ray
places workers of one stage on several nodes); the launcher's control socket is ipc:// too.
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
STALL_LOG_S = 10.0  # a link to another host that is connected but carries no frame this long is told about
CONNECT_TIMEOUT_MS = 2000  # a tcp:// connection attempt that gets no answer is given up and retried after this
LEAKY_DEAD_S = 5  # a leaky tcp:// link whose peer answers nothing for this long is closed (and reconnected)
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


def _secure_client(sock: zmq.Socket, curve: CurveClient, worker: int) -> None:
    """Make ``sock`` a CurveZMQ client that talks only to the holder of consumer ``worker``'s secret key."""
    sock.curve_secretkey = curve.secret
    sock.curve_publickey = curve.public
    sock.curve_serverkey = curve.server_key(worker)


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


def _tune_tcp(sock: zmq.Socket, endpoint: str, leaky: bool) -> None:
    """Socket options for a link between machines: how soon a lost host or link is noticed.

    A connection attempt to a host that is off, or behind a link that is down, gets no answer;
    the OS would resend its SYN for two minutes with gaps growing to 32 s, so a host back up could
    wait that long for us: ``CONNECT_TIMEOUT_MS`` gives up sooner and ZeroMQ tries again.

    A leaky link also notices a dead peer within ``LEAKY_DEAD_S``: keepalive probes on the side
    that only receives (the consumer), a bound on unacknowledged data on the side that sends
    (``TCP_MAXRT``, which is ``TCP_USER_TIMEOUT`` on Linux). The connection is then closed, both
    sides log it, and ZeroMQ reconnects when the link is back; the frames in flight are lost, as
    a leaky link allows. A block link keeps TCP's own patience (retransmissions for ~15 min): a
    link that comes back then delivers everything, and a slow consumer (its window closed for
    long) is never cut off.
    """
    if not endpoint.startswith("tcp://"):
        return
    sock.setsockopt(zmq.CONNECT_TIMEOUT, CONNECT_TIMEOUT_MS)
    if leaky:
        sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
        sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, 2)  # seconds of silence before the first probe
        sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, 1)
        sock.setsockopt(zmq.TCP_KEEPALIVE_CNT, LEAKY_DEAD_S - 2)
        sock.setsockopt(zmq.TCP_MAXRT, LEAKY_DEAD_S * 1000)


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
    """One link to a consumer stage: a PUSH socket per consumer worker, and its send policy.

    Args:
        ctx: the worker's ZeroMQ context.
        plan: the link.
        stop: set when the worker must stop (a waiting send gives up).
        label: the worker's name, for logs.
    """

    def __init__(self, ctx: zmq.Context, plan: OutputPlan, stop: threading.Event, label: str = ""):
        self.plan, self.stop, self.label = plan, stop, label
        self.sockets: list[zmq.Socket] = []
        # Connection events tell when consumer workers are ready (they bind only then) and when
        # they hang up. The monitor is attached before connecting, so no event is missed.
        self._monitors: list[zmq.Socket] = []
        for i, endpoint in enumerate(plan.endpoints):
            sock = ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.SNDHWM, plan.hwm)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.IMMEDIATE, 1)  # queue only to workers that are connected
            _tune_tcp(sock, endpoint, plan.policy == "drop-oldest")
            if plan.curve is not None and endpoint.startswith("tcp://"):
                _secure_client(sock, plan.curve, i)
            self._monitors.append(sock.get_monitor_socket(_LINK_EVENTS))
            sock.connect(endpoint)
            self.sockets.append(sock)
        self._next = 0
        self._poller = zmq.Poller()
        for sock in self.sockets:
            self._poller.register(sock, zmq.POLLOUT)
        n = len(self.sockets)
        self._connected = [False] * n
        self._failed: list[int | None] = [None] * n  # the last handshake failure per socket
        self._lost: list[tuple[float, int] | None] = [None] * n  # (when, self.dropped then) for a worker that hung up
        self.dropped = 0  # frames this link dropped (drop-oldest)
        self._ending = False  # after end-of-stream, consumers hang up on purpose
        self._watched = 0.0  # when connection events were last read

    def send(self, frames: list) -> bool:
        """Send to the next worker with room. Returns False if the frame was dropped.

        ``block``: a full queue of a connected consumer is waited for as long as it takes (told
        after ``STALL_LOG_S``), but no consumer worker connected for ``PEER_TIMEOUT_S`` raises
        ``LinkError``. ``drop-oldest`` never waits: with every queue full, or no consumer worker
        connected at all (its host gone), the frame is dropped and counted, however long that lasts.
        """
        self._watch()
        n = len(self.sockets)
        gone_since, waiting_since, stalled = None, time.monotonic(), False
        while not self.stop.is_set():
            for k in range(n):
                i = (self._next + k) % n
                try:
                    self.sockets[i].send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    continue
                self._next = (i + 1) % n
                if stalled:
                    log.info("%s: %s takes frames again after %.1f s", self.label, self.plan.consumer, self._since(waiting_since))
                return True
            if self.plan.policy == "drop-oldest":
                return self.drop()  # every queue is full: the consumer keeps the frames it has
            self._poller.poll(POLL_MS)
            gone_since = None if any(self._update_connections()) else gone_since or time.monotonic()
            if gone_since:  # told by _update_connections; a wait for a connected consumer starts again
                waiting_since = time.monotonic()
                if self._since(gone_since) > PEER_TIMEOUT_S:
                    raise LinkError(f"no worker of {self.plan.consumer} connected at {', '.join(self.plan.endpoints)} "
                                    f"for {PEER_TIMEOUT_S:.0f} s")  # fmt: skip
            elif not stalled and not self.plan.local and self._since(waiting_since) > STALL_LOG_S:
                stalled = True
                log.warning("%s: %s at %s has taken no frame for %.0f s though connected (busy, or the link is down); "
                            "waiting", self.label, self.plan.consumer, ", ".join(self.plan.endpoints), STALL_LOG_S)  # fmt: skip
        return False

    def unreachable(self) -> bool:
        """True on a drop-oldest link with no consumer worker connected: a frame would only be dropped.

        Lets the caller skip encoding frames that nobody will take (a camera host during an outage).
        """
        if self.plan.policy != "drop-oldest":
            return False
        self._watch()
        return not any(self._connected)

    def drop(self) -> bool:
        """Count a frame dropped on this link; returns False (not sent)."""
        self.dropped += 1
        return False

    @staticmethod
    def _since(t: float) -> float:
        return time.monotonic() - t

    def broadcast(self, frames: list) -> None:
        """Send to every worker (end-of-stream): behind a slow but connected consumer's queue for
        as long as it takes, to a missing one (a crashed worker being restarted) for ``PEER_TIMEOUT_S``."""
        self._ending = True
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

    def wait_until_connected(self, label: str | None = None) -> None:
        """Block until every consumer worker has connected (or ``stop``), logging while it waits.

        Consumers bind only once they are ready (see ``run_worker``), so this is how readiness
        travels upstream: a source sends its first frame when the whole graph can take it.
        """
        label = label or self.label
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

    def _watch(self) -> None:
        """Read connection events every ``POLL_MS`` or so: a drop-oldest send never waits for them."""
        if self._since(self._watched) >= POLL_MS / 1000:
            self._watched = time.monotonic()
            self._update_connections()

    def _update_connections(self) -> list[bool]:
        for i, monitor in enumerate(self._monitors):
            while monitor.poll(0):
                event = recv_monitor_message(monitor)["event"]
                was = self._connected[i]
                self._connected[i] = event == zmq.EVENT_HANDSHAKE_SUCCEEDED
                if event in _HANDSHAKE_FAILED or self._connected[i]:
                    self._failed[i] = event if event in _HANDSHAKE_FAILED else None
                if was != self._connected[i]:
                    self._tell(i)
        return self._connected

    def _tell(self, i: int) -> None:
        """Log a consumer worker on another host that hung up mid-stream, and its return.

        After end-of-stream, or once this worker is stopping (Ctrl-C, SIGTERM stop the consumers
        too), a consumer hanging up is expected and not told.
        """
        if self.plan.local:  # started by this run: its launcher tells its crashes and restarts
            return
        where = f"{self.plan.consumer} at {self.plan.endpoints[i]}"
        if not self._connected[i] and not self._ending and not self.stop.is_set():
            self._lost[i] = (time.monotonic(), self.dropped)
            if self.plan.policy == "drop-oldest":
                meanwhile = "dropping its frames until it is back"
            else:
                meanwhile = f"holding frames for up to {PEER_TIMEOUT_S:.0f} s until it is back"
            log.warning("%s: lost %s (the worker, its host or the link is gone); %s", self.label, where, meanwhile)
        elif self._connected[i] and self._lost[i] is not None:
            lost_at, dropped = self._lost[i]
            self._lost[i] = None
            log.info("%s: %s is back after %.1f s; %d frames dropped on this link meanwhile", self.label, where,
                     self._since(lost_at), self.dropped - dropped)  # fmt: skip

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


class _Peers:
    """The producers of an input fed from another run (host), as its monitor tells: one lost, one back.

    Inputs fed by this run have none: the launcher tells their producers' crashes, and a stage
    stalled by the link upstream of it would only echo what that link's own consumer says.
    A connection refused at the handshake (an unknown key, a port scan) is no peer: it ends with
    one HANDSHAKE_FAILED event and one DISCONNECTED, which are paired off and not logged. A
    block link whose network is down stays connected (TCP waits for it); that shows as connected
    producers sending nothing for ``STALL_LOG_S``, which is told too.
    """

    def __init__(self, sock: zmq.Socket, plan: InputPlan, label: str):
        self.monitor = sock.get_monitor_socket(_LINK_EVENTS)  # before bind: no event is missed
        self.label, self.where = label or plan.bind, plan.bind
        self.producers = ", ".join(plan.producers) or "a producer"
        self.connected = 0
        self._refused = 0  # failed handshakes whose DISCONNECTED is still to come
        self._lost_at: float | None = None
        self._watched = 0.0
        self._heard: float | None = None  # when the last message came (None: none yet)
        self._silent = False  # a silence was told

    def watch(self) -> None:
        """Read the connection events every ``POLL_MS`` or so and log what changed."""
        if time.monotonic() - self._watched < POLL_MS / 1000:
            return
        self._watched = time.monotonic()
        while self.monitor.poll(0):
            event = recv_monitor_message(self.monitor)["event"]
            if event in _HANDSHAKE_FAILED:
                self._refused += 1
            elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.connected += 1
                self._heard = self._heard and time.monotonic()  # a silence counts from the reconnection
                if self._lost_at is not None:
                    log.info("%s: %s connected again at %s after %.1f s", self.label, self.producers, self.where,
                             time.monotonic() - self._lost_at)  # fmt: skip
                    self._lost_at = None
            elif self._refused:
                self._refused -= 1
            else:
                self.connected = max(0, self.connected - 1)
                self._lost_at = self._lost_at or time.monotonic()
                log.warning("%s: lost the connection from %s at %s (its host stopped, or the link broke); "
                            "%d still connected", self.label, self.producers, self.where, self.connected)  # fmt: skip

    def heard(self, got: bool) -> None:
        """Note whether a message came; tell a silence of connected producers, and its end."""
        now = time.monotonic()
        if got:
            if self._silent:
                log.info("%s: frames from %s again after %.1f s", self.label, self.producers, now - self._heard)
            self._heard, self._silent = now, False
        elif self._heard is not None and not self._silent and self.connected and now - self._heard > STALL_LOG_S:
            self._silent = True
            log.warning("%s: nothing from %s for %.0f s though connected (slow or stopped upstream, or the link is "
                        "down)", self.label, self.producers, STALL_LOG_S)  # fmt: skip

    def close(self) -> None:
        self.monitor.close(linger=0)


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
        _tune_tcp(self.sock, plan.bind, plan.leaky)
        self.peers = _Peers(self.sock, plan, label) if plan.remote else None
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
        if self.peers is not None:
            self.peers.watch()
        limit = None if self.plan.leaky else 1
        if self.plan.leaky or not self.pending:
            self._drain(limit)  # what has arrived already: a busy stage skips the poll
        if not self.pending and self.sock.poll(timeout_ms):
            self._drain(limit)
        msg = self.pending.popleft() if self.pending else None
        if self.peers is not None:
            self.peers.heard(msg is not None)
        return msg

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
        if self.peers is not None:
            self.sock.disable_monitor()
            self.peers.close()
            self.peers = None
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
