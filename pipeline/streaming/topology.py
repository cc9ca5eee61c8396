"""Topology: the YAML file that says which stages run, how they connect and where.

Everything is checked before any process starts: unknown keys, types and ranges of every
stage's params, stage types, dangling inputs, cycles, endpoint clashes, and whether each
stage's inputs carry what it needs. Errors name the place in the file, for example
``stages[2] (segment).params.k: must be >= 2, got 0``.
"""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipeline.errors import ConfigError
from pipeline.streaming import registry
from pipeline.streaming.keys import HOST_PATTERN, is_loopback
from pipeline.streaming.stage import IMAGE, Contract, Params, Stage

Policy = Literal["block", "drop-oldest"]
# A Ray custom resource name, or a node label key=value (Ray's label syntax is Kubernetes').
_PLACEMENT = r"[A-Za-z][A-Za-z0-9_.-]{0,62}|([a-z0-9.-]{1,253}/)?[A-Za-z0-9_.-]{1,63}=[A-Za-z0-9_.-]{0,63}"


class InputConfig(BaseModel):
    """One link into a stage."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str = Field(alias="from", description="name of the upstream stage")
    policy: Policy = Field(
        "block", description="block: wait for room (files); drop-oldest: keep the newest frames (live sources)"
    )
    hwm: int = Field(4, ge=1, le=1000, description="queue bound in messages, on each side of the link")
    codec: Literal["auto", "shm", "raw", "jpeg"] = Field(
        "auto",
        description="how the image travels: shm (shared memory, one machine), raw, or jpeg (between machines); "
        "auto: shm to ipc:// endpoints, raw to tcp://",
    )


class StageConfig(BaseModel):
    """One stage of the topology."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,39}$", description="unique stage name")
    type: str = Field(description="registered stage type (see `run_pipeline.py stages`)")
    inputs: list[InputConfig] = Field(default_factory=list, description="upstream links")
    workers: int = Field(1, ge=1, le=64, description="processes sharing this stage's input")
    endpoint: str | None = Field(None, description="where upstream stages connect: ipc://path or tcp://host:port")
    bind: str | None = Field(None, description="what this stage binds, when it differs from endpoint (tcp://0.0.0.0:port)")
    host: str | None = Field(
        None, pattern=HOST_PATTERN, description="the machine that runs this stage: the name of its key pair (KEYS/<host>.key)"
    )
    keys: str | None = Field(None, description="key directory for the tcp:// links into this stage (default: the pipeline's)")
    insecure: bool = Field(False, description="accept unauthenticated, unencrypted tcp:// peers from other machines")
    params: dict[str, Any] = Field(default_factory=dict)
    # Read by the Ray launcher only (``--launcher ray``); the process launcher runs every stage here.
    placement: list[str] = Field(
        default_factory=list,
        description="Ray: what a node must have to run this stage: a custom resource (camera) or a label (zone=lab)",
    )
    cpus: float | None = Field(None, gt=0, le=64, description="Ray: CPUs each worker reserves (default 0.25)")
    nice: int | None = Field(
        None, ge=0, le=19, description="added to the niceness of this stage's worker processes (default: the pipeline's nice)"
    )

    @field_validator("placement", mode="before")
    @classmethod
    def _placement_as_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("placement")
    @classmethod
    def _placement_form(cls, value: list[str]) -> list[str]:
        for item in value:
            if not re.fullmatch(_PLACEMENT, item):
                raise ValueError(f"must be a resource name (camera) or a label key=value (zone=lab), got {item!r}")
        return value

    @field_validator("inputs", mode="before")
    @classmethod
    def _inputs_as_maps(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"from": v} if isinstance(v, str) else v for v in value]
        return value

    @field_validator("endpoint", "bind")
    @classmethod
    def _endpoint_form(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"ipc://.+|tcp://[^:/]+:\d{1,5}", value):
            raise ValueError(f"must look like ipc://path or tcp://host:port, got {value!r}")
        if value is not None and value.startswith("tcp://") and not 1 <= int(value.rpartition(":")[2]) <= 65535:
            raise ValueError(f"port must be in 1..65535, got {value!r}")
        return value


