"""The plugin manager and the registry of named components.

The registry is built lazily, once per process (:func:`get_registry`): every distribution
that declares the ``phaser.plugins`` entry-point group is imported, its registration
hooks are called with a ``register`` callback, and each registered name is recorded with
the plugin and distribution that provided it. ``phaser_std`` is found the same way and
cannot be disabled.
"""

from __future__ import annotations

import contextvars
import importlib
import importlib.metadata as md
import os
import re
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterable, Iterator

import attrs
import pluggy

from . import hookspecs
from .config import env_enabled
from .errors import (
    did_you_mean,
    DuplicateComponentError,
    PluginError,
    PluginLoadError,
    UnknownComponentError,
)

#: Component kinds, in the order ``phaser plugins`` lists them, with the hook filling each.
KINDS: dict[str, str] = {
    "backend": "register_backends",
    "loader": "register_loaders",
    "preprocessor": "register_preprocessors",
    "probe_initializer": "register_initializers",
    "object_initializer": "register_initializers",
    "scan_initializer": "register_initializers",
    "noise_model": "register_noise_models",
    "regularizer": "register_regularizers",
    "solver": "register_solvers",
    "schedule": "register_schedules",
    "engine": "register_engines",
    "observer": "register_observers",
}

ESSENTIAL_PLUGINS = ("phaser_std",)
#: what a registered name or alias may be
_NAME = re.compile(r"[a-z0-9][a-z0-9_]*")
#: phaser's own packages: never a plugin's or a local component's code
_OWN_PACKAGES = frozenset({"phaser_core", "phaser_std"})
DISABLE_ENV = "PHASER_DISABLE_PLUGINS"
LOCAL_ENV = "PHASER_ALLOW_LOCAL_COMPONENTS"

_INIT_TARGETS = {"probe": "probe_initializer", "object": "object_initializer", "scan": "scan_initializer"}


@attrs.frozen
class Owner:
    """Who provided a component: the plugin (entry-point name) and its distribution."""

    plugin: str
    distribution: str | None = None
    version: str | None = None

    def __str__(self) -> str:
        if self.distribution is None:
            return self.plugin
        return f"{self.distribution} {self.version}" if self.version else self.distribution


@attrs.frozen
class Component:
    """One registered component: a kind, a name, the object and its config class."""

    kind: str
    name: str
    obj: Any
    config: type | None
    owner: Owner
    aliases: tuple[str, ...] = ()
    doc: str = ""
    meta: dict = attrs.field(factory=dict)

    def make_config(self, **values) -> Any:
        """Build this component's config from keyword values (defaults for the rest)."""
        return self.config(**values) if self.config is not None else None


def _first_doc_line(obj: Any) -> str:
    doc = getattr(obj, "__doc__", None) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


#: folders a local component's module (``module:attr``) is also looked for in, beside
#: ``sys.path``: the plan's folder and the working folder (:func:`local_component_folders`)
_LOCAL_FOLDERS: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("phaser_local_folders", default=())


@contextmanager
def local_component_folders(*folders: Any) -> Iterator[None]:
    """Within the block, a local component's module that is not importable from ``sys.path``
    is looked for in ``folders`` too (``load_plan``: the plan's folder and the working folder,
    where a lab keeps the module it tries; the console script's ``sys.path`` has neither)."""
    token = _LOCAL_FOLDERS.set(tuple(str(Path(f).resolve()) for f in folders if f is not None))
    try:
        yield
    finally:
        _LOCAL_FOLDERS.reset(token)


def _import_local_module(module_name: str) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        top = module_name.split(".")[0]
        folders = [f for f in dict.fromkeys(_LOCAL_FOLDERS.get()) if f not in sys.path
                   and (Path(f, top).is_dir() or Path(f, top + ".py").is_file())]
        if exc.name != top or not folders:
            raise
    # appended, not prepended: an installed package of the same name keeps precedence, and
    # the folder stays on the path for the module's own later imports
    sys.path.extend(folders)
    return importlib.import_module(module_name)


