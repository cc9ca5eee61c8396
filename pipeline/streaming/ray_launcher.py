"""Stage workers as Ray actors: Ray places, starts, watches and restarts them.

The data path does not change: workers exchange msgpack frames over ZeroMQ, run by the same
``run_worker`` as a process launch. Ray only decides where each worker runs and keeps it alive.
Start-up has two phases, because a worker's endpoint depends on the node Ray puts it on:

1. Place: one placement group with a bundle per worker (its ``cpus``, and the custom resources
   and node labels its ``placement`` names); once Ray has reserved every bundle, an actor per
   worker is created in its bundle and reports its node, its address, and a free port it holds.
   A bundle stays on its node, so a worker that Ray restarts comes back on the same node, at
   the same endpoint, with the same node-local state (a source's progress file).
2. Wire and start: plans are compiled with endpoints on those addresses (``ipc://`` where a
   consumer and all its producers share a node, ``tcp://NODE:PORT`` otherwise), and each actor
   runs its worker in a thread. Events come back through actor calls (``poll``) rather than a
   socket, so that a driver outside the cluster (``ray://``) gets them too.

Links between nodes are CurveZMQ (Ironhouse), as between hosts in a process launch. By default
each actor makes its own key pair in phase 1, on its node, and reports only the public key with
its site; the plans carry the public keys, and the actor puts its own secret key into its plan
at start, so that no secret key crosses the network. With a key directory (``keys: DIR``) the
driver reads the pairs it names and each worker's plan carries its host's secret key, in the
``start`` call (not the actor's constructor, whose arguments Ray keeps for restarts).
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Ray folds log lines that look alike from different actors into one ("[repeated 2x across
# cluster]"); every worker's own line matters here (which stage ended, which one failed).
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

import cv2  # noqa: E402
import msgpack  # noqa: E402
import ray  # noqa: E402
import zmq  # noqa: E402
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError  # noqa: E402
from ray.util.placement_group import placement_group, remove_placement_group  # noqa: E402
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy  # noqa: E402

from pipeline.errors import ConfigError, ExitCode, PipelineError  # noqa: E402
from pipeline.streaming.keys import WorkerKeys, worker_key_pair  # noqa: E402
from pipeline.streaming.launcher import Launcher, Worker  # noqa: E402
from pipeline.streaming.placement import (  # noqa: E402
    Site,
    check_placement,
    check_shm_links,
    resolve_endpoints,
    stage_needs,
    wanted_port,
)
from pipeline.streaming.plan import WorkerPlan, compile_plans, own_secret  # noqa: E402
from pipeline.streaming.runner import run_worker  # noqa: E402
from pipeline.streaming.shm import remove_rings  # noqa: E402
from pipeline.streaming.topology import Topology  # noqa: E402

log = logging.getLogger(__name__)

PLACE_TIMEOUT_S = 60.0  # for Ray to reserve every worker's bundle, and for the actors to come up
POLL_WAIT_S = 0.2  # how long an actor holds a poll open when it has no event
RETRY_S = 0.2  # between calls to an actor Ray is restarting
NODE_CHECK_S = 2.0  # how often the driver asks Ray which nodes are alive
# Through Ray Client, the head forks a server for each driver, and that child can die at once in
# a gRPC race (Ray issue #63202; 4 connections in 24 here, in pairs): the connection is tried again.
CLIENT_ATTEMPTS = 4
CLIENT_SERVER_DIED = ("Starting Ray client server failed", "ZombieProcess")  # dead, or dead before Ray looked
ACTOR_DIED = -1  # exit code of a worker whose actor process died (Ray restarts it, or gave up)


class StageActor:
    """One stage worker inside a Ray actor.

    ``run_worker`` runs in a thread of the actor's process, so that the actor keeps answering
    ``poll`` (the worker's events) and ``stop``. Ray restarts the process if it dies; the new
    incarnation has a new ``incarnation`` id, which is how the launcher tells a restart.

    Args:
        label: the worker's name, for Ray's log prefix.
        run_id: names the run's folder on each node.
    """

    def __init__(self, label: str, run_id: str):
        self.label = label
        self.incarnation = uuid.uuid4().hex
        self.runtime = Path(tempfile.gettempdir()) / f"emopipe-ray-{run_id}"
        self.runtime.mkdir(mode=0o700, exist_ok=True)
        # Its own CurveZMQ pair, made here and kept in the node's run folder (0700; the secret file
        # 0600) so that a restarted actor has it again; removed with the folder at the end.
        self._keys = worker_key_pair(self.runtime, label)
        self._probe: socket.socket | None = None
        self._ctx = zmq.Context()
        self._events: zmq.Socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._code: int | None = None
        # Parallelism comes from workers, as in a process launch: OpenCV's own thread pool only
        # spins against the other stages.
        cv2.setNumThreads(1)

    def __repr__(self) -> str:
        return self.label  # Ray prefixes the actor's log lines with it

    def locate(self, port: int, needs_port: bool) -> dict[str, Any]:
        """Where this actor runs, its public key, and a TCP port held for the worker's input until it binds.

        The port stays bound (not listening, ``SO_REUSEADDR``) so that no other worker on the
        node is given it; ZeroMQ's listener binds it beside this socket.
        """
        ip = ray.util.get_node_ip_address()
        if needs_port:
            self._probe = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET)
            self._probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._probe.bind((ip, port))
            port = self._probe.getsockname()[1]
        node = ray.get_runtime_context().get_node_id()
        site = {"node_id": node, "ip": ip, "port": port if needs_port else 0, "runtime": str(self.runtime)}
        return {**site, "public": self._keys[0]}

    def start(self, plan: WorkerPlan, settings: dict[str, Any]) -> dict[str, Any]:
        """Run the worker in a thread; return this process's id and incarnation."""
        if self._thread is not None and self._thread.is_alive():  # a start sent again after a lost answer
            return {"pid": os.getpid(), "incarnation": self.incarnation}
        node = ray.get_runtime_context().get_node_id()
        if node != settings.get("node_id", node):  # its node was lost and Ray re-placed its bundle
            raise RuntimeError(
                f"{self.label} was placed on node {settings['node_id'][:12]} and now runs on {node[:12]}: "
                "its endpoint and its producers' links point to the old node (a lost node is not survived)"
            )
        logging.basicConfig(level=settings.get("log_level", logging.INFO), format=settings.get("log_format"))
        if os.path.isdir(settings.get("workdir", "")):
            os.chdir(settings["workdir"])  # relative paths in the file (models/default) mean the same as for the driver
        if self._events is None:
            self._events = self._ctx.socket(zmq.PULL)
            self._events.setsockopt(zmq.LINGER, 0)
            self._events.bind(f"ipc://{self.runtime}/control-{self.incarnation}")
        self._stop, self._code = threading.Event(), None
        plan = own_secret(plan, *self._keys)
        self._thread = threading.Thread(target=self._run, args=(plan, settings), name=self.label, daemon=True)
        self._thread.start()
        return {"pid": os.getpid(), "incarnation": self.incarnation}

    def _run(self, plan: WorkerPlan, settings: dict[str, Any]) -> None:
        code = 1
        try:
            code = int(run_worker(plan, settings, self._events.getsockopt_string(zmq.LAST_ENDPOINT), self._stop))
        except BaseException:  # noqa: BLE001 - reported as a crash, like a dead process
            logging.getLogger(__name__).exception("%s crashed", self.label)
        finally:
            self._code = code

    def poll(self, wait_s: float) -> dict[str, Any]:
        """The worker's events since the last poll, waiting up to ``wait_s`` for one; its exit code once ended."""
        code = self._code  # read first: every event sent before the end is then in this answer or a later one
        events: list[dict[str, Any]] = []
        if self._events is None:
            time.sleep(wait_s)  # not started in this incarnation: nothing will come
        timeout = wait_s
        while self._events is not None and self._events.poll(int(timeout * 1000)):
            while self._events.poll(0):
                events.append(msgpack.unpackb(self._events.recv()))
            if code is None:
                break
            timeout = 0.1  # an ended worker: its last events may still be in flight
        if self._probe is not None and any(e.get("event") == "started" for e in events):
            self._probe.close()  # the worker has bound its input: the port is its own now
            self._probe = None
        return {"incarnation": self.incarnation, "events": events, "code": code}

    def stop(self) -> None:
        """Ask the worker to stop (sinks flush); ``poll`` tells when it has."""
        self._stop.set()

    def cleanup(self, pids: list[int]) -> None:
        """At the end of the run: remove the frame rings of its workers on this node (all ended by now) and its folder."""
        remove_rings(set(pids))
        shutil.rmtree(self.runtime, ignore_errors=True)


@dataclass
class _Actor:
    """The launcher's view of one worker's actor."""

    actor: Any
    label: str
    site: Site
    incarnation: str | None = None
    args: tuple | None = None  # (plan, settings) of the current start, to send again while Ray restarts it
    start_ref: Any = None
    poll_ref: Any = None
    not_before: float = 0.0  # after a failed call, when to call again
    code: int | None = None  # set once the worker ended
    reason: str = ""
    pids: set[int] = field(default_factory=set)


class RayLauncher(Launcher):
    """Runs every stage worker as a Ray actor on an existing Ray cluster.

    Args:
        topology: the validated topology.
        context: run-wide settings for stages (``out``, logging).
        address: the cluster (``auto``, ``HOST:PORT``, or ``ray://HOST:10001`` for Ray Client).
        strategy: how Ray spreads workers that no ``placement`` pins: ``SPREAD`` or ``PACK``.
        max_restarts: how many times Ray may restart one worker's actor after it died.
        on_event: called with every control event.
    """

    def __init__(
        self,
        topology: Topology,
        context: dict[str, Any],
        address: str = "auto",
        strategy: str = "SPREAD",
        max_restarts: int = 3,
        on_event: Callable[[dict[str, Any]], None] | None = None,
    ):
        super().__init__(topology, context, None, max_restarts, on_event)
        self.address, self.strategy = address, strategy
        self.run_id = uuid.uuid4().hex[:12]
        self.sites: dict[str, Site] = {}
        self._actors: dict[str, _Actor] = {}
        self._group: Any = None
        self._connected = False
        self.shipped = False  # whether the checkout went to the cluster as Ray's working_dir
        self._nodes_checked = 0.0

    # --- phase 1: connect, place, locate -----------------------------------------
    def open(self) -> None:
        """Place every worker, learn where each landed, and compile plans with their endpoints."""
        t0 = time.monotonic()
        self._connect()
        nodes = ray.nodes()
        log.info("connected to Ray at %s in %.1f s: %d nodes alive", self.address, time.monotonic() - t0,
                 sum(bool(n.get("Alive")) for n in nodes))  # fmt: skip
        check_placement(self.topology, nodes)
        t0 = time.monotonic()
        self._place()
        self._locate()
        log.info("%d workers placed and their actors up in %.1f s", len(self.plans), time.monotonic() - t0)
        endpoints = resolve_endpoints(self.topology, self.sites)
        check_shm_links(self.topology, endpoints)
        publics = {wid: site.public for wid, site in self.sites.items()}
        self.plans = compile_plans(self.topology, None, endpoints, WorkerKeys(publics))
        self._log_links()

    def _log_links(self) -> None:
        """Say how each input that crosses nodes is secured: CurveZMQ, or plain by the file's choice."""
        for plan in self.plans:
            if plan.input is None or not plan.input.bind.startswith("tcp://"):
                continue
            curve, stage = plan.input.curve, self.topology.stages[plan.stage]
            if curve is None:
                log.warning("%s: input at %s is plain tcp:// (insecure: true): frames cross the network unencrypted",
                            plan.label, plan.input.bind)  # fmt: skip
                continue
            keys = stage.keys or self.topology.config.keys
            source = f"from {keys}" if keys else "each worker's own, made on its node"
            accepted = ", ".join(sorted(set(curve.clients.values())))
            log.info("%s: input at %s is CurveZMQ, accepting the keys of %s (%s)", plan.label, plan.input.bind, accepted, source)

    def _connect(self) -> None:
        # ray.init installs its own SIGTERM handler; the CLI's (stop cleanly, sinks flush) must stay.
        main = threading.current_thread() is threading.main_thread()
        handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
        runtime_env = self._ship()
        try:
            for attempt in range(1, CLIENT_ATTEMPTS + 1):
                try:
                    ray.init(address=self.address, runtime_env=copy.deepcopy(runtime_env),  # Ray rewrites it
                             log_to_driver=True, logging_level=logging.WARNING)  # fmt: skip
                    break
                except ConnectionError as exc:
                    if not any(sign in str(exc) for sign in CLIENT_SERVER_DIED):
                        raise PipelineError(f"--address {self.address}: no Ray cluster there ({exc})") from None
                    if attempt == CLIENT_ATTEMPTS:
                        last = str(exc).strip().splitlines()[-1]
                        raise PipelineError(
                            f"--address {self.address}: the cluster's Ray Client server failed to start a server "
                            f"for this driver {CLIENT_ATTEMPTS} times, the last: {last} (Ray issue #63202; start "
                            "the head node with GRPC_ENABLE_FORK_SUPPORT=0 in its environment)"
                        ) from None
                    log.warning("--address %s: the cluster's Ray Client server failed to start a server for this "
                                "driver (Ray issue #63202); trying again (%d of %d)",
                                self.address, attempt + 1, CLIENT_ATTEMPTS)  # fmt: skip
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        self._connected = True

    def _ship(self) -> dict[str, Any] | None:
        """What the workers need of this checkout, when the driver's files are not on the cluster.

        A driver on a node of the cluster (``auto``, ``HOST:PORT``) has Ray put its folder on
        the workers' import path, and workers on the same machine or a shared file system find
        it. Through Ray Client (``ray://``) the driver is elsewhere: the checkout (code, configs,
        models) goes to the cluster as Ray's ``working_dir``, cached there by its content.
        """
        if not self.address.startswith("ray://") or not (Path.cwd() / "pipeline" / "streaming").is_dir():
            return None
        self.shipped = True
        log.info("Ray Client: sending this checkout (%s) to the cluster as Ray's working_dir", Path.cwd())
        return {"working_dir": str(Path.cwd()), "excludes": [".git", ".venv", "tests", "docs", "*.keras", "out", "runs"]}

    def _place(self) -> None:
        """Reserve a bundle per worker in one placement group, then create each worker's actor in it.

        One group for the whole pipeline: it is placed all at once or not at all (a pipeline
        missing a stage cannot run), and removing it at the end frees everything.
        """
        needs = [stage_needs(self.topology.stages[p.stage]) for p in self.plans]
        self._group = placement_group(
            [resources for resources, _ in needs],
            strategy=self.strategy,
            bundle_label_selector=[labels for _, labels in needs],
            name=f"emopipe-{self.topology.name}-{self.run_id}",
        )
        try:
            ray.get(self._group.ready(), timeout=PLACE_TIMEOUT_S)
        except GetTimeoutError:
            wanted = ", ".join(f"{p.label} {r}" for p, (r, _) in zip(self.plans, needs))
            raise ConfigError(
                f"Ray could not place every worker at once in {PLACE_TIMEOUT_S:.0f} s: the cluster lacks room "
                f"for {wanted} (free: {ray.available_resources()})"
            ) from None
        actor_cls = ray.remote(StageActor)
        for index, (plan, (resources, _)) in enumerate(zip(self.plans, needs)):
            custom = {k: v for k, v in resources.items() if k != "CPU"}
            actor = actor_cls.options(
                num_cpus=resources["CPU"],
                resources=custom,
                max_restarts=self.max_restarts,
                max_task_retries=0,  # a call in flight when the actor died fails; the launcher decides
                scheduling_strategy=PlacementGroupSchedulingStrategy(self._group, placement_group_bundle_index=index),
            ).remote(plan.label, self.run_id)
            self._actors[plan.id] = _Actor(actor, plan.label, Site("", "", 0, ""))

    def _locate(self) -> None:
        """Ask every actor where it runs (and for a port), and log it: the log says which node ran what."""
        refs = {
            plan.id: self._actors[plan.id].actor.locate.remote(
                wanted_port(self.topology.stages[plan.stage], plan.worker), not plan.stage_cls.is_source
            )
            for plan in self.plans
        }
        for plan in self.plans:
            try:
                site = Site(**ray.get(refs[plan.id], timeout=PLACE_TIMEOUT_S))
            except (RayActorError, GetTimeoutError) as exc:
                raise PipelineError(f"{plan.label}: its Ray actor did not start: {exc}") from None
            except ray.exceptions.RayTaskError as exc:  # the port the file names is taken on that node
                raise ConfigError(f"{self.topology.where(plan.stage)}.endpoint: {exc.cause}") from None
            self.sites[plan.id] = self._actors[plan.id].site = site
            log.info("%s placed on node %s (Ray node %s)", plan.label, site.ip, site.node_id[:12])

    # --- how a worker starts and stops -------------------------------------------
    def settings(self, worker: Worker) -> dict[str, Any]:
        """Node-local state (a source's progress file) lives on the worker's node, where Ray restarts it."""
        site = self._actors[worker.plan.id].site
        workdir = {} if self.shipped else {"workdir": os.getcwd()}  # shipped: Ray runs workers in their copy
        return {**super().settings(worker), "state_dir": site.runtime, "node_id": site.node_id, **workdir}

    def start_worker(self, worker: Worker) -> None:
        state = self._actors[worker.plan.id]
        state.code, state.reason, state.args = None, "", (worker.plan, self.settings(worker))
        state.start_ref, state.poll_ref, state.incarnation = state.actor.start.remote(*state.args), None, None
        worker.handle = state

    def exit_code(self, worker: Worker) -> int | None:
        return worker.handle.code

    def exit_reason(self, worker: Worker, code: int) -> str:
        return worker.handle.reason if code == ACTOR_DIED else f"exit {code}"

    def terminate(self, worker: Worker) -> None:
        worker.handle.actor.stop.remote()  # no wait: a dead actor's answer does not matter

    def kill(self, worker: Worker) -> None:
        ray.kill(worker.handle.actor, no_restart=True)
        worker.handle.code, worker.handle.reason = -signal.SIGKILL, "killed"

    # --- events: actor calls instead of a control socket ----------------------------
    def receive(self, timeout_ms: int) -> list[dict[str, Any]]:
        """Poll every running actor (one call in flight each); return the events of those that answered."""
        now = time.monotonic()
        for state in self._actors.values():
            busy = state.start_ref is not None or state.poll_ref is not None
            if state.args is None or state.code is not None or busy or now < state.not_before:
                continue
            if state.incarnation is None:  # the start call failed while Ray restarted the actor: again
                state.start_ref = state.actor.start.remote(*state.args)
            else:
                state.poll_ref = state.actor.poll.remote(POLL_WAIT_S)
        # By id: Ray Client hands back other objects for the same references.
        pending = {ref.hex(): (ref, s) for s in self._actors.values() for ref in (s.start_ref, s.poll_ref) if ref is not None}
        if not pending:
            time.sleep(timeout_ms / 1000)
            return []
        refs = [ref for ref, _ in pending.values()]
        ready, _ = ray.wait(refs, num_returns=1, timeout=timeout_ms / 1000)
        if ready:  # and whatever else has come meanwhile
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        events: list[dict[str, Any]] = self._lost_nodes()
        for ref in ready:
            state = pending[ref.hex()][1]
            started = state.start_ref is not None and ref.hex() == state.start_ref.hex()
            events += self._started(state, ref) if started else self._polled(state, ref)
        return events

    def _lost_nodes(self) -> list[dict[str, Any]]:
        """A fatal event for the workers of a node Ray has marked dead (checked every few seconds).

        Their links point at that node: Ray could re-place them elsewhere, but the plans of their
        producers would still name the old addresses. Stopping now says why, instead of the
        producers' "no worker connected for 60 s" a minute later.
        """
        if time.monotonic() < self._nodes_checked + NODE_CHECK_S:
            return []
        self._nodes_checked = time.monotonic()
        dead = {n["NodeID"]: n.get("NodeManagerAddress") for n in ray.nodes() if not n.get("Alive")}
        return [
            _fatal(state, f"its node {dead[state.site.node_id]} was lost (a lost node is not survived)")
            for state in self._actors.values()
            if state.site.node_id in dead and state.args is not None and state.code is None
        ]

    def _started(self, state: _Actor, ref: Any) -> list[dict[str, Any]]:
        state.start_ref = None
        try:
            state.incarnation = ray.get(ref)["incarnation"]
        except ActorUnavailableError:  # Ray is restarting it: call again shortly
            state.not_before = time.monotonic() + RETRY_S
        except RayActorError as exc:
            self._died(state, f"its actor is gone: {_first_line(exc)}")
        except ray.exceptions.RayTaskError as exc:  # starting again would fail the same way: stop the run
            return [_fatal(state, f"could not start: {exc.cause}")]
        return []

    def _polled(self, state: _Actor, ref: Any) -> list[dict[str, Any]]:
        state.poll_ref = None
        try:
            answer = ray.get(ref)
        except ActorUnavailableError:  # died and being restarted, or a network hiccup: the next answer tells
            state.not_before = time.monotonic() + RETRY_S
            return []
        except RayActorError as exc:
            self._died(state, f"its actor died and Ray will not restart it: {_first_line(exc)}")
            return []
        except ray.exceptions.RayTaskError as exc:  # poll itself failed: nothing more will come from it
            log.error("%s: lost contact: %s", state.label, exc.cause)
            state.code, state.reason = ExitCode.FAILED, f"lost contact: {exc.cause}"
            return []
        if answer["incarnation"] != state.incarnation:
            self._died(state, "its actor's process died; Ray restarted the actor")
            return []
        for event in answer["events"]:
            if event.get("event") == "started":
                state.pids.add(event["pid"])
                log.info("%s: running in process %d on node %s", state.label, event["pid"], state.site.ip)
        state.code = answer["code"]
        return answer["events"]

    def _died(self, state: _Actor, reason: str) -> None:
        state.code, state.reason, state.incarnation = ACTOR_DIED, reason, None

    # --- the end ---------------------------------------------------------------------
    def close(self) -> None:
        """Clean each node's run folder and leftover frame rings; remove the actors and their placement group."""
        try:
            self._clean_nodes()
        finally:
            for state in self._actors.values():
                _quietly(ray.kill, state.actor, no_restart=True)
            if self._group is not None:
                _quietly(remove_placement_group, self._group)
            if self._connected:
                ray.shutdown()
                self._connected = False

    def _clean_nodes(self) -> None:
        by_node: dict[str, list[_Actor]] = {}
        for state in self._actors.values():
            if state.site.node_id:
                by_node.setdefault(state.site.node_id, []).append(state)
        for states in by_node.values():
            pids = sorted(set().union(*(s.pids for s in states)))
            for state in states:  # any live actor of the node will do
                try:
                    ray.get(state.actor.cleanup.remote(pids), timeout=10)
                    break
                except (RayActorError, GetTimeoutError, ray.exceptions.RayTaskError):
                    continue


def _fatal(state: _Actor, error: str) -> dict[str, Any]:
    """End a worker for good: the event that makes the launcher stop the run with ``error``."""
    plan = state.args[0]
    state.code, state.reason = ExitCode.FAILED, error
    return {"event": "fatal", "stage": plan.stage, "worker": plan.worker, "code": ExitCode.FAILED, "error": error}


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _quietly(fn: Any, *args: Any, **kwargs: Any) -> None:
    """Teardown goes on whatever one step says (an actor already gone, a group already removed)."""
    try:
        fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001
        log.debug("teardown: %s: %s", getattr(fn, "__name__", fn), exc)