class TopologyConfig(BaseModel):
    """The whole file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field("pipeline", description="pipeline name, used in logs")
    keys: str | None = Field(
        None, description="key directory (<host>.key, <host>.key_secret): every tcp:// link is authenticated and encrypted"
    )
    # With fewer cores than busy stages, the stage that sets the pace should not wait for the CPU
    # behind stages that only wait for it: the others get a higher niceness (README: Speed).
    nice: int = Field(0, ge=0, le=19, description="added to the niceness of every stage's worker processes")
    stages: list[StageConfig] = Field(min_length=1)


class Topology:
    """A validated topology with its stage classes and typed params resolved.

    Args:
        config: the parsed file.
        runtime_dir: folder for default ``ipc://`` endpoints.
    """

    def __init__(self, config: TopologyConfig, runtime_dir: str | Path):
        self.config = config
        self.runtime_dir = Path(runtime_dir)
        self.stages: dict[str, StageConfig] = {}
        self.classes: dict[str, type[Stage]] = {}
        self.params: dict[str, Params] = {}
        self.contracts: dict[str, Contract] = {}  # each asked for once, at validation
        self.metadata: dict[str, dict[str, Any]] = {}  # run metadata visible at each stage
        self._validate()

    # --- queries ---------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.config.name

    def resolved_yaml(self) -> str:
        """The topology as run: every stage with all its params, defaults filled in (for the run record)."""
        stages = []
        for stage in self.config.stages:
            entry = stage.model_dump(mode="json", by_alias=True, exclude_none=True, exclude_defaults=True)
            entry["params"] = self.params[stage.name].model_dump(mode="json")
            stages.append(entry)
        return yaml.safe_dump({"name": self.name, "stages": stages}, sort_keys=False)

    def where(self, name: str) -> str:
        """``stages[i] (name)``: the place of a stage in the file, for error messages."""
        index = next(i for i, s in enumerate(self.config.stages) if s.name == name)
        return f"stages[{index}] ({name})"

    def consumers(self, name: str) -> list[tuple[StageConfig, InputConfig]]:
        """Stages fed by ``name``, with the link config."""
        return [(s, link) for s in self.stages.values() for link in s.inputs if link.source == name]

    def endpoints(self, name: str) -> list[str]:
        """One input endpoint per worker of ``name`` (what upstream stages connect to)."""
        return _per_worker(self._endpoint(name), self.stages[name].workers)

    def bind_endpoints(self, name: str) -> list[str]:
        """What each worker of ``name`` binds."""
        stage = self.stages[name]
        return _per_worker(stage.bind or self._endpoint(name), stage.workers)

    def codec(self, consumer: str, link: InputConfig) -> str:
        """How the image travels on ``link`` into ``consumer``: ``auto`` resolved by its endpoint."""
        if link.codec != "auto":
            return link.codec
        return "shm" if self._endpoint(consumer).startswith("ipc://") else "raw"

    def link_keys(self, name: str) -> Path | None:
        """The key directory securing the links into ``name``: None on ipc:// or ``insecure: true``."""
        stage = self.stages[name]
        keys = stage.keys or self.config.keys
        if keys is None or stage.insecure or not self._endpoint(name).startswith("tcp://"):
            return None
        return Path(keys)

    def expected_eos(self, name: str, stream: str) -> int:
        """How many end-of-stream markers for ``stream`` reach each worker of ``name``."""
        return len(self.producers(name, stream))

    def producers(self, name: str, stream: str) -> list[str]:
        """Ids (``stage:worker``) of the upstream workers that send ``stream`` to each worker of ``name``."""
        return [
            worker_id(link.source, i)
            for link in self.stages[name].inputs
            if stream in self.streams[link.source]
            for i in range(self.stages[link.source].workers)
        ]

    @cached_property
    def streams(self) -> dict[str, frozenset[str]]:
        """Stage name -> ids of the streams (source stages) that flow through it."""
        result: dict[str, frozenset[str]] = {}
        for name in self.order:
            stage = self.stages[name]
            if self.classes[name].is_source:
                result[name] = frozenset({self.stream_id(name)})
            else:
                result[name] = frozenset().union(*(result[link.source] for link in stage.inputs))
        return result

    @cached_property
    def out_of_order(self) -> dict[str, bool]:
        """Stage name -> whether frames can reach it out of capture order.

        A chain of single workers keeps order, since each link is FIFO. Order is lost by a
        stage with several workers, or a stream reaching a stage by two paths, and restored
        by a stage with ``ordered_input`` (its reorder buffer).
        """
        result: dict[str, bool] = {}
        for name in self.order:
            inputs = self.stages[name].inputs
            paths = [self.streams[link.source] for link in inputs]
            two_paths = sum(len(p) for p in paths) > len(frozenset().union(*paths))
            result[name] = two_paths or any(self._unordered_output(link.source, result) for link in inputs)
        return result

    @cached_property
    def needs_image(self) -> dict[str, bool]:
        """Stage name -> whether it or a stage after it uses the image (else links carry none)."""
        result: dict[str, bool] = {}
        for name in reversed(self.order):
            uses = IMAGE in self.contracts[name].requires
            result[name] = uses or any(result[consumer.name] for consumer, _ in self.consumers(name))
        return result

    def _unordered_output(self, name: str, out_of_order: dict[str, bool]) -> bool:
        reorders = self.classes[name].ordered_input
        return self.stages[name].workers > 1 or (out_of_order[name] and not reorders)

    def stream_id(self, source_name: str) -> str:
        """The stream id a source stage stamps on its messages (its ``stream`` param or its name)."""
        return str(getattr(self.params[source_name], "stream", None) or source_name)

    @cached_property
    def order(self) -> list[str]:
        """Stage names, every stage after its inputs."""
        return _topological_order(self.config.stages)

    # --- validation ------------------------------------------------------------
    def _endpoint(self, name: str) -> str:
        return self.stages[name].endpoint or f"ipc://{self.runtime_dir / name}"

    def _validate(self) -> None:
        seen: dict[str, int] = {}
        for i, stage in enumerate(self.config.stages):
            where = f"stages[{i}] ({stage.name})"
            if stage.name in seen:
                raise ConfigError(f"{where}.name: duplicate of stages[{seen[stage.name]}]")
            seen[stage.name] = i
            try:
                cls = registry.get(stage.type)
            except ConfigError as exc:
                raise ConfigError(f"{where}.type: {exc}") from None
            try:
                params = cls.Params(**stage.params)
            except ValidationError as exc:
                raise ConfigError(_format_validation(exc, f"{where}.params")) from None
            self.stages[stage.name], self.classes[stage.name], self.params[stage.name] = stage, cls, params

        for i, stage in enumerate(self.config.stages):
            where = f"stages[{i}] ({stage.name})"
            cls = self.classes[stage.name]
            if cls.is_source and stage.inputs:
                raise ConfigError(f"{where}.inputs: a {stage.type} stage is a source and takes no inputs")
            if not cls.is_source and not stage.inputs:
                raise ConfigError(f"{where}.inputs: required: a {stage.type} stage needs an upstream stage")
            for j, link in enumerate(stage.inputs):
                if link.codec == "shm" and not self._endpoint(stage.name).startswith("ipc://"):
                    raise ConfigError(
                        f"{where}.inputs[{j}].codec: shm needs both stages on one machine (an ipc:// endpoint), "
                        f"got {self._endpoint(stage.name)}; use raw or jpeg"
                    )
                if link.source not in self.stages:
                    raise ConfigError(f"{where}.inputs[{j}]: no stage named {link.source!r}; stages are {', '.join(self.stages)}")
                if self.classes[link.source].is_sink:
                    raise ConfigError(f"{where}.inputs[{j}]: {link.source!r} is a sink and has no output")
            if stage.workers > 1 and (cls.is_source or cls.ordered_input):
                raise ConfigError(
                    f"{where}.workers: must be 1 for a {stage.type} stage "
                    f"({'a source' if cls.is_source else 'it needs frames in order'}), got {stage.workers}"
                )
        try:
            _topological_order(self.config.stages)
        except ConfigError as exc:
            raise ConfigError(f"stages: {exc}") from None
        self._check_contracts()
        self._check_endpoints()
        self._check_security()

    def _check_contracts(self) -> None:
        provided: dict[str, frozenset[str]] = {}
        for name in self.order:
            stage, cls = self.stages[name], self.classes[name]
            upstream = frozenset().union(*(provided[link.source] for link in stage.inputs)) if stage.inputs else frozenset()
            fixed: dict[str, Any] = {}
            for link in stage.inputs:
                fixed.update(self.metadata[link.source])
            try:
                contract = cls.contract(self.params[name], fixed)
            except ValueError as exc:
                raise ConfigError(f"{self.where(name)}: {exc}") from None
            self.contracts[name], self.metadata[name] = contract, {**fixed, **contract.metadata}
            missing = contract.requires - upstream
            if missing:
                raise ConfigError(
                    f"{self.where(name)}.inputs: a {stage.type} stage needs {', '.join(sorted(missing))} "
                    f"from upstream, which its inputs ({', '.join(link.source for link in stage.inputs)}) do not provide"
                )
            provided[name] = upstream | contract.provides

    def _check_endpoints(self) -> None:
        owner: dict[str, str] = {}
        for name in self.stages:
            if self.classes[name].is_source:
                continue
            for endpoint in self.bind_endpoints(name):
                if endpoint.startswith("tcp://") and int(endpoint.rpartition(":")[2]) > 65535:
                    raise ConfigError(f"{self.where(name)}.workers: worker ports run past 65535 ({endpoint})")
                key = re.sub(r"^tcp://[^:]+:", "tcp://*:", endpoint)  # one port, whatever the host
                if key in owner:
                    raise ConfigError(f"{self.where(name)}.endpoint: {endpoint} clashes with stage {owner[key]!r}")
                owner[key] = name

    def _check_security(self) -> None:
        """A link other machines can reach is secured or says it need not be; secured ones name their hosts."""
        for name, stage in self.stages.items():
            if self.classes[name].is_source or not self._endpoint(name).startswith("tcp://"):
                continue
            keys = self.link_keys(name)
            field = "bind" if stage.bind else "endpoint"
            exposed = next((e for e in self.bind_endpoints(name) if not is_loopback(e)), None)
            if keys is None and exposed and not stage.insecure:
                raise ConfigError(
                    f"{self.where(name)}.{field}: {exposed} is reachable from other machines: "
                    "name a key directory (keys: DIR) or say insecure: true"
                )
            if keys is None:
                continue
            for peer in [name] + [link.source for link in stage.inputs]:
                if self.stages[peer].host is None:
                    role = "binds" if peer == name else f"sends to {name} over"
                    raise ConfigError(
                        f"{self.where(peer)}.host: required: this stage {role} a tcp:// link secured with {keys}; "
                        f"name the key pair of the machine it runs on ({keys}/<host>.key)"
                    )


