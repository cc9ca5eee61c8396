"""Where the workers of a topology may run on a cluster, and how they are wired once placed.

Pure functions, without Ray: ``ray_launcher`` asks Ray and passes what it learnt here, and
tests call them on plain dicts. A node is described as ``ray.nodes()`` describes it
(``Alive``, ``NodeManagerAddress``, ``Resources``, ``Labels``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.errors import ConfigError
from pipeline.streaming.topology import StageConfig, Topology, worker_id

DEFAULT_CPUS = 0.25  # per worker: at 30 frames/s the costliest stage (detect, 12.5 ms a frame) uses 0.38
RESOURCE_SHARE = 0.001  # of a placement resource per worker: a node with `camera: 1` takes any number of them


@dataclass(frozen=True)
class Site:
    """Where Ray put one worker, as its actor reports it.

    Attributes:
        node_id: Ray's node id.
        ip: the node's address (what other nodes reach it at).
        port: a free TCP port on ``ip`` that the actor holds for the worker's input (0: a source).
        runtime: a folder on the node for ``ipc://`` sockets, progress files and the worker's key pair.
        public: the public key of the worker's own CurveZMQ pair, made on the node (z85).
    """

    node_id: str
    ip: str
    port: int
    runtime: str
    public: bytes = b""


def stage_needs(stage: StageConfig) -> tuple[dict[str, float], dict[str, str]]:
    """What one worker of ``stage`` asks of a node: resources (CPU and custom ones) and labels."""
    resources: dict[str, float] = {"CPU": stage.cpus or DEFAULT_CPUS}
    labels: dict[str, str] = {}
    for item in stage.placement:
        key, eq, value = item.partition("=")
        if eq:
            labels[key] = value
        else:
            resources[item] = RESOURCE_SHARE
    return resources, labels


def _fits(node: Mapping[str, Any], resources: Mapping[str, float], labels: Mapping[str, str]) -> bool:
    have, tags = node.get("Resources", {}), node.get("Labels", {})
    return all(have.get(k, 0.0) >= v for k, v in resources.items()) and all(tags.get(k) == v for k, v in labels.items())


def _describe(node: Mapping[str, Any]) -> str:
    resources = {k: v for k, v in node.get("Resources", {}).items() if not k.startswith(("node:", "memory", "object_store"))}
    labels = {k: v for k, v in node.get("Labels", {}).items() if not k.startswith("ray.io/")}
    return f"{node.get('NodeManagerAddress')} {resources}" + (f" labels {labels}" if labels else "")


def check_placement(topology: Topology, nodes: list[Mapping[str, Any]]) -> None:
    """Refuse, naming the stage, a stage that no live node of the cluster can run.

    Ray itself would only wait, for ever, for a node that fits.
    """
    alive = [n for n in nodes if n.get("Alive")]
    for name, stage in topology.stages.items():
        resources, labels = stage_needs(stage)
        if any(_fits(n, resources, labels) for n in alive):
            continue
        wanted = [f"resource {k!r}" for k in resources if k != "CPU"] + [f"label {k}={v}" for k, v in labels.items()]
        wanted.append(f"{resources['CPU']:g} CPU")
        raise ConfigError(
            f"{topology.where(name)}.placement: no node of the Ray cluster has {' and '.join(wanted)} "
            f"(nodes: {'; '.join(_describe(n) for n in alive) or 'none alive'})"
        )


def resolve_endpoints(topology: Topology, sites: Mapping[str, Site]) -> dict[str, list[str]]:
    """One endpoint per worker of every consumer stage, from where Ray placed the workers.

    A worker binds ``ipc://`` (and gets images through shared memory) when every worker
    feeding it runs on its node, and ``tcp://`` on its node's address otherwise: one endpoint
    per worker, so that all its producers connect to the same one. The plans secure the tcp://
    ones with CurveZMQ (see ``compile_plans``).
    """
    endpoints: dict[str, list[str]] = {}
    for name, stage in topology.stages.items():
        if topology.classes[name].is_source:
            continue
        producers = {
            sites[worker_id(link.source, i)].node_id for link in stage.inputs for i in range(topology.stages[link.source].workers)
        }
        endpoints[name] = []
        for i in range(stage.workers):
            site = sites[worker_id(name, i)]
            local = producers == {site.node_id}
            endpoints[name].append(f"ipc://{site.runtime}/{name}-{i}" if local else f"tcp://{site.ip}:{site.port}")
    return endpoints


def check_shm_links(topology: Topology, endpoints: Mapping[str, list[str]]) -> None:
    """A link that says ``codec: shm`` needs its two stages on one node: refuse it otherwise."""
    for name, stage in topology.stages.items():
        for j, link in enumerate(stage.inputs):
            if link.codec == "shm" and any(e.startswith("tcp://") for e in endpoints.get(name, [])):
                raise ConfigError(
                    f"{topology.where(name)}.inputs[{j}].codec: shm needs {link.source} and {name} on one node, "
                    f"but Ray placed them on different nodes; use raw or jpeg, or pin both with `placement`"
                )


def wanted_port(stage: StageConfig, worker: int) -> int:
    """The port the file gives a worker (its endpoint's port + worker index), or 0 for any free one.

    The host part is ignored: a worker binds on its node's address, wherever Ray put it.
    """
    endpoint = stage.bind or stage.endpoint
    if not endpoint or not endpoint.startswith("tcp://"):
        return 0
    return int(endpoint.rpartition(":")[2]) + worker
