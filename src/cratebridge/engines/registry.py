"""Finding engine and language plugins without importing them, and loading them.

Discovery reads the ``cratebridge.engines`` and ``cratebridge.languages`` entry
points (name, value, distribution, version) into small frozen records; nothing
is imported until :meth:`Registry.load` is asked for one engine by name, or
:meth:`Registry.languages` for the known languages (the built-ins and every
registered one). A registry is an instance: tests build one from in-memory
engine classes and languages with :meth:`Registry.from_classes`.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from cratebridge.engines.installed import entry_points
from cratebridge.engines.interface import INTERFACE_VERSION, Engine
from cratebridge.errors import EngineUnavailable, FailedToLoadPlugin, UsageError
from cratebridge.intake.request import BUILTIN_LANGUAGES, Language

__all__ = ["DEFAULT_ENGINES", "ENTRY_POINT_GROUP", "LANGUAGE_GROUP", "PluginSpec", "Registry",
           "discover", "language_names", "load_object"]

ENTRY_POINT_GROUP = "cratebridge.engines"
#: Entry points naming a :class:`Language` constant (``module:NAME``), by its short name.
LANGUAGE_GROUP = "cratebridge.languages"

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


def discover(group: str) -> list[PluginSpec]:
    """The entry points of ``group``, sorted and de-duplicated by name; none imported.

    Read through :mod:`cratebridge.engines.installed`: once per installation, not
    once per process.
    """
    found: dict[str, PluginSpec] = {}
    for row in entry_points(group):
        spec = PluginSpec(*row)
        found[spec.name] = min(spec, found.get(spec.name, spec))
    return sorted(found.values())


#: An entry point's value, as the packaging specification writes it.
_VALUE = re.compile(r"(?P<module>[\w.]+)\s*(:\s*(?P<attr>[\w.]+)\s*)?(\[.*\]\s*)?")


def load_object(value: str) -> object:
    """What an entry point's value (``module`` or ``module:attr.attr``) names, imported."""
    match = _VALUE.fullmatch(value.strip())
    if match is None:
        raise ValueError(f"{value!r} is not an entry point's value (module:attribute)")
    loaded: object = importlib.import_module(match["module"])
    for name in (match["attr"] or "").split("."):
        if name:
            loaded = getattr(loaded, name)
    return loaded


def language_names() -> frozenset[str]:
    """The short names of every known language: the built-ins and the registered ones
    (read from the entry points' names, importing nothing)."""
    return frozenset(language.short for language in BUILTIN_LANGUAGES) | {
        spec.name for spec in discover(LANGUAGE_GROUP)}


