"""Stage registry: the YAML ``type:`` of a stage is its registry key and its module name.

Built-in stages are listed here; third-party stages register through the Python entry-point
group ``emotion_pipeline.stages`` (``name = "package.module:StageClass"``).
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from pipeline.errors import ConfigError
from pipeline.stage import Stage

ENTRY_POINT_GROUP = "emotion_pipeline.stages"

BUILTIN: dict[str, str] = {
    "capture": "stages.capture:Capture",
    "detect": "stages.detect:Detect",
    "segment": "stages.segment:Segment",
    "classify": "stages.classify:Classify",
    "track": "stages.track:Track",
    "render": "stages.render:Render",
    "log": "stages.log:Log",
}


def available() -> dict[str, str]:
    """All stage types: built-in ones, then entry points (which cannot shadow built-ins)."""
    found = dict(BUILTIN)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep.value)
    return found


def get(type_name: str) -> type[Stage]:
    """Import and return the Stage class registered as ``type_name``."""
    types = available()
    if type_name not in types:
        raise ConfigError(f"unknown stage type {type_name!r}; registered: {', '.join(sorted(types))}")
    module_name, _, class_name = types[type_name].partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(cls, type) and issubclass(cls, Stage)):
        raise ConfigError(f"stage type {type_name!r} ({types[type_name]}) is not a pipeline.stage.Stage")
    return cls
