"""The wiring of one worker, compiled once from the validated topology.

A worker reads this one object instead of asking the topology piece by piece (like GStreamer
agreeing on formats once per link, or MediaPipe's ``CalculatorGraph::Initialize``): where it
binds, where each output goes and in which form, how many end-of-stream markers to expect,
whether to reorder. It is small and picklable, so it is what a launcher hands a worker.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.streaming.stage import IMAGE, Params, Stage
from pipeline.streaming.topology import InputConfig, Topology, worker_id

REORDER_CAPACITY = 128
REORDER_WAIT_S = 10.0  # lossless links lose a frame only with a crashed worker: worth waiting for
REORDER_WAIT_LEAKY_S = 0.25  # leaky links drop frames on purpose: skip gaps quickly

# Stage name -> one endpoint per worker, found at start instead of read from the file (the Ray
# launcher learns each worker's node only once Ray has placed it). A worker binds its own.
Endpoints = Mapping[str, Sequence[str]]


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
    """

    consumer: str
    endpoints: tuple[str, ...]
    policy: str
    hwm: int
    codec: str
    image: bool


@dataclass(frozen=True)
class InputPlan:
    """The worker's bound input.

    Attributes:
        bind: the endpoint this worker binds.
        hwm: queue bound in messages (the largest of its links).
        leaky: some link into it drops the oldest frames (keep only the newest ``hwm``).
        shm: some link into it carries images in shared memory.
        reorder_wait_s: with a reorder buffer, how long a gap is waited for; None: no buffer.
    """

    bind: str
    hwm: int
    leaky: bool
    shm: bool
    reorder_wait_s: float | None


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

    @property
    def label(self) -> str:
        return f"{self.stage}[{self.worker}]" if self.workers > 1 else self.stage

    @property
    def id(self) -> str:
        """What this worker signs its end-of-stream markers with."""
        return worker_id(self.stage, self.worker)


def compile_plan(topology: Topology, name: str, worker: int, endpoints: Endpoints | None = None) -> WorkerPlan:
    """The plan of worker ``worker`` of stage ``name``; ``endpoints`` replace those of the file."""
    cls, config, endpoints = topology.classes[name], topology.stages[name], endpoints or {}
    return WorkerPlan(
        pipeline=topology.name,
        stage=name,
        worker=worker,
        workers=config.workers,
        stage_cls=cls,
        params=topology.params[name],
        input=None if cls.is_source else _input_plan(topology, name, worker, endpoints),
        outputs=tuple(
            OutputPlan(
                consumer=consumer.name,
                endpoints=tuple(endpoints.get(consumer.name) or topology.endpoints(consumer.name)),
                policy=link.policy,
                hwm=link.hwm,
                codec=_codec(topology, consumer.name, link, endpoints),
                image=topology.needs_image[consumer.name],
            )
            for consumer, link in topology.consumers(name)
        ),
        stream=topology.stream_id(name) if cls.is_source else None,
        producers={s: frozenset(topology.producers(name, s)) for s in sorted(topology.streams[name])}
        if not cls.is_source
        else {},
        needs_image=IMAGE in topology.contracts[name].requires,
        run=dict(topology.metadata[name]),
    )


def _codec(topology: Topology, consumer: str, link: InputConfig, endpoints: Endpoints) -> str:
    """How images travel on ``link``; ``auto`` over resolved endpoints: shm only if every one is ipc://."""
    if consumer not in endpoints or link.codec != "auto":
        return topology.codec(consumer, link)
    return "shm" if all(e.startswith("ipc://") for e in endpoints[consumer]) else "raw"


def _input_plan(topology: Topology, name: str, worker: int, endpoints: Endpoints) -> InputPlan:
    links = topology.stages[name].inputs
    leaky = any(link.policy == "drop-oldest" for link in links)
    reorder = topology.classes[name].ordered_input and topology.out_of_order[name]
    return InputPlan(
        bind=endpoints[name][worker] if name in endpoints else topology.bind_endpoints(name)[worker],
        hwm=max(link.hwm for link in links),
        leaky=leaky,
        shm=any(_codec(topology, name, link, endpoints) == "shm" for link in links),
        reorder_wait_s=(REORDER_WAIT_LEAKY_S if leaky else REORDER_WAIT_S) if reorder else None,
    )


def compile_plans(topology: Topology, only: list[str] | None = None, endpoints: Endpoints | None = None) -> list[WorkerPlan]:
    """Plans of every worker of the stages in ``only`` (default: all), consumers first.

    Consumers start first so that their endpoints are bound when producers start sending.
    ``endpoints`` replace those of the file for the stages it names (see ``Endpoints``).
    """
    return [
        compile_plan(topology, name, i, endpoints)
        for name in reversed(topology.order)
        if only is None or name in only
        for i in range(topology.stages[name].workers)
    ]