class Registry:
    """The engines this process may use, by name, and the languages it knows."""

    def __init__(
        self,
        specs: Iterable[PluginSpec] = (),
        classes: Mapping[str, type[Engine]] | None = None,
        allowed: Iterable[str] | None = None,
        language_specs: Iterable[PluginSpec] = (),
        languages: Iterable[Language] = (),
    ) -> None:
        """``specs`` are engine entry points, ``classes`` engines already imported (by
        name); ``allowed`` the operator's allow list of engines. ``language_specs`` are
        language entry points; ``languages`` languages already imported."""
        self._specs: dict[str, PluginSpec] = {}
        for spec in sorted(specs):
            self._specs.setdefault(spec.name, spec)
        self._classes: dict[str, type[Engine]] = dict(classes or {})
        self._allowed = frozenset(allowed) if allowed is not None else None
        self._language_specs: dict[str, PluginSpec] = {}
        for spec in sorted(language_specs):
            self._language_specs.setdefault(spec.name, spec)
        self._given_languages = tuple(languages)
        self._languages: tuple[Language, ...] | None = None

    @classmethod
    def from_entry_points(cls, allowed: Iterable[str] | None = None) -> Registry:
        """Every installed engine and language plugin (de-duplicated by name), none imported."""
        return cls(discover(ENTRY_POINT_GROUP), allowed=allowed,
                   language_specs=discover(LANGUAGE_GROUP))

    @classmethod
    def from_classes(cls, *engines: type[Engine],
                     languages: Iterable[Language] = ()) -> Registry:
        """A registry of in-memory engine classes and the ``languages`` they add to the
        built-ins (for tests and embedding)."""
        specs = [
            PluginSpec(e.name, f"{e.__module__}:{e.__qualname__}", "in-memory", "0")
            for e in engines
        ]
        return cls(specs, classes={e.name: e for e in engines}, languages=languages)

    def language_specs(self) -> list[PluginSpec]:
        """The discovered language plugins the operator allows, sorted by name: all of
        them, or with an allow list those of the distributions of allowed engines."""
        if self._allowed is None:
            return list(self._language_specs.values())
        allowed_dists = {s.distribution for s in self.specs()}
        return [s for s in self._language_specs.values() if s.distribution in allowed_dists]

    def languages(self) -> tuple[Language, ...]:
        """Every language this registry knows: the built-ins, then the registered ones
        by short name. The first call imports the language plugins; one that fails is
        :class:`FailedToLoadPlugin`, as is a language clashing with another."""
        if self._languages is None:
            in_memory = PluginSpec("", "", "in-memory", "0")
            loaded = [*((replace(in_memory, name=lang.short), lang)
                        for lang in self._given_languages),
                      *((spec, _load_language(spec)) for spec in self.language_specs())]
            known = list(BUILTIN_LANGUAGES)
            for spec, language in sorted(loaded, key=lambda pair: pair[0]):
                _check_new_language(spec, language, known)
                known.append(language)
            self._languages = tuple(known)
        return self._languages

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
            return self._checked(spec, self._classes[name])
        try:
            loaded = load_object(spec.value)
        except Exception as cause:  # any import failure is the plugin's, named as such
            raise _engine_failure(spec, cause) from cause
        if not (isinstance(loaded, type) and issubclass(loaded, Engine)):
            raise _engine_failure(
                spec, TypeError(f"{spec.value} is not a cratebridge Engine subclass"))
        self._classes[name] = self._checked(spec, loaded)
        return loaded

    def _checked(self, spec: PluginSpec, engine: type[Engine]) -> type[Engine]:
        """``engine``, if written for this interface and in a language this registry knows."""
        _of_this_interface(spec, engine)
        language = getattr(engine, "language", None)
        if language not in self.languages():
            known = ", ".join(lang.short for lang in self.languages())
            shown = language.short if isinstance(language, Language) else repr(language)
            raise _engine_failure(
                spec,
                TypeError(f"its language {shown} is not a known language (known: {known}); "
                          f"its distribution must register it under the {LANGUAGE_GROUP} "
                          "entry points"),
            )
        return engine

    def load(self, name: str, settings: Mapping[str, object] | None = None) -> Engine:
        """Import one plugin and return a fresh engine with the operator's settings."""
        return self.load_class(name)(settings)

    def choose(self, language: Language, requested: str | None,
               configured: Mapping[str, str]) -> str:
        """The engine name for a language: the caller's, the operator's, then the default
        (the built-in default, else an engine named like the language's short name)."""
        name = requested or configured.get(language.short) or DEFAULT_ENGINES.get(language)
        if name is None and language.short in self._specs:
            name = language.short
        if name is None:
            raise EngineUnavailable(
                f"no engine is chosen for {language.short} workflows: name one with --engine "
                f'or in the configuration ([engines] {language.short} = "<engine>")',
                where=f"language {language.short}",
            )
        engine = self.load_class(name)
        if engine.language != language:
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
        raise _engine_failure(
            spec,
            TypeError(f"it was written for plugin interface {wanted or '?'}, and this "
                      f"cratebridge has interface {INTERFACE_VERSION}: install a version of "
                      "the plugin made for it"),
        )
    return engine


def _load_language(spec: PluginSpec) -> Language:
    """Import one language entry point; any failure is one :class:`FailedToLoadPlugin`."""
    try:
        loaded = load_object(spec.value)
    except Exception as cause:  # any import failure is the plugin's, named as such
        raise _language_failure(spec, cause) from cause
    if not isinstance(loaded, Language):
        raise _language_failure(spec, TypeError(f"{spec.value} is not a cratebridge Language"))
    if loaded.short != spec.name:
        raise _language_failure(spec, ValueError(
            f"{spec.value} has the short name {loaded.short!r}; the entry point's name must "
            "be the language's short name"))
    return loaded


def _check_new_language(spec: PluginSpec, language: Language, known: list[Language]) -> None:
    for other in known:
        if language.short == other.short or language.value == other.value:
            raise _language_failure(spec, ValueError(
                f"language {language.short} ({language.value}) clashes with the known "
                f"language {other.short} ({other.value}); uninstall one of them"))


def _engine_failure(spec: PluginSpec, cause: BaseException) -> FailedToLoadPlugin:
    """:class:`FailedToLoadPlugin` for an engine entry point (exit 5)."""
    return FailedToLoadPlugin(spec.name, spec.distribution, cause, group=ENTRY_POINT_GROUP)


def _language_failure(spec: PluginSpec, cause: BaseException) -> FailedToLoadPlugin:
    """:class:`FailedToLoadPlugin` for a language entry point (exit 5), named as one."""
    return FailedToLoadPlugin(spec.name, spec.distribution, cause, group=LANGUAGE_GROUP,
                              kind="language")
