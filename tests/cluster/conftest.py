"""A real two-node Ray cluster on this machine, for the Ray launcher's tests.

Each node runs in its own network namespace with its own address (a veth pair on 10.78.N.0/24),
so that links between nodes really are tcp:// between two addresses and nothing can take a
shortcut through 127.0.0.1. The head node has the custom resource ``camera`` and the label
``role=camera``; the other node the label ``role=compute``. Token authentication is on for
every node and for the drivers. Where namespaces cannot be made (not root), both nodes run on
127.0.0.1 with the same resources and labels.

Teardown ends the cluster's processes by their ids (every process in the namespaces, or the
ones whose command line names the cluster's temp folder), never by name: other Ray clusters on
this machine stay up.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import free_port

FIGURES: list[str] = []
NODE_CPUS = 2
# As the README starts the head: its Ray Client server forks a server per driver, and with gRPC's
# fork handlers on, that child dies at once in ~1 start in 6 here (Ray issue #63202).
HEAD_ENV = {"GRPC_ENABLE_FORK_SUPPORT": "0"}
RAY = str(Path(sys.executable).with_name("ray"))


@dataclass
class RayCluster:
    """How a test reaches the cluster.

    Attributes:
        address: the head's GCS address, for ``--address``.
        env: environment for drivers (token authentication).
        prefix: what a driver's command starts with to run where it reaches the cluster.
        nodes: node role -> its address.
        client: the head's Ray Client address (``ray://HOST:PORT``).
        client_prefix: like ``prefix``, on the other node (a driver away from the head).
    """

    address: str
    env: dict[str, str]
    prefix: list[str]
    nodes: dict[str, str]
    client: str = ""
    client_prefix: list[str] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    folder: Path = Path()


def _sh(*args: str, check: bool = True, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, check=check, env=env, timeout=timeout)


def _make_namespaces(tag: str, subnet: str) -> list[str]:
    """Two namespaces joined by a veth pair: ``{tag}c`` at .1 and ``{tag}p`` at .2."""
    camera, compute = f"{tag}c", f"{tag}p"
    _sh("ip", "netns", "add", camera)
    _sh("ip", "netns", "add", compute)
    _sh("ip", "link", "add", f"{camera}0", "type", "veth", "peer", "name", f"{compute}0")
    for ns, host in ((camera, 1), (compute, 2)):
        _sh("ip", "link", "set", f"{ns}0", "netns", ns)
        _sh("ip", "-n", ns, "addr", "add", f"{subnet}.{host}/24", "dev", f"{ns}0")
        _sh("ip", "-n", ns, "link", "set", f"{ns}0", "up")
        _sh("ip", "-n", ns, "link", "set", "lo", "up")
    return [camera, compute]


def _start_nodes(cluster: RayCluster, prefixes: list[list[str]]) -> None:
    head_ip, port = cluster.nodes["camera"], cluster.address.rpartition(":")[2]
    head = [RAY, "start", "--head", f"--node-ip-address={head_ip}", f"--port={port}", "--include-dashboard=false",
            f"--ray-client-server-port={cluster.client.rpartition(':')[2]}", f"--temp-dir={cluster.folder / 'head'}",
            '--resources={"camera": 1}', "--labels=role=camera", f"--num-cpus={NODE_CPUS}", "--disable-usage-stats"]  # fmt: skip
    _ray_start(cluster, prefixes[0], head, extra_env=HEAD_ENV)
    start_compute_node(cluster, prefixes[1])


def start_compute_node(cluster: RayCluster, prefix: list[str]) -> None:
    """(Re)start the node labelled ``role=compute`` and join it to the head."""
    other = [RAY, "start", f"--address={cluster.address}", f"--node-ip-address={cluster.nodes['compute']}",
             f"--temp-dir={cluster.folder / 'compute'}", "--labels=role=compute", f"--num-cpus={NODE_CPUS}",
             "--disable-usage-stats"]  # fmt: skip
    if not cluster.namespaces:  # both on 127.0.0.1, beside whatever else runs here: ports of their own
        other += ["--node-manager-port=0", "--object-manager-port=0"]
    _ray_start(cluster, prefix, other)


def _ray_start(cluster: RayCluster, prefix: list[str], command: list[str], extra_env: dict | None = None) -> None:
    result = _sh(*prefix, *command, check=False, env={**os.environ, **cluster.env, **(extra_env or {})})
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:3])} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")


def _cluster_pids(cluster: RayCluster) -> set[int]:
    """Every process of the cluster: all in its namespaces, or all naming its folder, with their children."""
    if cluster.namespaces:
        return {int(p) for ns in cluster.namespaces for p in _sh("ip", "netns", "pids", ns, check=False).stdout.split()}
    parents, found = {}, set()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            parents[int(proc.name)] = int((proc / "stat").read_text().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if str(cluster.folder) in cmdline:
            found.add(int(proc.name))
    while True:  # and their children (agents and workers rename themselves: ray::...)
        more = {pid for pid, parent in parents.items() if parent in found} - found
        if not more:
            return found
        found |= more


def _stop(cluster: RayCluster) -> None:
    """End the cluster's processes by id (SIGTERM, then SIGKILL after 10 s), remove namespaces and files."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        pids = _cluster_pids(cluster)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while _cluster_pids(cluster) and time.monotonic() < deadline:
            time.sleep(0.2)
    for ns in cluster.namespaces:
        _sh("ip", "netns", "del", ns, check=False)
    shutil.rmtree(cluster.folder, ignore_errors=True)


