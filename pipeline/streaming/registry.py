"""Stage registry: the YAML ``type:`` of a stage is its registry key and its module name.

Every stage type, built-in or third-party, registers through the Python entry-point group
``emotion_pipeline.stages`` (``name = "package.module:StageClass"``); the built-in ones are
listed in this project's ``pyproject.toml`` like anyone else's.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from pipeline.errors import ConfigError
from pipeline.streaming.stage import Stage

ENTRY_POINT_GROUP = "emotion_pipeline.stages"


def available() -> dict[str, str]:
    """All registered stage types: ``type name -> "module:Class"``."""
    found: dict[str, str] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep.value)  # the first installed distribution wins a clash
    if not found:
        raise ConfigError(
            f"no stage types registered in the entry-point group {ENTRY_POINT_GROUP!r}; install the project (pip install -e .)"
        )
    return found


def get(type_name: str) -> type[Stage]:
    """Import and return the Stage class registered as ``type_name``."""
    types = available()
    if type_name not in types:
        raise ConfigError(f"unknown stage type {type_name!r}; registered: {', '.join(sorted(types))}")
    module_name, _, class_name = types[type_name].partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(cls, type) and issubclass(cls, Stage)):
        raise ConfigError(f"stage type {type_name!r} ({types[type_name]}) is not a pipeline.streaming.stage.Stage")
    return cls
