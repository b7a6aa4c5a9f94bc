"""The engine plugin interface, the run record engines report, and the registry.

Nothing is imported here eagerly: the engine's own process in its room imports
modules of this package (:mod:`cratebridge.engines.held`) and needs none of the rest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cratebridge.lazy import names_from

__all__ = [
    "DEFAULT_ENGINES",
    "Capabilities",
    "ContainerRecord",
    "Engine",
    "EngineInfo",
    "EnginePlan",
    "FileRecord",
    "ImageUse",
    "LogRecord",
    "ParameterValue",
    "PluginSpec",
    "ProgressEvent",
    "Registry",
    "RunContext",
    "RunRecord",
    "RunStatus",
    "StepRecord",
]

if TYPE_CHECKING:
    from cratebridge.engines.interface import (
        Capabilities,
        Engine,
        EngineInfo,
        EnginePlan,
        ImageUse,
        ProgressEvent,
        RunContext,
    )
    from cratebridge.engines.record import (
        ContainerRecord,
        FileRecord,
        LogRecord,
        ParameterValue,
        RunRecord,
        RunStatus,
        StepRecord,
    )
    from cratebridge.engines.registry import DEFAULT_ENGINES, PluginSpec, Registry

#: where each name is defined
_MODULES = {
    **dict.fromkeys(["Capabilities", "Engine", "EngineInfo", "EnginePlan", "ImageUse",
                     "ProgressEvent", "RunContext"], "interface"),
    **dict.fromkeys(["ContainerRecord", "FileRecord", "LogRecord", "ParameterValue",
                     "RunRecord", "RunStatus", "StepRecord"], "record"),
    **dict.fromkeys(["DEFAULT_ENGINES", "PluginSpec", "Registry"], "registry"),
}

__getattr__ = names_from(__name__, _MODULES)