class Registry:
    """Every component known to this process, by kind and name."""

    def __init__(self) -> None:
        self._by_kind: dict[str, dict[str, Component]] = {k: {} for k in KINDS}
        self._aliases: dict[str, dict[str, str]] = {k: {} for k in KINDS}
        self.plugins: dict[str, Owner] = {}
        self.plugin_manager: pluggy.PluginManager | None = None
        #: the top-level module names of local components a plan named ("mymod:Class")
        self.local_modules: set[str] = set()
        #: the plugins the build skipped (``PHASER_DISABLE_PLUGINS``)
        self.disabled: list[str] = []

    # -- registration -------------------------------------------------------------------

    def add(self, kind: str, name: str, obj: Any, owner: Owner, *, config: type | None = None,
            aliases: Iterable[str] = (), doc: str | None = None, **meta: Any) -> Component:
        """Record one component; a name or alias already taken is an error naming both owners."""
        if kind not in self._by_kind:
            raise PluginError(f"{owner}: unknown component kind {kind!r}; kinds are {', '.join(KINDS)}")
        if config is not None and not attrs.has(config):
            raise PluginError(f"{owner}: config for {kind} {name!r} must be an attrs class, got {config!r}")
        for key in (name, *aliases):
            if not _writable_name(key):
                raise PluginError(f"{owner}: {kind} name {key!r} must be lowercase letters, digits and underscores "
                                  "that YAML reads as text (plans name it as `type: NAME`, and a colon marks a local "
                                  "component)")
        comp = Component(kind, name, obj, config, owner, tuple(aliases),
                         doc if doc is not None else _first_doc_line(obj), dict(meta))
        for key in (name, *comp.aliases):
            existing = self._find(kind, key)
            if existing is not None:
                raise DuplicateComponentError(
                    f"{kind} {key!r} is registered twice: by {existing.owner} "
                    f"(plugin {existing.owner.plugin}) and by {owner} (plugin {owner.plugin}). "
                    "Uninstall one of them or rename the component."
                )
        self._by_kind[kind][name] = comp
        for alias in comp.aliases:
            self._aliases[kind][alias] = name
        return comp

    def _register_callback(self, hook: str, owner: Owner) -> Callable[..., Component]:
        def register(name: str, obj: Any, *, config: type | None = None, aliases: Iterable[str] = (),
                     doc: str | None = None, **meta: Any) -> Component:
            if hook == "register_initializers":
                target = meta.pop("target", None)
                if target not in _INIT_TARGETS:
                    raise PluginError(f"{owner}: initializer {name!r} needs target='probe', 'object' or 'scan'")
                kind = _INIT_TARGETS[target]
            else:
                kind = next(k for k, h in KINDS.items() if h == hook)
            return self.add(kind, name, obj, owner, config=config, aliases=aliases, doc=doc, **meta)

        return register

    # -- lookup -------------------------------------------------------------------------

    def _find(self, kind: str, name: str) -> Component | None:
        table = self._by_kind[kind]
        if name in table:
            return table[name]
        canonical = self._aliases[kind].get(name)
        return table.get(canonical) if canonical is not None else None

    def get(self, kind: str, name: str) -> Component:
        """The component ``name`` of ``kind``; unknown names raise with a suggestion and the inventory."""
        if kind not in self._by_kind:
            raise UnknownComponentError(kind, name, f"unknown component kind {kind!r}; kinds are {', '.join(KINDS)}")
        comp = self._find(kind, name)
        if comp is None:
            raise UnknownComponentError(kind, name, self.unknown_message(kind, name))
        return comp

    def __contains__(self, key: tuple[str, str]) -> bool:
        kind, name = key
        return kind in self._by_kind and self._find(kind, name) is not None

    def components(self, kind: str | None = None) -> list[Component]:
        """Registered components, of one kind or all, sorted by kind order then name."""
        kinds = [kind] if kind is not None else list(KINDS)
        return [c for k in kinds for _, c in sorted(self._by_kind[k].items())]

    def names(self, kind: str, **meta: Any) -> list[str]:
        """Names of ``kind`` whose meta matches, e.g. ``names("solver", role="gradient")``."""
        return [c.name for c in self.components(kind) if all(c.meta.get(k) == v for k, v in meta.items())]

    def inventory(self, kind: str, **meta: Any) -> str:
        """``epie, lsqml (phaser_std); mypie (phaser-mylab 0.3)``: names grouped by owner."""
        groups: dict[str, list[str]] = {}
        for comp in self.components(kind):
            if all(comp.meta.get(k) == v for k, v in meta.items()):
                groups.setdefault(str(comp.owner), []).append(comp.name)
        return "; ".join(f"{', '.join(names)} ({owner})" for owner, names in groups.items()) or "none"

    def unknown_message(self, kind: str, name: str, **meta: Any) -> str:
        label = kind.replace("_", " ")
        hint = did_you_mean(name, [*self._by_kind[kind], *self._aliases[kind]])
        skipped = f" (skipped by {DISABLE_ENV}: {', '.join(self.disabled)})" if self.disabled else ""
        return f"unknown {label} {name!r}{hint or ';'} available: {self.inventory(kind, **meta)}{skipped}"

    # -- local objects ------------------------------------------------------------------

    def resolve(self, kind: str, name: str, *, allow_local: bool | None = None) -> Component:
        """Look ``name`` up, accepting ``"package.module:attr"`` for a local object.

        A local object must satisfy the kind's protocol like a registered one; its config
        class is its ``Config`` attribute (or none). ``allow_local=False`` (or the
        environment variable ``PHASER_ALLOW_LOCAL_COMPONENTS=0``) forbids the form, as a
        job server accepting plans from others should.
        """
        if ":" not in name:
            return self.get(kind, name)
        if allow_local is None:
            allow_local = env_enabled(LOCAL_ENV)
        if not allow_local:
            raise UnknownComponentError(kind, name, f"local component {name!r} is not allowed here "
                                        "(plans may only name registered components)")
        module_name, _, attr = name.partition(":")
        try:
            obj = _import_local_module(module_name)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as exc:
            raise UnknownComponentError(kind, name, f"cannot import local {kind.replace('_', ' ')} {name!r}: {exc}") from exc
        config = getattr(obj, "Config", None)
        if config is not None and not attrs.has(config):
            raise UnknownComponentError(kind, name, f"{name}.Config must be an attrs class")
        self.local_modules.add(module_name.split(".")[0])
        return Component(kind, name, obj, config, Owner(plugin=module_name), doc=_first_doc_line(obj),
                         meta=dict(getattr(obj, "phaser_meta", {}) or {}))

    # -- building -----------------------------------------------------------------------

    @classmethod
    def build(cls, *, entry_points: bool = True, extra_plugins: Iterable[tuple[str, ModuleType | object]] = (),
              disable: Iterable[str] | None = None) -> "Registry":
        """Load plugins and call every registration hook.

        :param entry_points: discover plugins in the ``phaser.plugins`` group.
        :param extra_plugins: ``(name, module_or_object)`` pairs registered as well (tests).
        :param disable: plugin names to skip; defaults to ``$PHASER_DISABLE_PLUGINS``
            (comma-separated). ``phaser_std`` cannot be disabled.
        """
        if disable is None:
            disable = [p.strip() for p in os.environ.get(DISABLE_ENV, "").split(",") if p.strip()]
        disable = set(disable)
        blocked = disable & set(ESSENTIAL_PLUGINS)
        if blocked:
            raise PluginError(f"plugin {sorted(blocked)[0]!r} is essential and cannot be disabled")
        pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        pm.add_hookspecs(hookspecs)
        owners: dict[str, Owner] = {}
        loaded = set()
        if entry_points:
            for ep in md.entry_points(group=hookspecs.ENTRY_POINT_GROUP):
                if ep.name in disable or ep.name in loaded:
                    continue
                dist = getattr(ep, "dist", None)
                owner = Owner(ep.name, dist.metadata["Name"] if dist else None, dist.version if dist else None)
                try:
                    plugin = ep.load()
                except Exception as exc:  # noqa: BLE001 - re-raised with the plugin's name
                    raise PluginLoadError(ep.name, owner.distribution, exc) from exc
                _register_plugin(pm, plugin, ep.name, owner.distribution)
                owners[ep.name] = owner
                loaded.add(ep.name)
        for name, plugin in extra_plugins:
            if name in disable or name in loaded:
                continue
            if isinstance(plugin, str):
                try:
                    plugin = importlib.import_module(plugin)
                except Exception as exc:  # noqa: BLE001
                    raise PluginLoadError(name, None, exc) from exc
            _register_plugin(pm, plugin, name, None)
            owners[name] = Owner(name)
            loaded.add(name)
        for essential in ESSENTIAL_PLUGINS:
            if essential not in loaded:
                try:
                    module = importlib.import_module(f"{essential}.plugin")
                except Exception as exc:  # noqa: BLE001
                    raise PluginLoadError(essential, None, exc) from exc
                _register_plugin(pm, module, essential, None)
                owners[essential] = _owner_from_distribution(essential)
        try:
            pm.check_pending()
        except pluggy.PluginValidationError as exc:
            raise _unknown_hook_error(pm, owners, exc) from exc

        registry = cls()
        registry.plugin_manager = pm
        registry.plugins = owners
        registry.disabled = sorted(disable)
        hooks = sorted(set(KINDS.values()))
        # Call each plugin's implementation separately so every name records its owner.
        for plugin_name, owner in owners.items():
            plugin = pm.get_plugin(plugin_name)
            for hook in hooks:
                impl = getattr(plugin, hook, None)
                if impl is not None and pm.parse_hookimpl_opts(plugin, hook) is not None:
                    try:
                        impl(register=registry._register_callback(hook, owner))
                    except PluginError:
                        raise
                    except Exception as exc:  # noqa: BLE001 - re-raised with the plugin's name
                        raise PluginLoadError(plugin_name, owner.distribution, exc) from exc
        return registry

    def culprit(self, error: BaseException) -> str | None:
        """Who raised ``error``, when it was not phaser: the innermost frame of its
        traceback that runs a third-party plugin's code or a plan's local component, as
        "the plugin 'name' (distribution) at file:line in function"; None when no such
        frame (phaser's own code, or a library it calls)."""
        modules: dict[str, list[str]] = {}  # a plugin's module, and its top-level package
        if self.plugin_manager is not None:
            for name in self.plugins:
                plugin = self.plugin_manager.get_plugin(name)
                module = str(plugin.__name__ if isinstance(plugin, ModuleType)
                             else getattr(plugin, "__module__", None) or type(plugin).__module__)
                if name in ESSENTIAL_PLUGINS or module.split(".")[0] in _OWN_PACKAGES | {"builtins", "types"}:
                    continue
                for key in {module, module.split(".")[0]}:
                    modules.setdefault(key, []).append(name)
        frames = []
        tb = error.__traceback__
        while tb is not None:
            frames.append(tb)
            tb = tb.tb_next
        for tb in reversed(frames):
            module = str(tb.tb_frame.f_globals.get("__name__", ""))
            parts = module.split(".")
            # the plugin whose module holds the frame (longest match), else its package's
            names = next((modules[".".join(parts[:k])] for k in range(len(parts), 0, -1)
                          if ".".join(parts[:k]) in modules), None)
            code = tb.tb_frame.f_code
            at = f"at {code.co_filename}:{tb.tb_lineno} in {code.co_name}"
            if names:
                return f"{self._plugins_text(sorted(set(names)))} {at}"
            if parts[0] in self.local_modules and parts[0] not in _OWN_PACKAGES:
                return f"the plan's local component module {parts[0]!r} {at}"
        return None

    def _plugins_text(self, names: list[str]) -> str:
        """``the plugin 'x' (distribution d 1.0; PHASER_DISABLE_PLUGINS=x skips it)``, or
        the plugins of one package together."""
        if len(names) > 1:
            return f"one of the plugins {', '.join(map(repr, names))} ({DISABLE_ENV}=NAME skips one)"
        owner = self.plugins[names[0]]
        where = f"distribution {owner}; " if owner.distribution else ""
        return f"the plugin {names[0]!r} ({where}{DISABLE_ENV}={names[0]} skips it)"

    def call_register_commands(self, cli: Any) -> None:
        """Call every plugin's ``register_commands(cli)``."""
        if self.plugin_manager is not None:
            self.plugin_manager.hook.register_commands(cli=cli)


