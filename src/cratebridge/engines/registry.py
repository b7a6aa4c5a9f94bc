"""Finding engine plugins without importing them, and loading exactly one.

Discovery reads the ``cratebridge.engines`` entry points (name, value,
distribution, version) into small frozen records; nothing is imported until
:meth:`Registry.load` is asked for one engine by name. A registry is an
instance: tests build one from in-memory engine classes with
:meth:`Registry.from_classes`.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cratebridge.engines.interface import INTERFACE_VERSION, Engine
from cratebridge.errors import EngineUnavailable, FailedToLoadPlugin, UsageError
from cratebridge.intake.request import Language

__all__ = ["DEFAULT_ENGINES", "ENTRY_POINT_GROUP", "PluginSpec", "Registry"]

ENTRY_POINT_GROUP = "cratebridge.engines"

#: The engine chosen for a language when neither the caller nor the operator names one.
DEFAULT_ENGINES: Mapping[Language, str] = {
    Language.CWL: "cwltool",
    Language.NEXTFLOW: "nextflow",
    Language.SNAKEMAKE: "snakemake",
}


@dataclass(frozen=True, order=True)
class PluginSpec:
    """One discovered plugin, not yet imported."""

    name: str
    value: str
    distribution: str
    version: str


class Registry:
    """The engines this process may use, by name."""

    def __init__(
        self,
        specs: Iterable[PluginSpec] = (),
        classes: Mapping[str, type[Engine]] | None = None,
        allowed: Iterable[str] | None = None,
    ) -> None:
        self._specs: dict[str, PluginSpec] = {}
        for spec in sorted(specs):
            self._specs.setdefault(spec.name, spec)
        self._classes: dict[str, type[Engine]] = dict(classes or {})
        self._allowed = frozenset(allowed) if allowed is not None else None

    @classmethod
    def from_entry_points(cls, allowed: Iterable[str] | None = None) -> Registry:
        """Every installed plugin (de-duplicated by name), none imported."""
        specs = []
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist
            specs.append(
                PluginSpec(
                    name=ep.name,
                    value=ep.value,
                    distribution=dist.name if dist else "unknown",
                    version=dist.version if dist else "unknown",
                )
            )
        return cls(specs, allowed=allowed)

    @classmethod
    def from_classes(cls, *engines: type[Engine]) -> Registry:
        """A registry of in-memory engine classes (for tests and embedding)."""
        specs = [
            PluginSpec(e.name, f"{e.__module__}:{e.__qualname__}", "in-memory", "0")
            for e in engines
        ]
        return cls(specs, classes={e.name: e for e in engines})

    def specs(self) -> list[PluginSpec]:
        """The discovered plugins the operator allows, sorted by name."""
        return [s for s in self._specs.values() if self._is_allowed(s.name)]

    def _is_allowed(self, name: str) -> bool:
        return self._allowed is None or name in self._allowed

    def spec(self, name: str) -> PluginSpec:
        if name not in self._specs:
            known = ", ".join(sorted(self._specs)) or "none"
            raise EngineUnavailable(
                f"no engine plugin named {name!r} is installed (installed: {known}); "
                f"install its distribution, e.g. cratebridge-{name}",
                where=f"engine {name}",
            )
        if not self._is_allowed(name):
            raise EngineUnavailable(
                f"engine {name!r} is installed but not allowed by the operator's "
                "[engines] allow list",
                where=f"engine {name}",
            )
        return self._specs[name]

    def load_class(self, name: str) -> type[Engine]:
        """Import one plugin and return its engine class."""
        spec = self.spec(name)
        if name in self._classes:
            return _of_this_interface(spec, self._classes[name])
        ep = importlib.metadata.EntryPoint(name=spec.name, value=spec.value,
                                           group=ENTRY_POINT_GROUP)
        try:
            loaded = ep.load()
        except Exception as cause:  # any import failure is the plugin's, named as such
            raise FailedToLoadPlugin(spec.name, spec.distribution, cause) from cause
        if not (isinstance(loaded, type) and issubclass(loaded, Engine)):
            raise FailedToLoadPlugin(
                spec.name, spec.distribution,
                TypeError(f"{spec.value} is not a cratebridge Engine subclass"),
            )
        self._classes[name] = _of_this_interface(spec, loaded)
        return loaded

    def load(self, name: str, settings: Mapping[str, object] | None = None) -> Engine:
        """Import one plugin and return a fresh engine with the operator's settings."""
        return self.load_class(name)(settings)

    def choose(self, language: Language, requested: str | None,
               configured: Mapping[str, str]) -> str:
        """The engine name for a language: the caller's, the operator's, then the default."""
        name = requested or configured.get(language.short) or DEFAULT_ENGINES[language]
        engine = self.load_class(name)
        if engine.language is not language:
            error = UsageError if requested else EngineUnavailable
            raise error(
                f"engine {name!r} runs {engine.language.short}, but the workflow is "
                f"{language.short}",
                where="--engine" if requested else f"engine {name}",
            )
        return name


def _of_this_interface(spec: PluginSpec, engine: type[Engine]) -> type[Engine]:
    """``engine``, if it was written for this plugin interface (the same major version)."""
    wanted = str(getattr(engine, "interface", ""))
    if wanted.split(".")[0] != INTERFACE_VERSION.split(".")[0]:
        raise FailedToLoadPlugin(
            spec.name, spec.distribution,
            TypeError(f"it was written for plugin interface {wanted or '?'}, and this "
                      f"cratebridge has interface {INTERFACE_VERSION}: install a version of "
                      "the plugin made for it"),
        )
    return engine
