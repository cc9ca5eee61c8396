"""The stage API: a stage transforms one message at a time and knows nothing of sockets.

The runner (``pipeline.streaming.runner``) owns the sockets, the loop, metrics and error handling.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from pipeline.streaming.message import Message


class Params(BaseModel):
    """Base of every stage's parameter model: unknown keys are rejected, values are checked."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Stage:
    """A processing step. Subclasses set ``Params`` and override ``process``.

    Class attributes describe the stage's contract so that the topology can be checked
    before any process starts (like MediaPipe's ``GetContract``):

    * ``provides``: message fields this stage adds (e.g. ``{"faces"}``).
    * ``requires``: fields that some upstream stage must provide.
    * ``is_source``: the stage has no input and produces messages from ``generate``.
    * ``is_sink``: the stage has no output.
    """

    Params: ClassVar[type[Params]] = Params
    provides: ClassVar[frozenset[str]] = frozenset()
    requires: ClassVar[frozenset[str]] = frozenset()
    is_source: ClassVar[bool] = False
    is_sink: ClassVar[bool] = False
    # Sinks and renderers need frames in capture order; the runner reorders for them.
    ordered_input: ClassVar[bool] = False

    def __init__(self, params: Params, *, name: str, context: dict[str, Any] | None = None):
        self.params = params
        self.name = name
        # Run-wide settings (output directory, worker index, ...) given by the launcher.
        self.context = context or {}

    @classmethod
    def requirements(cls, params: Params) -> frozenset[str]:
        """Fields this stage needs from upstream with these params (default: ``requires``)."""
        return cls.requires

    def on_start(self) -> None:
        """Open resources (models, files, devices). Called once in the worker process."""

    def process(self, msg: Message) -> Message | None:
        """Transform one message. Return ``None`` to drop the frame.

        ``msg.image`` may be read-only and is valid until ``process`` returns (it can live in
        shared memory that is reused afterwards): copy it to draw on it or to keep it.
        """
        return msg

    def generate(self) -> Iterator[Message]:
        """Source stages yield messages here; the runner adds end-of-stream afterwards."""
        raise NotImplementedError

    def on_eos(self, msg: Message) -> None:
        """End-of-stream reached this stage (sinks flush here)."""

    def on_stop(self) -> None:
        """Release resources. Called once, also after errors and on SIGTERM."""