def worker_id(stage: str, worker: int) -> str:
    """How a worker signs its end-of-stream markers: ``stage:index``."""
    return f"{stage}:{worker}"


def _per_worker(endpoint: str, workers: int) -> list[str]:
    """Worker i of a stage listens on port + i (tcp) or path-i (ipc)."""
    if workers == 1:
        return [endpoint]
    if endpoint.startswith("tcp://"):
        base, _, port = endpoint.rpartition(":")
        return [f"{base}:{int(port) + i}" for i in range(workers)]
    return [f"{endpoint}-{i}" for i in range(workers)]


def _topological_order(stages: list[StageConfig]) -> list[str]:
    names = {s.name for s in stages}
    deps = {s.name: [link.source for link in s.inputs if link.source in names] for s in stages}
    order: list[str] = []
    state: dict[str, int] = {}  # 1: visiting, 2: done

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = path[path.index(name) :] + [name]
            raise ConfigError(f"cycle {' -> '.join(reversed(cycle))}")
        state[name] = 1
        for dep in deps[name]:
            visit(dep, path + [name])
        state[name] = 2
        order.append(name)

    for s in stages:
        visit(s.name, [])
    return order


_MESSAGES = {
    "greater_than_equal": "must be >= {ge}",
    "greater_than": "must be > {gt}",
    "less_than_equal": "must be <= {le}",
    "less_than": "must be < {lt}",
    "extra_forbidden": "unknown key",
    "missing": "required",
}


