"""Exceptions raised by phaser. Each message says what went wrong and what to do."""

from __future__ import annotations


def did_you_mean(name: object, candidates: object) -> str:
    """``"; did you mean 'x'?"`` for the closest candidate (difflib, cutoff 0.6), or ``""``."""
    import difflib

    if not isinstance(name, str):
        return ""
    close = difflib.get_close_matches(name, [c for c in candidates if isinstance(c, str)], n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


class PhaserError(Exception):
    """Base class of every error phaser raises on purpose."""


class PluginError(PhaserError):
    """A plugin could not be loaded or registered something invalid."""


class PluginLoadError(PluginError):
    """A plugin's entry point failed to import."""

    def __init__(self, plugin: str, distribution: str | None, original: BaseException):
        self.plugin = plugin
        self.distribution = distribution
        self.original = original
        where = f" (distribution {distribution})" if distribution else ""
        super().__init__(
            f"plugin {plugin!r}{where} failed to load: "
            f"{type(original).__name__}: {original}. "
            f"Fix or uninstall it, or set PHASER_DISABLE_PLUGINS={plugin} to skip it."
        )


class DuplicateComponentError(PluginError):
    """Two plugins registered the same name for the same kind of component."""


class UnknownComponentError(PhaserError):
    """A plan or a call named a component that nobody registered."""

    def __init__(self, kind: str, name: str, message: str):
        self.kind = kind
        self.name = name
        super().__init__(message)


class BackendUnavailable(PhaserError):
    """A backend's array library is not installed or has no device here."""


class PlanError(PhaserError):
    """A plan file is invalid. ``errors`` holds every problem found, not just the first."""

    def __init__(self, errors: list, source: str | None = None):
        self.errors = list(errors)
        self.source = source
        lines = [str(e) for e in self.errors]
        super().__init__("\n".join(lines) if lines else "invalid plan")


class DataError(PhaserError):
    """Raw data is missing, malformed or inconsistent with the plan."""


class StateFileError(PhaserError):
    """A state file cannot be read (wrong format, version or layout)."""
