"""One exception hierarchy for the whole project, and the exit codes the CLI ends with."""

from enum import IntEnum


class ExitCode(IntEnum):
    """How a command or a worker ended."""

    OK = 0
    FAILED = 1  # a worker crashed past its restart limit, or data was lost
    CONFIG = 2  # bad configuration, input or usage: reported before anything ran, or fatal at start
    INTERRUPTED = 130  # stopped by Ctrl-C (128 + SIGINT)
    TERMINATED = 143  # stopped by SIGTERM (128 + SIGTERM)


class PipelineError(Exception):
    """Base class of every error this project raises on purpose."""


class ConfigError(PipelineError):
    """The topology YAML or a stage's parameters are invalid.

    The message names the place in the file, e.g.
    ``stages[2] (segment).params.k: must be >= 2, got 0``.
    """


class MessageError(PipelineError):
    """A message on the wire could not be decoded (malformed, oversized, wrong version)."""


class LinkError(PipelineError):
    """A link between workers is down for longer than its bound (no consumer connected)."""


class SourceError(PipelineError):
    """A capture source (camera, file, folder, URL) cannot be opened or read."""


class ModelError(PipelineError):
    """A model file is missing, unreadable, or does not fit the topology."""


class DataError(PipelineError):
    """A training or evaluation data folder is empty or laid out wrongly."""