def _format_validation(exc: ValidationError, prefix: str) -> str:
    """Turn pydantic errors into ``prefix.key: what is wrong, got value`` lines."""
    lines = []
    for err in exc.errors():
        path = prefix
        for part in err["loc"]:
            path += f"[{part}]" if isinstance(part, int) else f".{part}"
        template = _MESSAGES.get(err["type"])
        text = template.format(**err.get("ctx", {})) if template else err["msg"].removeprefix("Value error, ")
        text = text[0].lower() + text[1:]
        got = "" if err["type"] in ("missing", "extra_forbidden", "value_error") else f", got {err['input']!r}"
        lines.append(f"{path}: {text}{got}")
    return "\n".join(lines)


def load_topology(
    path: str | Path,
    runtime_dir: str | Path,
    overrides: list[str] | None = None,
    source: str | None = None,
) -> Topology:
    """Read, override and validate a topology file.

    Args:
        path: the YAML file.
        runtime_dir: folder for default ipc endpoints.
        overrides: ``stage.key=value`` strings; ``key`` is a stage field (``workers``,
            ``endpoint``) or a param; the value is parsed as YAML. ``key=value`` without a stage
            sets a top-level field (``keys=DIR``).
        source: sets ``params.source`` of the (single) source stage.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}): is it a YAML file?") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a map with a `stages:` list")
    stages = raw.get("stages")
    if isinstance(stages, list):
        _apply_overrides(raw, stages, overrides or [], source)
    try:
        config = TopologyConfig(**raw)
    except ValidationError as exc:
        text = _format_validation(exc, "").replace("\n.", "\n").lstrip(".")
        names = {i: s.get("name") for i, s in enumerate(stages or []) if isinstance(s, dict)}
        text = re.sub(r"stages\[(\d+)\]", lambda m: f"{m.group(0)} ({names.get(int(m.group(1)), '?')})", text)
        raise ConfigError("\n".join(f"{path}: {line}" for line in text.splitlines())) from None
    try:
        return Topology(config, runtime_dir)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _apply_overrides(raw: dict[str, Any], stages: list[Any], overrides: list[str], source: str | None) -> None:
    by_name = {s.get("name"): s for s in stages if isinstance(s, dict)}
    top = set(TopologyConfig.model_fields) - {"stages"}
    for item in overrides:
        key, sep, value = item.partition("=")
        stage_name, dot, field = key.partition(".")
        if sep and not dot and key in top:
            raw[key] = yaml.safe_load(value)  # a top-level field: each host names its own key directory
            continue
        if not sep or not dot or not field:
            fields = ", ".join(f"{k}=..." for k in sorted(top))
            raise ConfigError(f"--set {item!r}: expected stage.key=value (or top-level {fields})")
        if stage_name not in by_name:
            raise ConfigError(f"--set {item!r}: no stage named {stage_name!r}; stages are {', '.join(map(str, by_name))}")
        target = by_name[stage_name]
        if field not in StageConfig.model_fields:
            target = target.setdefault("params", {}) or {}
            by_name[stage_name]["params"] = target
        target[field] = yaml.safe_load(value)
    if source is not None:
        sources = [s for s in by_name.values() if _takes_source(s.get("type"))]
        if len(sources) != 1:
            raise ConfigError(f"--source: the topology has {len(sources)} source stages; use --set NAME.source=... instead")
        sources[0].setdefault("params", {})
        sources[0]["params"]["source"] = source


def _takes_source(type_name: Any) -> bool:
    """Whether a stage type is a source stage with a ``source`` param (what ``--source`` sets)."""
    try:
        cls = registry.get(str(type_name))
    except ConfigError:
        return False  # reported by validation, with its place in the file
    return cls.is_source and "source" in cls.Params.model_fields
