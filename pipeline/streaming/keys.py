"""CurveZMQ key pairs on disk, and the keys a worker holds for its links.

A key directory is laid out like ``zmq.auth``'s: ``<host>.key`` holds a host's public key and
``<host>.key_secret`` its secret key (readable only by its owner). Each host keeps its own
secret key and the public keys of the hosts it talks to. On Ray, unless the topology names a
key directory, each worker makes its own pair on its node and only the public keys travel
(``WorkerKeys``). No socket code lives here: the keys go into the worker's plan at compile
time, and ``transport`` puts them on the sockets.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import zmq.auth

from pipeline.errors import ConfigError

if TYPE_CHECKING:
    from pipeline.streaming.topology import StageConfig

PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
HOST_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"  # a file name in the key directory


@dataclass(frozen=True)
class CurveServer:
    """A binding worker's keys: its own pair and the client keys it accepts (Ironhouse).

    Attributes:
        public: this host's public key (z85).
        secret: this host's secret key (z85).
        clients: accepted client public key (z85) -> the host it belongs to, for logs.
    """

    public: bytes = field(repr=False)
    secret: bytes = field(repr=False)
    clients: dict[bytes, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CurveClient:
    """A connecting link's keys: this host's pair and the server key it insists on.

    Attributes:
        public: this host's public key (z85).
        secret: this host's secret key (z85).
        server: the public key the consumer's host must prove it holds (z85).
        host: this host's name (whose key the server must list), for logs.
        server_host: the consumer's host, for logs.
        servers: one server key per consumer worker, where they differ (on Ray each worker has
            its own pair); empty: ``server`` for all.
    """

    public: bytes = field(repr=False)
    secret: bytes = field(repr=False)
    server: bytes = field(repr=False)
    host: str = ""
    server_host: str = ""
    servers: tuple[bytes, ...] = field(default=(), repr=False)

    def server_key(self, worker: int) -> bytes:
        """The public key consumer worker ``worker`` must prove it holds."""
        return self.servers[worker] if self.servers else self.server


class KeySource(Protocol):
    """Where the key pairs of a secured link come from: a key directory, or the workers themselves."""

    def owner(self, stage: StageConfig, worker: int, where: str) -> str:
        """The name of the key pair a worker of ``stage`` uses (``where``: the stage's place in the file)."""
        ...

    def pair(self, name: str) -> tuple[bytes, bytes]:
        """The (public, secret) key pair ``name``; an empty secret: the worker fills in its own."""
        ...

    def public(self, name: str) -> bytes:
        """The public key of ``name``."""
        ...


@dataclass(frozen=True)
class KeyDirectory:
    """Key pairs in a directory (``<host>.key``, ``<host>.key_secret``), one per host a stage names."""

    path: Path

    def owner(self, stage: StageConfig, worker: int, where: str) -> str:
        if stage.host is None:
            raise ConfigError(
                f"{where}.host: required: this stage has a tcp:// link secured with {self.path}; "
                f"name the key pair it uses ({self.path}/<host>.key)"
            )
        return stage.host

    def pair(self, name: str) -> tuple[bytes, bytes]:
        return key_pair(self.path, name)

    def public(self, name: str) -> bytes:
        return public_key(self.path, name)


@dataclass(frozen=True)
class WorkerKeys:
    """Key pairs each worker made for itself (the Ray launcher's default): only their public keys.

    Every worker's pair is its own, made where it runs; its secret key never leaves that node.
    The plans carry an empty secret, which the worker replaces with its own (``own_secret``).

    Attributes:
        publics: worker id (``stage:index``) -> its public key (z85).
    """

    publics: dict[str, bytes]

    def owner(self, stage: StageConfig, worker: int, where: str) -> str:
        return f"{stage.name}:{worker}"

    def pair(self, name: str) -> tuple[bytes, bytes]:
        return self.publics[name], b""

    def public(self, name: str) -> bytes:
        return self.publics[name]


def worker_key_pair(folder: Path, name: str) -> tuple[bytes, bytes]:
    """A worker's own pair, kept in ``folder`` (its node's run folder) so that a restart keeps it."""
    if not (folder / f"{name}{SECRET_SUFFIX}").exists():
        new_key_pair(folder, name)
    return key_pair(folder, name)


def new_key_pair(directory: str | Path, name: str, force: bool = False) -> tuple[Path, Path]:
    """Make ``<name>.key`` and ``<name>.key_secret`` in ``directory``; return their paths.

    The secret file is created with mode 0600 (the umask is tightened around pyzmq's writer,
    which otherwise leaves it as readable as any file). Existing keys are kept unless ``force``:
    replacing a key locks out every peer that still has the old public key.
    """
    folder = Path(directory)
    public, secret = folder / f"{name}{PUBLIC_SUFFIX}", folder / f"{name}{SECRET_SUFFIX}"
    if not force and (public.exists() or secret.exists()):
        raise ConfigError(f"{public}: a key pair named {name!r} exists; rotate it with --force")
    folder.mkdir(parents=True, exist_ok=True)
    old = os.umask(0o077)
    try:
        for path in (public, secret):
            path.unlink(missing_ok=True)
        zmq.auth.create_certificates(folder, name)
    finally:
        os.umask(old)
    public.chmod(0o644)  # public keys are meant to be copied to the other hosts
    return public, secret


def public_key(directory: str | Path, name: str) -> bytes:
    """The public key of host ``name`` from ``directory``."""
    return _load(Path(directory) / f"{name}{PUBLIC_SUFFIX}", f"copy {name}{PUBLIC_SUFFIX} from host {name}")[0]


def key_pair(directory: str | Path, name: str) -> tuple[bytes, bytes]:
    """This host's (public, secret) key pair, refusing a secret file that other users can read."""
    path = Path(directory) / f"{name}{SECRET_SUFFIX}"
    public, secret = _load(path, f"make it on this host with `run_pipeline.py keys new {directory} {name}`")
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{path}: other users can read this secret key (mode {stat.S_IMODE(mode):04o}); chmod 600 it")
    if secret is None:
        raise ConfigError(f"{path}: no secret-key line; is it a public key file?")
    return public, secret


def _load(path: Path, hint: str) -> tuple[bytes, bytes | None]:
    if not path.is_file():
        raise ConfigError(f"{path}: no such key file: {hint}")
    try:
        return zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a key file: {exc}") from None


def is_loopback(endpoint: str) -> bool:
    """Whether a ``tcp://host:port`` endpoint is reachable only from this machine.

    ``0.0.0.0``, ``*``, interface names and other host names count as reachable: only a
    literal loopback address or ``localhost`` is known to stay on the machine.
    """
    host = endpoint.removeprefix("tcp://").rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
