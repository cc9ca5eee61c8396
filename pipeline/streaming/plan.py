"""The wiring of one worker, compiled once from the validated topology.

A worker reads this one object instead of asking the topology piece by piece (like GStreamer
agreeing on formats once per link, or MediaPipe's ``CalculatorGraph::Initialize``): where it
binds, where each output goes and in which form, how many end-of-stream markers to expect,
whether to reorder. It is small and picklable, so it is what a launcher hands a worker.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError
from pipeline.streaming.keys import CurveClient, CurveServer, KeyDirectory, KeySource
from pipeline.streaming.stage import IMAGE, Params, Stage
from pipeline.streaming.topology import InputConfig, Topology, worker_id

REORDER_CAPACITY = 128
REORDER_WAIT_S = 10.0  # lossless links lose a frame only with a crashed worker: worth waiting for
REORDER_WAIT_LEAKY_S = 0.25  # leaky links drop frames on purpose: skip gaps quickly

# Stage name -> one endpoint per worker, found at start instead of read from the file (the Ray
# launcher learns each worker's node only once Ray has placed it). A worker binds its own.
Endpoints = Mapping[str, Sequence[str]]
Curve = CurveServer | CurveClient


@dataclass(frozen=True)
class OutputPlan:
    """One link to a consumer stage (a socket per consumer worker).

    Attributes:
        consumer: the consumer stage's name.
        endpoints: one per consumer worker.
        policy: ``block`` or ``drop-oldest``.
        hwm: queue bound in messages.
        codec: how the image travels: ``shm``, ``raw`` or ``jpeg``.
        image: whether the consumer or a stage after it uses the pixels (else none are sent).
        local: whether this run starts the consumer too (else another host must: ``--stages``).
        curve: this host's keys and the consumer's public key, on a secured tcp:// link.
    """

    consumer: str
    endpoints: tuple[str, ...]
    policy: str
    hwm: int
    codec: str
    image: bool
    local: bool = True
    curve: CurveClient | None = None


@dataclass(frozen=True)
class InputPlan:
    """The worker's bound input.

    Attributes:
        bind: the endpoint this worker binds.
        hwm: queue bound in messages (the largest of its links).
        leaky: some link into it drops the oldest frames (keep only the newest ``hwm``).
        shm: some link into it carries images in shared memory.
        reorder_wait_s: with a reorder buffer, how long a gap is waited for; None: no buffer.
        curve: this host's keys and the client keys it accepts, on a secured tcp:// endpoint.
        producers: the stages that feed it, for logs.
        remote: some of them run in another run (``--stages``, most likely on another host):
            their connections coming and going are logged.
    """

    bind: str
    hwm: int
    leaky: bool
    shm: bool
    reorder_wait_s: float | None
    curve: CurveServer | None = None
    producers: tuple[str, ...] = ()
    remote: bool = False


@dataclass(frozen=True)
class WorkerPlan:
    """Everything a worker needs to know about its place in the graph."""

    pipeline: str
    stage: str
    worker: int
    workers: int
    stage_cls: type[Stage]
    params: Params
    input: InputPlan | None
    outputs: tuple[OutputPlan, ...]
    stream: str | None  # sources: the stream id stamped on every frame
    producers: Mapping[str, frozenset[str]]  # stream -> ids of the upstream workers whose end-of-stream ends it
    needs_image: bool  # this stage reads the pixels of every frame
    run: Mapping[str, Any] = field(default_factory=dict)  # run metadata fixed upstream and here
    nice: int = 0  # added to the worker process's niceness

    @property
    def label(self) -> str:
        return f"{self.stage}[{self.worker}]" if self.workers > 1 else self.stage

    @property
    def id(self) -> str:
        """What this worker signs its end-of-stream markers with."""
        return worker_id(self.stage, self.worker)


def compile_plan(
    topology: Topology,
    name: str,
    worker: int,
    local: frozenset[str] | None = None,
    endpoints: Endpoints | None = None,
    worker_keys: KeySource | None = None,
) -> WorkerPlan:
    """The plan of worker ``worker`` of stage ``name``.

    Args:
        topology: the validated topology.
        name: the stage.
        worker: which of its workers.
        local: the stages this run starts (None: all); the others run on other hosts.
        endpoints: endpoints resolved at start (the Ray launcher), replacing those of the file.
        worker_keys: the workers' own keys, for resolved tcp:// links when the file names no key directory.

    Raises:
        ConfigError: a key file this worker needs is missing or unsafe (named with its place).
    """
    cls, config, endpoints = topology.classes[name], topology.stages[name], endpoints or {}
    return WorkerPlan(
        pipeline=topology.name,
        stage=name,
        worker=worker,
        workers=config.workers,
        stage_cls=cls,
        params=topology.params[name],
        input=None if cls.is_source else _input_plan(topology, name, worker, endpoints, local, worker_keys),
        outputs=tuple(
            OutputPlan(
                consumer=consumer.name,
                endpoints=tuple(endpoints.get(consumer.name) or topology.endpoints(consumer.name)),
                policy=link.policy,
                hwm=link.hwm,
                codec=_codec(topology, consumer.name, link, endpoints),
                image=topology.needs_image[consumer.name],
                local=local is None or consumer.name in local,
                curve=_client_keys(
                    topology, name, worker, consumer.name, _link_keys(topology, consumer.name, endpoints, worker_keys)
                ),
            )
            for consumer, link in topology.consumers(name)
        ),
        stream=topology.stream_id(name) if cls.is_source else None,
        producers={s: frozenset(topology.producers(name, s)) for s in sorted(topology.streams[name])}
        if not cls.is_source
        else {},
        needs_image=IMAGE in topology.contracts[name].requires,
        run=dict(topology.metadata[name]),
        nice=topology.config.nice if config.nice is None else config.nice,
    )


def _codec(topology: Topology, consumer: str, link: InputConfig, endpoints: Endpoints) -> str:
    """How images travel on ``link``; ``auto`` over resolved endpoints: shm only if every one is ipc://."""
    if consumer not in endpoints or link.codec != "auto":
        return topology.codec(consumer, link)
    return "shm" if all(e.startswith("ipc://") for e in endpoints[consumer]) else "raw"


