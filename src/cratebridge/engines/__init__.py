"""The engine plugin interface, the run record engines report, and the registry."""

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
