"""The stage API: a stage transforms one message at a time and knows nothing of sockets.

The runner (``pipeline.streaming.runner``) owns the sockets, the loop, metrics and error handling.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from pipeline.streaming.message import Message

IMAGE = "image"  # the one contract name the framework knows: the frame's pixels


class Params(BaseModel):
    """Base of every stage's parameter model: unknown keys are rejected, values are checked."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def inside_out(name: str | None) -> str | None:
    """Check a file name that a sink writes inside the run's output folder (a pydantic validator)."""
    if name is not None and (not name or PurePath(name).is_absolute() or ".." in PurePath(name).parts):
        raise ValueError(f"must be a file name inside the output folder (no absolute path, no '..'), got {name!r}")
    return name


@dataclass(frozen=True)
class Contract:
    """What a stage needs from upstream, what it adds, and what it fixes for the whole run.

    Attributes:
        requires: names of fields some upstream stage must provide (``image`` or a field of
            the records stages add).
        provides: names of the fields this stage adds.
        metadata: run-wide facts this stage fixes at start-up (class names of a model, ...);
            stages downstream see them in ``context["run"]``, so they need not travel in
            every frame.
    """

    requires: frozenset[str] = frozenset()
    provides: frozenset[str] = frozenset()
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StageContext:
    """What a stage instance is told about its place in the run.

    Attributes:
        out: the run's output folder.
        worker: this worker's index among the stage's workers.
        label: ``name`` or ``name[i]``, for logs.
        stream: the stream id this source stamps (sources only).
        streams: ids of the streams that reach this stage.
        run: run-wide metadata fixed by this stage and the stages upstream (``Contract.metadata``).
        restarts: how often this worker was restarted after a crash in this run (0: first start);
            a file sink keeps what its earlier starts wrote.
        launch: what the launcher says about this run, for sinks to record: ``id``, ``started``
            (``time.time()``), ``config`` (the resolved topology as YAML), ``host``, ``version``.
    """

    out: str = "."
    worker: int = 0
    label: str = ""
    stream: str | None = None
    streams: tuple[str, ...] = ()
    run: Mapping[str, Any] = field(default_factory=dict)
    restarts: int = 0
    launch: Mapping[str, Any] = field(default_factory=dict)

    @property
    def run_id(self) -> str:
        """The id of this run (one ``run`` command), or ``""`` outside a launched run."""
        return str(self.launch.get("id", ""))


class Stage:
    """A processing step. Subclasses set ``Params`` and override ``process``.

    Class attributes describe the stage so that the topology can be checked before any
    process starts (like MediaPipe's ``GetContract``):

    * ``requires`` / ``provides``: the default contract (see ``contract``).
    * ``is_source``: the stage has no input and produces messages from ``generate``.
    * ``is_sink``: the stage has no output.
    * ``ordered_input``: the stage needs frames in capture order; the runner reorders for it.
    """

    Params: ClassVar[type[Params]] = Params
    provides: ClassVar[frozenset[str]] = frozenset()
    requires: ClassVar[frozenset[str]] = frozenset()
    is_source: ClassVar[bool] = False
    is_sink: ClassVar[bool] = False
    ordered_input: ClassVar[bool] = False

    def __init__(self, params: Params, *, name: str, context: StageContext | None = None):
        self.params = params
        self.name = name
        self.context = context or StageContext(label=name)

    @classmethod
    def contract(cls, params: Params, upstream: Mapping[str, Any]) -> Contract:
        """This stage's contract with these params, given the run metadata fixed upstream.

        Called once, when the topology is validated. Raise ``ValueError`` when the stage
        cannot work with what upstream fixed (the message becomes a config error naming
        the stage). The default: the class's ``requires`` and ``provides``.
        """
        return Contract(cls.requires, cls.provides)

    def on_start(self) -> None:
        """Open resources (models, files, devices). Called once in the worker process."""

    def process(self, msg: Message) -> Message | None:
        """Transform one message. Return ``None`` to drop the frame.

        ``msg.image`` may be read-only and is valid until ``process`` returns (it can live in
        shared memory that is reused afterwards): copy it to draw on it or to keep it.
        """
        return msg

    def generate(self) -> Iterator[Message]:
        """Source stages yield messages here; the runner numbers them and adds end-of-stream."""
        raise NotImplementedError

    def resume(self, emitted: int) -> None:
        """A restarted source continues after the ``emitted`` frames its earlier start sent.

        Called after ``on_start`` and before ``generate``; numbering continues at ``emitted``.
        The default does nothing, which is right for live sources (a camera has no past).
        """

    def losses(self) -> list[str]:
        """What this stage lost or could not write (one line each), for the run's summary.

        A run whose stages report losses ends with a non-zero exit code. Called after ``on_stop``.
        """
        return []

    def on_eos(self, msg: Message) -> None:
        """End-of-stream reached this stage (sinks flush here)."""

    def on_stop(self) -> None:
        """Release resources. Called once, also after errors, on SIGTERM, and when ``on_start`` failed."""