def _input_plan(
    topology: Topology, name: str, worker: int, endpoints: Endpoints, local: frozenset[str] | None, worker_keys: KeySource | None
) -> InputPlan:
    links = topology.stages[name].inputs
    leaky = any(link.policy == "drop-oldest" for link in links)
    reorder = topology.classes[name].ordered_input and topology.out_of_order[name]
    bind = endpoints[name][worker] if name in endpoints else topology.bind_endpoints(name)[worker]
    tcp = bind.startswith("tcp://")  # a worker of a stage fed across nodes may be fed on its own: ipc:// has no keys
    return InputPlan(
        bind=bind,
        hwm=max(link.hwm for link in links),
        leaky=leaky,
        shm=any(_codec(topology, name, link, endpoints) == "shm" for link in links),
        reorder_wait_s=(REORDER_WAIT_LEAKY_S if leaky else REORDER_WAIT_S) if reorder else None,
        curve=_server_keys(topology, name, worker, _link_keys(topology, name, endpoints, worker_keys)) if tcp else None,
        producers=tuple(link.source for link in links),
        # Producers on another host: started elsewhere with --stages, or placed on another Ray node.
        remote=(local is not None and any(link.source not in local for link in links)) or (name in endpoints and tcp),
    )


def _link_keys(topology: Topology, consumer: str, endpoints: Endpoints, worker_keys: KeySource | None) -> KeySource | None:
    """Where the keys of the links into ``consumer`` come from; None: they are plain (ipc://, ``insecure: true``).

    Endpoints from the file are secured as the file says (``keys``). Endpoints resolved at start
    (Ray) are secured whenever one of them is tcp://: with the file's key directory if it names
    one, else with the workers' own keys.
    """
    if consumer not in endpoints:
        keys = topology.link_keys(consumer)
        return None if keys is None else KeyDirectory(keys)
    stage = topology.stages[consumer]
    if stage.insecure or not any(e.startswith("tcp://") for e in endpoints[consumer]):
        return None
    keys = stage.keys or topology.config.keys
    return KeyDirectory(Path(keys)) if keys else worker_keys