@contextlib.contextmanager
def two_node_cluster() -> Iterator[RayCluster]:
    """Start the two nodes (in namespaces where possible); stop them and clean up on the way out."""
    tag, subnet = f"erl{os.getpid() % 100000}", f"10.78.{os.getpid() % 250 + 1}"
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_USAGE_STATS_ENABLED": "0"}
    cluster = RayCluster("", env, [], {}, folder=Path(tempfile.mkdtemp(prefix=f"{tag}-", dir="/tmp")))
    try:
        try:
            cluster.namespaces = _make_namespaces(tag, subnet)
            cluster.nodes = {"camera": f"{subnet}.1", "compute": f"{subnet}.2"}
            prefixes = [["ip", "netns", "exec", ns] for ns in cluster.namespaces]
        except (subprocess.CalledProcessError, FileNotFoundError) as exc:  # not root, or no iproute2
            FIGURES.append(f"no network namespaces ({exc}); both Ray nodes on 127.0.0.1")
            for ns in (f"{tag}c", f"{tag}p"):
                _sh("ip", "netns", "del", ns, check=False)
            cluster.namespaces, cluster.nodes, prefixes = [], {"camera": "127.0.0.1", "compute": "127.0.0.1"}, [[], []]
        port = 6379 if cluster.namespaces else free_port()  # a namespace has every port to itself
        cluster.address, cluster.prefix = f"{cluster.nodes['camera']}:{port}", prefixes[0]
        cluster.client = f"ray://{cluster.nodes['camera']}:{10001 if cluster.namespaces else free_port()}"
        cluster.client_prefix = prefixes[1]
        started = time.monotonic()
        _start_nodes(cluster, prefixes)
        FIGURES.append(f"Ray cluster of 2 nodes ({json.dumps(cluster.nodes)}) up in {time.monotonic() - started:.1f} s")
        yield cluster
    finally:
        _stop(cluster)


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[RayCluster]:
    """A two-node Ray cluster (camera node, compute node), stopped at the end of the session."""
    pytest.importorskip("ray", reason="ray is not installed: pip install -e '.[cluster]'")
    with two_node_cluster() as cluster:
        yield cluster


@pytest.fixture
def figures() -> list[str]:
    """Append one line per measured figure; they are printed in the terminal summary."""
    return FIGURES


def pytest_terminal_summary(terminalreporter):
    if FIGURES:
        terminalreporter.section("ray cluster figures")
        for line in FIGURES:
            terminalreporter.write_line(line)
