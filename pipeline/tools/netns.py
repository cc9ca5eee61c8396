"""Hosts on one machine: network namespaces joined by veth pairs (root only).

Each namespace is a host with its own network stack and a 10.77.x.x address; traffic goes
only between these namespaces. ``pipeline.tools.netbench`` measures the two-host recipe on
them; the tests in ``tests/test_netns.py`` run the halves of a topology there.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Host:
    """A namespace standing for a machine."""

    namespace: str
    address: str  # its address on the link to the compute host
    device: str  # its end of that link

    def command(self, *args: str) -> list[str]:
        """``args`` run inside this host."""
        return ["ip", "netns", "exec", self.namespace, *args]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=20)


def netns_unavailable() -> str | None:
    """Why namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"emoprobe{os.getpid()}"
    try:
        _ip("netns", "add", probe)
    except FileNotFoundError:
        return "the ip command is missing (apt-get install iproute2)"
    except subprocess.CalledProcessError as exc:
        return f"the kernel refuses network namespaces: {exc.stderr.strip()}"
    _ip("netns", "del", probe)
    return None


@contextlib.contextmanager
def network(tag: str) -> Iterator[dict[str, Host]]:
    """camera (10.77.1.1) and outsider (10.77.2.1), each joined to compute by its own veth pair.

    Compute has 10.77.1.2 towards camera and 10.77.2.2 towards outsider. Devices are created
    inside the namespaces, so the names cannot clash with other runs; deleting a namespace
    deletes its devices.
    """
    names = {role: f"emo{tag}-{role}" for role in ("camera", "compute", "outsider")}
    hosts = {
        "camera": Host(names["camera"], "10.77.1.1", "cam0"),
        "compute": Host(names["compute"], "10.77.1.2", "comp0"),
        "outsider": Host(names["outsider"], "10.77.2.1", "out0"),
    }
    made: list[str] = []
    try:
        for ns in names.values():
            _ip("netns", "add", ns)
            made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _link(names["camera"], "cam0", "10.77.1.1", names["compute"], "comp0", "10.77.1.2")
        _link(names["outsider"], "out0", "10.77.2.1", names["compute"], "comp1", "10.77.2.2")
        yield hosts
    finally:
        for ns in made:
            _kill_inside(ns)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)


def _link(ns_a: str, dev_a: str, addr_a: str, ns_b: str, dev_b: str, addr_b: str) -> None:
    _ip("link", "add", dev_a, "netns", ns_a, "type", "veth", "peer", "name", dev_b, "netns", ns_b)
    for ns, dev, addr in ((ns_a, dev_a, addr_a), (ns_b, dev_b, addr_b)):
        _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
        _ip("-n", ns, "link", "set", dev, "up")


def _kill_inside(namespace: str) -> None:
    """Kill what a failed test left running in the namespace (only our own processes live there)."""
    pids = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True, timeout=20).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