def _owner(topology: Topology, keys: KeySource, name: str, worker: int) -> str:
    """The name of the key pair worker ``worker`` of stage ``name`` uses."""
    return keys.owner(topology.stages[name], worker, topology.where(name))


def _owners(topology: Topology, keys: KeySource, name: str) -> list[str]:
    """The names of the key pairs of every worker of stage ``name``."""
    return [_owner(topology, keys, name, i) for i in range(topology.stages[name].workers)]


def _server_keys(topology: Topology, name: str, worker: int, keys: KeySource | None) -> CurveServer | None:
    """A binding worker's key pair and the public keys of its producers' pairs (Ironhouse)."""
    if keys is None:
        return None
    own = _owner(topology, keys, name, worker)
    clients = {owner for link in topology.stages[name].inputs for owner in _owners(topology, keys, link.source)}
    with _placed(topology, name):
        public, secret = keys.pair(own)
        accepted = {keys.public(client): client for client in sorted(clients)}
    return CurveServer(public, secret, accepted)


def _client_keys(topology: Topology, name: str, worker: int, consumer: str, keys: KeySource | None) -> CurveClient | None:
    """A producer worker's key pair and the public key each consumer worker must prove it holds."""
    if keys is None:
        return None
    own, servers = _owner(topology, keys, name, worker), _owners(topology, keys, consumer)
    with _placed(topology, name):
        public, secret = keys.pair(own)
        server_keys = tuple(keys.public(server) for server in servers)
    server_host = servers[0] if len(set(servers)) == 1 else consumer
    return CurveClient(public, secret, server_keys[0], own, server_host, server_keys if len(set(server_keys)) > 1 else ())


def own_secret(plan: WorkerPlan, public: bytes, secret: bytes) -> WorkerPlan:
    """The plan with the worker's own secret key where it was left out (``WorkerKeys``: made on its node).

    Raises:
        ValueError: the plan names another public key for this worker (its key pair was lost).
    """
    fill = partial(_fill_secret, public=public, secret=secret, label=plan.label)
    inputs = replace(plan.input, curve=fill(plan.input.curve)) if plan.input is not None else None
    return replace(plan, input=inputs, outputs=tuple(replace(o, curve=fill(o.curve)) for o in plan.outputs))


def _fill_secret(curve: Curve | None, public: bytes, secret: bytes, label: str) -> Curve | None:
    if curve is None or curve.secret:
        return curve
    if curve.public != public:
        raise ValueError(f"{label}: its plan names another public key than the worker's own (was its key pair lost?)")
    return replace(curve, secret=secret)


@contextmanager
def _placed(topology: Topology, name: str) -> Iterator[None]:
    """Prefix a key file's error with the stage that needs it (the file names the rest)."""
    try:
        yield
    except ConfigError as exc:
        raise ConfigError(f"{topology.where(name)}: {exc}") from None


def compile_plans(
    topology: Topology, only: list[str] | None = None, endpoints: Endpoints | None = None, worker_keys: KeySource | None = None
) -> list[WorkerPlan]:
    """Plans of every worker of the stages in ``only`` (default: all), consumers first.

    Consumers start first so that their endpoints are bound when producers start sending.
    ``endpoints`` replace those of the file for the stages it names (see ``Endpoints``); the
    tcp:// ones among them are secured with ``worker_keys`` where the file names no key directory.
    """
    local = None if only is None else frozenset(only)
    return [
        compile_plan(topology, name, i, local, endpoints, worker_keys)
        for name in reversed(topology.order)
        if only is None or name in only
        for i in range(topology.stages[name].workers)
    ]
