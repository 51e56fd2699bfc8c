"""``--set path=value`` overrides: fill the defaults they land in, and say which one erred.

:func:`phaser_core.plan.apply_overrides` edits the raw plan mapping. Two helpers here make
an override behave like the same key written in the file:

- :func:`missing_node` gives the mapping a missing key along an override's path starts
  from: ``{type: NAME}`` of the field's default component (``--set init.probe.defocus_A=20``
  on a plan without ``init:`` merges with the default ``focused`` probe), else ``{}``;
- :func:`fill_default_types` does the same for a plan file's component mappings that
  name no ``type``;
- :func:`attribute_issues` reports a problem inside a value an override wrote (or a
  mapping it created) at the ``--set`` argument, not at the plan file's position.
"""

from __future__ import annotations

import typing
from types import NoneType, UnionType
from typing import Any, Iterable, Union

import attrs

from .config import ComponentSpec
from .plan_errors import PlanIssue, to_issues


def _strip_optional(t: Any) -> Any:
    """``X`` of ``X | None``; of a union with one component among plain values (``float |
    schedule``), the component: a path that goes on below it names the component's keys."""
    if typing.get_origin(t) in (Union, UnionType):
        members = [a for a in typing.get_args(t) if a is not NoneType]
        if len(members) == 1:
            return members[0]
        specs = [a for a in members if isinstance(a, type) and issubclass(a, ComponentSpec)]
        return specs[0] if len(specs) == 1 else None
    return t


def child_schema(schema: Any, part: str | int, node: Any, registry: Any) -> tuple[Any, Any]:
    """``(type, default)`` of ``part`` in a node of type ``schema`` (an attrs class, a spec
    class, ``tuple[X, ...]``), ``node`` being that node's raw value; ``(None, NOTHING)``
    when unknown (a plugin component the registry cannot resolve, a free mapping)."""
    nothing = (None, attrs.NOTHING)
    if schema is None:
        return nothing
    if isinstance(part, int):
        args = typing.get_args(schema)
        return (_strip_optional(args[0]), attrs.NOTHING) if args else nothing
    if isinstance(schema, type) and issubclass(schema, ComponentSpec):
        if registry is None or not isinstance(node, dict) or not isinstance(node.get("type"), str):
            return nothing
        if ":" in node["type"]:
            # a local component ("module:attr"): importing it here would run its code before
            # load_plan's allow_local check (--no-local) could refuse it; no schema below
            return nothing
        try:
            schema = registry.resolve(schema.kind, node["type"]).config
        except Exception:  # noqa: BLE001 - an unknown or broken component: structuring reports it
            return nothing
    if not (isinstance(schema, type) and attrs.has(schema)):
        return nothing
    fields = {f.alias or f.name: f for f in attrs.fields(schema)}
    if part not in fields:
        return nothing
    try:
        hints = typing.get_type_hints(schema)
    except Exception:  # noqa: BLE001 - unresolvable annotations: no schema below
        hints = {}
    f = fields[part]
    default = f.default
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        default = default.factory() if not default.takes_self else attrs.NOTHING
    return _strip_optional(hints.get(f.name)), default


def missing_node(default: Any) -> dict:
    """The mapping for a key an override's path creates: ``{type: NAME}`` when the key's
    default is a component (the override then merges with it), with the default's own
    plain settings where they differ from its config class's (the gradient engine's
    default solvers), else ``{}``."""
    if not isinstance(default, ComponentSpec):
        return {}
    node: dict = {"type": default.type}
    config = getattr(default, "config", None)
    if config is not None and attrs.has(type(config)):
        for f in attrs.fields(type(config)):
            value = getattr(config, f.name)
            plain = value is None or isinstance(value, (bool, int, float, str))
            if plain and (f.default is attrs.NOTHING or isinstance(f.default, attrs.Factory)  # type: ignore[arg-type]
                          or value != f.default):
                node[f.alias or f.name] = value
    return node


def fill_default_types(node: Any, schema: Any, registry: Any) -> None:
    """Give every component mapping of the raw plan ``node`` (of type ``schema``) that names
    no ``type`` its field's default component, in place, as an override does
    (:func:`missing_node`): ``init: {probe: {defocus_A: 150}}`` sets the default
    ``focused`` probe's defocus. A mapping whose field has no default component is left for
    structuring to report its missing ``type``."""
    if isinstance(node, list):
        for i, item in enumerate(node):
            fill_default_types(item, child_schema(schema, i, node, registry)[0], registry)
        return
    if not isinstance(node, dict):
        return
    for key in list(node):
        child = node[key]
        sub, default = child_schema(schema, key, node, registry)
        if isinstance(child, dict) and "type" not in child and isinstance(default, ComponentSpec):
            for k, v in missing_node(default).items():
                child.setdefault(k, v)
        fill_default_types(child, sub, registry)


def attribute_issues(raws: Iterable[Any], owned: list[tuple[tuple, str]], root: Any,
                     file: str | None) -> list[PlanIssue]:
    """:func:`~phaser_core.plan_errors.to_issues`, except that a problem whose plan path
    lies under an override's ``owned`` path (what it wrote or created) is reported at
    ``--set 'TEXT'`` instead of the plan file."""
    mine: list[PlanIssue] = []
    rest = []
    for raw in raws:
        text = next((t for path, t in reversed(owned) if tuple(raw.path[:len(path)]) == path), None)
        if text is None:
            rest.append(raw)
        else:
            mine.append(PlanIssue(raw.message, raw.display, f"--set {text!r}"))
    return to_issues(rest, root, file) + mine