def _writable_name(key: Any) -> bool:
    """Whether a plan can write ``key`` as ``type: key``: lowercase letters, digits and
    underscores that YAML reads back as the same text (not ``null``, ``true``, ``1e5``)."""
    if not isinstance(key, str) or not _NAME.fullmatch(key):
        return False
    if key not in ("null", "true", "false") and not key[0].isdigit():
        return True
    from ruamel.yaml import YAML

    return YAML(typ="safe", pure=True).load(key) == key


def _unknown_hook_error(pm: Any, owners: dict[str, Owner], exc: Any) -> PluginError:
    """A hook implementation whose name is no hook: the plugin by its name and
    distribution, the nearest hook names, and how to skip it."""
    name = pm.get_name(exc.plugin) or repr(exc.plugin)
    found = re.search(r"unknown hook '([^']+)'", str(exc))
    hook = found.group(1) if found else "?"
    owner = owners.get(name)
    where = f" (distribution {owner.distribution})" if owner is not None and owner.distribution else ""
    specs = sorted(n for n in dir(hookspecs) if n.startswith("register_"))
    close = did_you_mean(hook, specs)
    return PluginError(f"plugin {name!r}{where} implements {hook!r}, which is no hook{close}{' ' if close else '. '}"
                       f"The hooks: {', '.join(specs)}. Fix it, or set {DISABLE_ENV}={name} to skip the plugin.")


def _owner_from_distribution(plugin: str) -> Owner:
    try:
        dist = md.distribution("phaser-ptycho")
        return Owner(plugin, dist.metadata["Name"], dist.version)
    except md.PackageNotFoundError:
        return Owner(plugin)


_lock = threading.Lock()
_registry: Registry | None = None


def _register_plugin(pm: Any, plugin: Any, name: str, distribution: str | None) -> None:
    """``pm.register(plugin)``; a hook implementation that does not match its hook
    specification (a misspelt parameter) is a :class:`PluginLoadError` naming the plugin,
    its distribution and how to skip it, like an import failure."""
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:
        flat = pluggy.PluginValidationError(exc.plugin, " ".join(str(exc).split()))  # pluggy's spans lines
        raise PluginLoadError(name, distribution, flat) from exc


def get_registry() -> Registry:
    """The process-wide registry, built on first use (idempotent, thread-safe)."""
    global _registry
    with _lock:
        if _registry is None:
            _registry = Registry.build()
        return _registry


def set_registry(registry: Registry | None) -> None:
    """Replace the process-wide registry (tests; ``None`` rebuilds on next use)."""
    global _registry
    with _lock:
        _registry = registry
