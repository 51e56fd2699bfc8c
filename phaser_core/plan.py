"""Plan files: YAML or JSON -> a frozen, fully validated :class:`Plan`.

The steps (:func:`load_plan`):

1. parse with ruamel.yaml's round-trip loader so every node keeps its line and column
   (JSON is parsed the same way: it is YAML);
2. check ``file_type: phaser_plan`` and migrate older ``version`` s with the pure functions
   in :mod:`phaser_core.plan_migrate`;
3. apply ``--set path=value`` overrides to the raw mapping;
4. structure with cattrs into the attrs classes below. Each ``*Spec`` field
   (``{type: NAME, ...config}``) is structured by one hook that looks ``NAME`` up in the
   *live* registry and structures the other keys into that component's config class, so a
   third-party component is usable by name with no change here. Unknown keys are errors;
5. fill every default (including default components' configs) and run cross-field checks.

Every problem found is collected and raised together as one
:class:`phaser_core.errors.PlanError` whose ``errors`` are
:class:`phaser_core.plan_errors.PlanIssue` (``file:line:col: path: message``).
"""

from __future__ import annotations

import copy
import io
import json
import os
import re
import typing
from collections.abc import Mapping
from collections.abc import Sequence as Sequence_abc
from pathlib import Path
from types import NoneType, UnionType
from typing import Any, Literal, Union

import attrs
import cattrs
import numpy as np
from cattrs.gen import make_dict_structure_fn
from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from .config import (
    ComponentSpec,
    EngineSpec,
    Flag,
    LoaderSpec,
    ObjectInitSpec,
    ObserverSpec,
    PreprocessorSpec,
    ProbeInitSpec,
    ScanInitSpec,
    in_range,
    param,
)
from .errors import PlanError, UnknownComponentError, did_you_mean
from .files import atomic_write, read_plan_dir
from .plan_errors import (
    Issue,
    IssueGroup,
    PlanIssue,
    collect,
    describe_value,
    failed_fields,
    format_path,
    to_issues,
    unknown_key_message,
    validator_attribute,
    yaml_syntax_error,
)
from .plan_migrate import CURRENT_VERSION, migrate
from .plan_overrides import attribute_issues, child_schema, fill_default_types, missing_node
from .registry import local_component_folders

FILE_TYPE = "phaser_plan"
DTYPES = ("float32", "float64")

__all__ = [
    "FILE_TYPE", "CURRENT_VERSION", "SlicesPlan", "InitPlan", "OutputPlan", "Plan",
    "load_plan", "plan_to_dict", "dump_plan", "apply_overrides", "make_converter", "PlanIssue",
]


# ---------------------------------------------------------------------------------------
# The plan classes
# ---------------------------------------------------------------------------------------


@attrs.frozen
class SlicesPlan:
    """Object slices: ``{n: 1}`` for a 2D object, ``{n: 20, total_thickness_A: 200}`` for multislice."""

    n: int = param(1, doc="number of object slices")
    total_thickness_A: float | None = param(None, unit="Å", doc="total object thickness, split evenly over n slices")
    thicknesses_A: tuple[float, ...] | None = param(None, unit="Å", doc="thickness of each slice (n values)")

    def resolve(self, current_total_A: float | None = None) -> np.ndarray:
        """The ``n`` slice thicknesses [Å]. Without a thickness in the plan: the
        ``current_total_A`` [Å] of the object being resliced (an engine's ``slices``) split
        evenly, or zeros for a single slice."""
        if self.thicknesses_A is not None:
            return np.asarray(self.thicknesses_A, dtype=np.float64)
        if self.total_thickness_A is not None:  # an explicit 0 too: slices of no thickness, as written
            return np.full(self.n, float(self.total_thickness_A) / self.n)
        if current_total_A:  # an object of no thickness gives none to split
            return np.full(self.n, float(current_total_A) / self.n)
        if self.n == 1:
            return np.zeros(1)
        raise ValueError(f"slices: n={self.n} needs total_thickness_A or thicknesses_A")


@attrs.frozen
class InitPlan:
    """How the first engine's state is made (ignored when a run resumes)."""

    probe: ProbeInitSpec = param(ProbeInitSpec("focused"), doc="probe initialiser")
    object: ObjectInitSpec = param(ObjectInitSpec("vacuum"), doc="object initialiser")
    scan: ScanInitSpec = param(ScanInitSpec("from_data"), doc="scan-position initialiser")
    state: str | None = param(None, doc="a state file (HDF5) to start from instead of the initialisers")


@attrs.frozen
class OutputPlan:
    """What the run writes besides the state file."""

    checkpoint_every: int = param(10, doc="write checkpoint.h5 every this many iterations (0: only at the end of "
                                                "each engine and on an interruption)",
                                  validator=in_range(0, hint="0: only at engine ends"))
    images: tuple[str, ...] = param(("object_phase", "object_phase_sum", "probe", "probe_recip"),
                                    doc="images written (TIFF + PNG)")
    image_every: int | None = param(None, doc="write images every this many iterations; null: at the end of each engine",
                                    validator=in_range(1, hint="or null for the end of each engine"))
    state_every: int | None = param(None, doc="keep the state every this many iterations (states/iterNNNNN.h5) and "
                                              "after each engine (states/engineN.h5); null: none kept",
                                    validator=in_range(1, hint="or null to keep no states"))


@attrs.frozen(kw_only=True)
class Plan:
    """A whole reconstruction: data, initial state, engines in order, observers, outputs."""

    file_type: str = param(FILE_TYPE, doc="always 'phaser_plan'")
    version: int = param(CURRENT_VERSION, doc="plan format version")
    name: str = param("phaser", doc="run name")
    backend: str = param("auto", doc="compute backend: auto (the fastest installed: jax on a GPU, else cupy "
                         "on a CUDA GPU, else jax, else numpy), numpy, jax, cupy or any registered backend")
    dtype: str = param("float32", doc="real dtype: float32 or float64")
    seed: int = param(0, doc="seed of every random stream", validator=in_range(0))
    raw_data: LoaderSpec = param(doc="the raw-data loader")
    post_load: tuple[PreprocessorSpec, ...] = param((), doc="steps applied to the loaded data, in order")
    init: InitPlan = param(InitPlan(), doc="initialisers")
    slices: SlicesPlan = param(SlicesPlan(), doc="object slices")
    engines: tuple[EngineSpec, ...] = param(doc="engines, run in order")
    observers: tuple[ObserverSpec, ...] = param((), doc="extra observers")
    output: OutputPlan = param(OutputPlan(), doc="outputs")


# ---------------------------------------------------------------------------------------
# Strict structuring
# ---------------------------------------------------------------------------------------


def _is_spec(t: Any) -> bool:
    return isinstance(t, type) and issubclass(t, ComponentSpec)


def _is_union(t: Any) -> bool:
    return typing.get_origin(t) in (Union, UnionType)


def _is_seq(t: Any) -> bool:
    if t is list or t is tuple:  # bare, as in `shape: tuple | None`
        return True
    origin = typing.get_origin(t)
    if origin in (list, tuple, Sequence_abc):
        args = typing.get_args(t)
        return origin is not tuple or (len(args) == 2 and args[1] is Ellipsis)
    return False


def _is_fixed_tuple(t: Any) -> bool:
    args = typing.get_args(t)
    return typing.get_origin(t) is tuple and bool(args) and Ellipsis not in args


def _is_dict(t: Any) -> bool:
    return t is dict or t is Mapping or typing.get_origin(t) in (dict, typing.Mapping, Mapping)


def describe_type(t: Any) -> str:
    """Words for what a plan key expects, for error messages and ``phaser describe``."""
    if t is int:
        return "an integer"
    if t is float:
        return "a number"
    if t is str:
        return "a string"
    if t is bool:
        return "true or false"
    if t is NoneType or t is None:
        return "null"
    if t is Path:
        return "a path"
    if t is Flag:
        return "true, false or {after, every, before}"
    if _is_spec(t):
        role = f"{t.role} " if t.role else ""
        return f"a {{type: NAME, ...}} mapping naming a {role}{t.kind.replace('_', ' ')}"
    if _is_union(t):
        return " or ".join(dict.fromkeys(describe_type(a) for a in typing.get_args(t)))
    if typing.get_origin(t) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(t))
    if _is_seq(t) or _is_fixed_tuple(t):
        return "a list"
    if attrs.has(t) or _is_dict(t):
        return "a mapping"
    return getattr(t, "__name__", str(t))


def _accepts_shape(t: Any, v: Any) -> bool:
    """Whether ``v`` has the right shape (mapping / list / scalar) for type ``t``."""
    if t is Flag:
        return isinstance(v, (bool, Mapping))
    if _is_spec(t):
        return isinstance(v, (Mapping, str))
    if attrs.has(t) or _is_dict(t):
        return isinstance(v, Mapping)
    if _is_seq(t) or _is_fixed_tuple(t):
        return isinstance(v, (list, tuple))
    if t is Any:
        return True
    return not isinstance(v, (Mapping, list, tuple))


#: the methods a local component (``module:attr``) of a kind (and role) must have
#: (docs/hooks.md); a registered one is checked by its plugin's tests
LOCAL_INTERFACES: dict[tuple[str, str | None], tuple[str, ...]] = {
    ("noise_model", None): ("loss", "grad_intensity", "wave_update"),
    ("regularizer", "constraint"): ("apply",),
    ("regularizer", "cost"): ("weight", "cost"),  # and grad on numpy and cupy (jax differentiates cost)
    ("solver", "conventional"): ("sweep",),
    ("solver", "gradient"): ("init", "update"),
    ("solver", "position"): ("update",),
    ("engine", None): ("run",),
}


def _check_local_interface(obj: Any, kind: str, role: str | None, label: str, name: str) -> None:
    """An :class:`Issue` at ``type`` when a local class lacks the methods its place needs
    (a cost regularizer among the constraints, a constraint as a noise model), which would
    otherwise fail inside the engine with an AttributeError."""
    need = LOCAL_INTERFACES.get((kind, role)) or LOCAL_INTERFACES.get((kind, None))
    if not need or not isinstance(obj, type):
        return
    missing = [m for m in need if not callable(getattr(obj, m, None))]
    if missing:
        what = f"a {role} {label}" if role else f"a {label}"
        raise Issue(f"{name!r} has no {', '.join(missing)} method{'s' if len(missing) > 1 else ''}: {what} "
                    f"needs {', '.join(need)} "
                    "(docs/hooks.md)", rel=("type",))


def _unbuilt_field_issues(cl: type, raw: Mapping, exc: Any) -> list[BaseException]:
    """The value validators (``param(validator=...)``) of the fields of ``cl`` that
    structured, run on their plan values, for a class whose structuring failed elsewhere:
    the errors they raise (ValueErrors naming the attribute, as ``in_range``'s). A field
    that failed itself, a nested mapping or list, and a validator that needs the built
    instance are left alone."""
    failed = failed_fields(exc)
    # what is reported already (attrs stops at the first failing validator of a built class)
    said = {validator_attribute(e).name for e in exc.exceptions if validator_attribute(e) is not None}
    out: list[BaseException] = []
    for field in attrs.fields(cl):
        key = field.alias or field.name
        if field.validator is None or key in failed or field.name in failed or key not in raw:
            continue
        value = raw[key]
        if isinstance(value, (Mapping, list, tuple)):
            continue
        try:
            value = field.converter(value) if field.converter is not None else value
            field.validator(None, field, value)
        except ValueError as err:
            if validator_attribute(err) is not None and validator_attribute(err).name not in said:
                out.append(err)
        except Exception:  # noqa: BLE001 - a validator that needs the instance: checked once it is built
            continue
    return out


def make_converter(registry: Any, allow_local: bool | None = None) -> cattrs.Converter:
    """A cattrs converter that structures plan data strictly, resolving specs in ``registry``."""
    conv = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)

    def s_int(v: Any, _: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise Issue(f"expected an integer, got {describe_value(v)}")
        return int(v)

    def s_float(v: Any, _: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise Issue(f"expected a number, got {describe_value(v)}")
        return float(v)

    def s_str(v: Any, _: Any) -> str:
        if not isinstance(v, str):
            raise Issue(f"expected a string, got {describe_value(v)}")
        return str(v)

    def s_bool(v: Any, _: Any) -> bool:
        if not isinstance(v, bool):
            raise Issue(f"expected true or false, got {describe_value(v)}")
        return v

    def s_path(v: Any, _: Any) -> Path:
        return Path(s_str(v, str))

    for t, fn in ((int, s_int), (float, s_float), (str, s_str), (bool, s_bool), (Path, s_path)):
        conv.register_structure_hook(t, fn)

    def seq_factory(t: Any) -> Any:
        (elem, *_) = typing.get_args(t) or (Any,)
        origin = typing.get_origin(t) or t  # a bare `tuple` or `list` is its own origin
        make = tuple if origin is tuple else list

        def hook(v: Any, _: Any) -> Any:
            if not isinstance(v, (list, tuple)):
                raise Issue(f"expected a list, got {describe_value(v)}")
            out, errors = [], []
            for i, item in enumerate(v):
                try:
                    out.append(conv.structure(item, elem))
                except Exception as exc:  # noqa: BLE001 - collected, reported together
                    errors.append(IssueGroup([exc], rel=(i,)))
            if errors:
                raise IssueGroup(errors)
            return make(out)

        return hook

    def fixed_tuple_factory(t: Any) -> Any:
        elems = typing.get_args(t)

        def hook(v: Any, _: Any) -> Any:
            if not isinstance(v, (list, tuple)) or len(v) != len(elems):
                raise Issue(f"expected a list of {len(elems)} values, got {describe_value(v)}"
                            + (f" of length {len(v)}" if isinstance(v, (list, tuple)) else ""))
            out, errors = [], []
            for i, (item, et) in enumerate(zip(v, elems)):
                try:
                    out.append(conv.structure(item, et))
                except Exception as exc:  # noqa: BLE001
                    errors.append(IssueGroup([exc], rel=(i,)))
            if errors:
                raise IssueGroup(errors)
            return tuple(out)

        return hook

    def dict_factory(t: Any) -> Any:
        kt, vt = (typing.get_args(t) + (Any, Any))[:2]

        def hook(v: Any, _: Any) -> Any:
            if not isinstance(v, Mapping):
                raise Issue(f"expected a mapping, got {describe_value(v)}")
            out, errors = {}, []
            for key, item in v.items():
                try:
                    out[conv.structure(key, kt) if kt is not Any else key] = (
                        conv.structure(item, vt) if vt is not Any else item)
                except Exception as exc:  # noqa: BLE001
                    errors.append(IssueGroup([exc], rel=(key,)))
            if errors:
                raise IssueGroup(errors)
            return out

        return hook

    def literal_factory(t: Any) -> Any:
        allowed = typing.get_args(t)

        def hook(v: Any, _: Any) -> Any:
            if v in allowed and not (isinstance(v, bool) and not any(isinstance(a, bool) for a in allowed)):
                return v
            msg = f"expected one of {', '.join(repr(a) for a in allowed)}, got {describe_value(v)}"
            raise Issue(msg + did_you_mean(v, allowed))

        return hook

    def union_factory(t: Any) -> Any:
        args = typing.get_args(t)
        members = [a for a in args if a is not NoneType]
        nullable = len(members) < len(args)

        def hook(v: Any, _: Any) -> Any:
            if v is None:
                if nullable:
                    return None
                raise Issue(f"expected {describe_type(t)}, got null")
            cands = [m for m in members if _accepts_shape(m, v)]
            if len(cands) == 1:
                return conv.structure(v, cands[0])
            for m in cands:
                try:
                    return conv.structure(v, m)
                except Exception:  # noqa: BLE001 - try the next member
                    continue
            raise Issue(f"expected {describe_type(t)}, got {describe_value(v)}")

        return hook

    def attrs_factory(cl: type) -> Any:
        fn = make_dict_structure_fn(cl, conv, _cattrs_forbid_extra_keys=True, _cattrs_detailed_validation=True)
        keys = [f.alias or f.name for f in attrs.fields(cl)]

        def hook(v: Any, _: Any) -> Any:
            if not isinstance(v, Mapping):
                raise Issue(f"expected a mapping (keys: {', '.join(keys)}), got {describe_value(v)}")
            try:
                return fn(v, cl)
            except cattrs.ClassValidationError as exc:
                # the class was never built, so its fields' own validators did not run:
                # run them on the values that did structure, to report every problem at once
                more = _unbuilt_field_issues(cl, v, exc)
                if more:
                    raise cattrs.ClassValidationError(exc.message, [*exc.exceptions, *more], cl) from None
                raise
            except (cattrs.BaseValidationError, Issue, IssueGroup):
                raise
            except (TypeError, ValueError) as exc:  # an attrs validator of the class
                raise Issue(str(exc), anchor="node") from exc

        return hook

    flag_fn = make_dict_structure_fn(Flag, conv, _cattrs_forbid_extra_keys=True, _cattrs_detailed_validation=True)

    def s_flag(v: Any, _: Any) -> Flag:
        if isinstance(v, bool):
            return Flag(enabled=v)
        if isinstance(v, Mapping):
            return flag_fn(v, Flag)
        raise Issue(f"expected true, false or a mapping with after/every/before, got {describe_value(v)}")

    def spec_factory(cls: type) -> Any:
        kind = cls.kind
        label = kind.replace("_", " ")

        def hook(v: Any, _: Any) -> Any:
            if isinstance(v, str):
                v = {"type": v}
            if not isinstance(v, Mapping):
                raise Issue(f"expected a {{type: NAME, ...}} mapping naming a {label}, got {describe_value(v)}")
            if "type" not in v:
                raise Issue(f"missing key 'type' (the {label} to use; available: {registry.inventory(kind)})",
                            anchor="node")
            name = v["type"]
            if not isinstance(name, str):
                raise Issue(f"expected the name of a {label}, got {describe_value(name)}", rel=("type",))
            role = getattr(cls, "role", None)
            try:
                comp = registry.resolve(kind, name, allow_local=allow_local)
            except UnknownComponentError as exc:
                msg = registry.unknown_message(kind, name, role=role) if role and ":" not in name else str(exc)
                raise Issue(msg, rel=("type",)) from None
            if role is not None and ":" not in name and comp.meta.get("role") != role:
                raise Issue(f"{label} {name!r} is a {comp.meta.get('role')} {label}, not a {role} one; "
                            f"available: {registry.inventory(kind, role=role)}", rel=("type",))
            if not callable(comp.obj):
                raise Issue(f"{label} {name!r} is not callable (got {type(comp.obj).__name__})", rel=("type",))
            if ":" in name:
                _check_local_interface(comp.obj, kind, role, label, name)
            rest = {k: v[k] for k in v if k != "type"}
            if comp.config is None:
                if rest:
                    hint = (f" ({name!r} has no settings: a local component takes them from an attrs class "
                            "in its `Config` attribute)" if ":" in name else "")
                    raise IssueGroup([Issue(unknown_key_message(k, ["type"]) + hint, rel=(k,), anchor="key")
                                      for k in rest])
                return cls(type=comp.name, config=None)
            return cls(type=comp.name, config=conv.structure(rest, comp.config))

        return hook

    # Later registrations take precedence over earlier ones and over cattrs' defaults.
    conv.register_structure_hook_factory(attrs.has, attrs_factory)
    conv.register_structure_hook_factory(_is_seq, seq_factory)
    conv.register_structure_hook_factory(_is_fixed_tuple, fixed_tuple_factory)
    conv.register_structure_hook_factory(_is_dict, dict_factory)
    conv.register_structure_hook_factory(lambda t: typing.get_origin(t) is Literal, literal_factory)
    conv.register_structure_hook_factory(_is_union, union_factory)
    conv.register_structure_hook_factory(_is_spec, spec_factory)
    conv.register_structure_hook(Flag, s_flag)
    conv.register_structure_hook(Any, lambda v, _: _plain(v))
    return conv


# ---------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------


def _yaml_rt() -> YAML:
    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = False
    return yaml


def _read(path_or_text: Any) -> tuple[Any, str, str | None]:
    """(raw document, display name, text); raises PlanError for unreadable files and syntax errors."""
    if isinstance(path_or_text, Mapping):
        return copy.deepcopy(path_or_text), "<plan>", None  # overrides and migrations edit it
    if isinstance(path_or_text, os.PathLike) or (
        isinstance(path_or_text, str) and "\n" not in path_or_text
        and (os.path.exists(path_or_text) or re.search(r"\.(ya?ml|json)$", path_or_text, re.I))
    ):
        name = str(path_or_text)
        try:
            text = Path(path_or_text).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise PlanError([PlanIssue("file not found", file=name)], source=name) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise PlanError([PlanIssue(f"cannot read the plan: {exc}", file=name)], source=name) from None
    else:
        name, text = "<plan>", str(path_or_text)
    try:
        doc = _yaml_rt().load(io.StringIO(text))
    except MarkedYAMLError as exc:
        line, col, problem = yaml_syntax_error(exc)
        raise PlanError([PlanIssue(f"invalid YAML: {problem}", file=name, line=line, col=col)], source=name) from None
    except YAMLError as exc:
        if name.lower().endswith(".json"):
            try:
                return json.loads(text), name, text
            except json.JSONDecodeError as jexc:
                raise PlanError([PlanIssue(f"invalid JSON: {jexc.msg}", file=name, line=jexc.lineno,
                                           col=jexc.colno)], source=name) from None
        raise PlanError([PlanIssue(f"invalid YAML: {exc}", file=name)], source=name) from None
    return doc, name, text


_PATH_TOKEN = re.compile(r"([^.\[\]]+)|\[(-?\d+)\]")


def _parse_override_path(path: str) -> list[str | int]:
    parts: list[str | int] = []
    pos = 0
    path = path.strip()
    while pos < len(path):
        if path[pos] == "." and parts:
            pos += 1
        m = _PATH_TOKEN.match(path, pos)
        if m is None:
            raise ValueError(f"cannot parse the path {path!r} (use e.g. engines[0].niter)")
        parts.append(m.group(1) if m.group(1) is not None else int(m.group(2)))
        pos = m.end()
    if not parts:
        raise ValueError("empty path")
    return parts


def _check_flow_keys(value: Any) -> None:
    """A ValueError for a mapping key like ``type:epie`` with no value: YAML reads
    ``{type:epie}`` (no space after the colon) as that one key."""
    if isinstance(value, dict):
        for key, item in value.items():
            if item is None and isinstance(key, str) and ":" in key and not key.endswith(":"):
                name, _, rest = key.partition(":")
                raise ValueError(f"YAML reads {{{key}}} as one key {key!r}; put a space after the colon: "
                                 f"{{{name}: {rest}}}")
            _check_flow_keys(item)
    elif isinstance(value, list):
        for item in value:
            _check_flow_keys(item)


def apply_overrides(doc: Any, overrides: list[str] | tuple[str, ...], *, registry: Any = None,
                    owned: list | None = None) -> list[PlanIssue]:
    """Apply ``path=value`` strings to the raw plan mapping in place; returns the problems found.

    ``value`` is parsed as YAML (``5`` is an int, ``true`` a bool, ``{type: epie}`` a mapping).
    Missing mapping keys along the path are created (with a ``registry``, as ``{type: NAME}``
    of the key's default component, so the override merges with that default; a component
    written as a bare name becomes ``{type: NAME}``); list indices must exist. ``owned``
    receives ``(path, text)`` per override: the plan path whose problems it caused (the
    value it set, or the first mapping it created), see
    :func:`~phaser_core.plan_overrides.attribute_issues`.
    """
    issues = []
    for text in overrides:
        if "=" not in text:
            issues.append(PlanIssue(f"--set {text!r}: expected path=value", file="--set"))
            continue
        path_s, _, value_s = text.partition("=")
        try:
            path = _parse_override_path(path_s)
            value = YAML(typ="safe", pure=True).load(value_s) if value_s.strip() else None
            _check_flow_keys(value)
        except (ValueError, YAMLError) as exc:
            issues.append(PlanIssue(f"--set {text!r}: {exc}", file="--set"))
            continue
        node, schema, mine = doc, (Plan if registry is not None else None), None
        try:
            for i, part in enumerate(path):
                last = i == len(path) - 1
                if isinstance(part, int):
                    if not isinstance(node, list):
                        raise ValueError(f"{format_path(path[:i]) or 'the plan'} is not a list")
                    if not -len(node) <= part < len(node):
                        raise ValueError(f"{format_path(path[:i])} has {len(node)} items, no index {part}")
                    part = path[i] = part % len(node)  # errors name engines[1], not engines[-1]
                else:
                    if not isinstance(node, dict):
                        raise ValueError(f"{format_path(path[:i]) or 'the plan'} is not a mapping")
                schema, default = child_schema(schema, part, node, registry)
                if not last and isinstance(part, str) and node.get(part) is None:
                    # missing, or null (as a run's resolved plan.yaml writes unset settings)
                    node[part] = missing_node(default)
                    mine = mine or tuple(path[:i + 1])  # the first mapping it created
                if not last and _is_spec(schema) and isinstance(node[part], str):
                    node[part] = {"type": node[part]}  # `solver: lsqml` -> {type: lsqml}
                if last:
                    node[part] = value
                else:
                    if isinstance(node[part], (dict, list)):
                        # its own copy (line numbers kept): a YAML alias shares the node with
                        # other places, which the override must not change
                        node[part] = copy.copy(node[part])
                    node = node[part]
        except ValueError as exc:
            issues.append(PlanIssue(f"--set {text!r}: {exc}", file="--set"))
            continue
        if owned is not None:
            owned.append((mine or tuple(path), text))
    return issues


def _check_header(doc: Any) -> tuple[Any, list[Issue]]:
    """Check file_type/version and migrate; returns the migrated doc and problems."""
    problems: list[Issue] = []
    ft = doc.get("file_type")
    if ft != FILE_TYPE:
        problems.append(Issue(f"expected file_type: {FILE_TYPE}, got {describe_value(ft)}"
                              + (" (is this a plan file?)" if ft is None else ""),
                              rel=("file_type",) if "file_type" in doc else (), anchor="value" if ft else "node"))
    version = doc.get("version", CURRENT_VERSION)
    if isinstance(version, bool) or not isinstance(version, int):
        problems.append(Issue(f"expected an integer, got {describe_value(version)}", rel=("version",)))
    elif version > CURRENT_VERSION:
        problems.append(Issue(f"plan version {version} is newer than this phaser supports ({CURRENT_VERSION}); "
                              "upgrade phaser", rel=("version",)))
    elif version < CURRENT_VERSION:
        try:
            doc = migrate(doc, version)
        except ValueError as exc:
            problems.append(Issue(str(exc), rel=("version",)))
    return doc, problems


def _fill_defaults(obj: Any, registry: Any, allow_local: bool | None, path: tuple, errors: list) -> Any:
    """Replace every spec's ``config=None`` by its component's default config, recursively."""
    if isinstance(obj, ComponentSpec):
        try:
            comp = registry.resolve(obj.kind, obj.type, allow_local=allow_local)
        except UnknownComponentError as exc:
            errors.append(Issue(str(exc), rel=path + ("type",)))
            return obj
        config = obj.config
        if config is None and comp.config is not None:
            try:
                config = comp.make_config()
            except TypeError as exc:
                errors.append(Issue(f"{obj.kind.replace('_', ' ')} {obj.type!r} has required settings: {exc}",
                                    rel=path, anchor="node"))
                return obj
        if config is not None:
            config = _fill_defaults(config, registry, allow_local, path, errors)
        if config is obj.config and comp.name == obj.type:
            return obj
        return attrs.evolve(obj, type=comp.name, config=config)
    if attrs.has(type(obj)):
        changes = {}
        for f in attrs.fields(type(obj)):
            if not f.init:
                continue
            value = getattr(obj, f.name)
            new = _fill_defaults(value, registry, allow_local, path + (f.alias or f.name,), errors)
            if new is not value:
                changes[f.alias or f.name] = new
        filled = attrs.evolve(obj, **changes) if changes else obj
        # a config's own cross-field checks that need the registry (docs/plugins.md)
        check = getattr(filled, "plan_issues", None)
        if callable(check):
            errors.extend(Issue(message, rel=path + tuple(rel)) for rel, message in check(registry))
        return filled
    if isinstance(obj, tuple):
        new_items = tuple(_fill_defaults(x, registry, allow_local, path + (i,), errors) for i, x in enumerate(obj))
        return new_items if any(a is not b for a, b in zip(new_items, obj)) else obj
    if isinstance(obj, dict):
        return {k: _fill_defaults(v, registry, allow_local, path + (k,), errors) for k, v in obj.items()}
    return obj


def _raw_checks(doc: Mapping, registry: Any) -> list[Issue]:
    """Checks of top-level names that do not need structuring (reported with structuring errors)."""
    issues: list[Issue] = []
    dtype = doc.get("dtype", "float32")
    if isinstance(dtype, str) and dtype not in DTYPES:
        issues.append(Issue(f"expected one of {', '.join(DTYPES)}, got {dtype!r}", rel=("dtype",)))
    backend = doc.get("backend", "auto")
    if isinstance(backend, str) and backend != "auto" and ("backend", backend) not in registry:
        issues.append(Issue(registry.unknown_message("backend", backend), rel=("backend",)))
    return issues


def _gives_thickness(s: SlicesPlan) -> bool:
    return bool(s.total_thickness_A) or (s.thicknesses_A is not None and sum(s.thicknesses_A) > 0)


def _slices_issues(s: SlicesPlan, at: tuple, needs_thickness: bool) -> list[Issue]:
    """The problems of one ``slices`` entry at plan path ``at``."""
    issues: list[Issue] = []
    if s.n < 1:
        issues.append(Issue(f"must be >= 1, got {s.n}", rel=(*at, "n")))
    if s.thicknesses_A is not None:
        if s.total_thickness_A is not None:
            issues.append(Issue("give total_thickness_A or thicknesses_A, not both", rel=at, anchor="node"))
        if len(s.thicknesses_A) != s.n:
            issues.append(Issue(f"has {len(s.thicknesses_A)} values but n is {s.n}", rel=(*at, "thicknesses_A")))
        if any(t < 0 for t in s.thicknesses_A):
            issues.append(Issue("thicknesses must be >= 0 [Å]", rel=(*at, "thicknesses_A")))
    elif s.total_thickness_A is not None:
        if s.total_thickness_A < 0:
            issues.append(Issue(f"must be >= 0 [Å], got {s.total_thickness_A}", rel=(*at, "total_thickness_A")))
    elif s.n > 1 and needs_thickness:
        issues.append(Issue(f"n = {s.n} slices need total_thickness_A or thicknesses_A [Å]", rel=at, anchor="node"))
    return issues


def _cross_checks(plan: Plan, registry: Any) -> list[Issue]:
    issues: list[Issue] = []
    if not plan.engines:
        issues.append(Issue("at least one engine is needed (e.g. [{type: conventional, niter: 100}])",
                            rel=("engines",)))
    issues += _slices_issues(plan.slices, ("slices",), needs_thickness=True)
    # an engine's slices keep the thickness of the object it starts from unless they give one
    thickness_known = _gives_thickness(plan.slices) or plan.init.state is not None
    for i, engine in enumerate(plan.engines):
        slices = getattr(engine.config, "slices", None)
        if isinstance(slices, SlicesPlan):
            issues += _slices_issues(slices, ("engines", i, "slices"), needs_thickness=not thickness_known)
            thickness_known = thickness_known or _gives_thickness(slices)
    if ("observer", "output") in registry:
        # the output observer knows which images exist: ask its config now, not at run time
        comp = registry.get("observer", "output")
        names = attrs.fields_dict(comp.config) if comp.config is not None else {}
        flagged = {i.rel[1] for i in issues if i.rel[:1] == ("output",) and len(i.rel) > 1}  # reported once
        try:
            comp.make_config(**{k: getattr(plan.output, k) for k in names
                                if hasattr(plan.output, k) and k not in flagged})
        except (TypeError, ValueError) as exc:
            attr = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], attrs.Attribute) else None
            key = attr.name if attr is not None else "images"
            message = str(exc.args[0] if attr is not None else exc)
            prefix = f"output.{key}: "
            issues.append(Issue(message[len(prefix):] if message.startswith(prefix) else message,
                                rel=("output", key)))
    return issues


def load_plan(path_or_text: Any, *, registry: Any = None, overrides: list[str] | tuple[str, ...] = (),
              allow_local: bool | None = None) -> Plan:
    """Read, migrate, override, structure and check a plan.

    :param path_or_text: a path (``str`` ending in .yaml/.yml/.json or an existing file,
        or a :class:`~pathlib.Path`), YAML/JSON text, or an already-loaded mapping.
    :param registry: the component registry (default: the process-wide one).
    :param overrides: ``["engines[0].niter=5", ...]`` applied before structuring.
    :param allow_local: allow ``type: "package.module:attr"`` components (``None``: the
        ``PHASER_ALLOW_LOCAL_COMPONENTS`` environment setting, default allowed).
    :raises PlanError: with every problem found (``.errors`` is a list of PlanIssue).
    """
    if registry is None:
        from .registry import get_registry

        registry = get_registry()
    doc, name, _ = _read(path_or_text)
    with local_component_folders(_plan_folder(name), os.getcwd()):
        return _load_plan(doc, name, registry, overrides, allow_local)


def _plan_folder(name: str) -> Path | None:
    """The folder a plan file's local components are looked for in: a run's ``plan.yaml``
    names its original plan's folder in its header."""
    if name == "<plan>":
        return None
    return read_plan_dir(Path(name)) or Path(name).resolve().parent


def _load_plan(doc: Any, name: str, registry: Any, overrides: Any, allow_local: bool | None) -> Plan:
    root = doc
    if doc is None:
        raise PlanError([PlanIssue("the plan is empty", file=name)], source=name)
    if not isinstance(doc, Mapping):
        raise PlanError(to_issues(collect(Issue(f"a plan must be a mapping, got {describe_value(doc)}",
                                                anchor="node")), root, name), source=name)
    doc, header = _check_header(doc)
    if header:
        raise PlanError(to_issues([r for e in header for r in collect(e)], root, name), source=name)
    owned: list = []
    override_issues = apply_overrides(doc, list(overrides), registry=registry, owned=owned)
    if override_issues:
        raise PlanError(override_issues, source=name)
    fill_default_types(doc, Plan, registry)
    conv = make_converter(registry, allow_local)
    errors: list[Issue] = _raw_checks(doc, registry)
    try:
        plan = conv.structure(doc, Plan)
    except Exception as exc:  # noqa: BLE001 - every structuring problem is reported as a plan error
        raws = collect(exc) + [r for e in errors for r in collect(e)]
        raise PlanError(attribute_issues(raws, owned, doc, name), source=name) from None
    plan = _fill_defaults(plan, registry, allow_local, (), errors)
    errors += _cross_checks(plan, registry)
    if errors:
        raise PlanError(attribute_issues([r for e in errors for r in collect(e)], owned, doc, name), source=name)
    return plan


# ---------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def plan_to_dict(plan: Plan, registry: Any = None) -> dict:
    """The fully resolved plan as plain data: every default filled, every spec ``{type: name, **config}``."""
    if registry is None:
        from .registry import get_registry

        registry = get_registry()
    conv = cattrs.Converter()

    def u_spec(spec: ComponentSpec) -> dict:
        config = spec.resolved_config(registry)
        out: dict[str, Any] = {"type": spec.type}
        if config is not None:
            out.update(conv.unstructure(config, unstructure_as=type(config)))
        return out

    def u_flag(flag: Flag) -> Any:
        extras = {k: getattr(flag, k) for k in ("after", "every", "before") if getattr(flag, k) is not None}
        if not extras or not flag.enabled:
            return bool(flag.enabled)
        return extras

    conv.register_unstructure_hook_func(lambda t: isinstance(t, type) and issubclass(t, ComponentSpec), u_spec)
    conv.register_unstructure_hook(Flag, u_flag)
    conv.register_unstructure_hook(Path, str)
    return _plain(conv.unstructure(plan, unstructure_as=Plan))


def plan_yaml() -> YAML:
    """The YAML writer of plans: block style, two-space indents, ``null`` written out."""
    yaml = YAML(typ="rt")
    yaml.default_flow_style = False
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.representer.add_representer(
        type(None), lambda rep, _: rep.represent_scalar("tag:yaml.org,2002:null", "null"))
    return yaml


def dump_plan(plan: Plan, path: str | Path, registry: Any = None, *, header: str | None = None) -> None:
    """Write the fully resolved plan as YAML (``header`` lines are written as ``#`` comments)."""
    data = plan_to_dict(plan, registry)
    yaml = plan_yaml()
    buf = io.StringIO()
    if header:
        for line in header.splitlines():
            buf.write(f"# {line}\n")
    yaml.dump(data, buf)
    text = buf.getvalue()
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def missing_input_files(plan: Plan, plan_path: Path, base: Path | None = None) -> list[PlanIssue]:
    """The files a plan reads that do not exist: ``raw_data.path`` (when its loader has
    one) and ``init.state``, resolved as a run resolves them (``~`` expanded, a relative
    path from ``base``, default the plan's folder); located in the plan file.
    ``phaser validate`` reports them, which a plan's structure alone cannot."""
    wanted = [(("raw_data", "path"), getattr(plan.raw_data.config, "path", None)),
              (("init", "state"), plan.init.state if plan.init is not None else None)]
    return _missing_files(wanted, Path(plan_path), base)


def missing_input_files_of_document(plan_path: Path, base: Path | None = None,
                                    overrides: list[str] | tuple[str, ...] = ()) -> list[PlanIssue]:
    """:func:`missing_input_files` read from the plan file's own text with ``overrides``
    (``--set``) applied, for a plan with other errors (no :class:`Plan` to ask), so that
    ``phaser validate`` lists them all at once."""
    try:
        doc = _read(Path(plan_path))[0]
    except PlanError:
        return []
    if overrides and isinstance(doc, Mapping):
        apply_overrides(doc, list(overrides))  # its own problems are the plan's errors already

    def value(section: str, key: str) -> Any:
        part = doc.get(section) if isinstance(doc, Mapping) else None
        return part.get(key) if isinstance(part, Mapping) else None

    return _missing_files([(("raw_data", "path"), value("raw_data", "path")),
                           (("init", "state"), value("init", "state"))], Path(plan_path), base)


def _missing_files(wanted: list, plan_path: Path, base: Path | None) -> list[PlanIssue]:
    base = Path(base) if base is not None else plan_path.parent
    raws = []
    for path, value in wanted:
        if not (isinstance(value, str) and value):
            continue
        full = Path(value).expanduser()
        full = full if full.is_absolute() else base / full
        if not full.exists():
            raws.append(Issue(f"no such file: {value} (looked for {full}; a relative path starts at "
                              "the plan's folder)", rel=path))
    if not raws:
        return []
    try:
        doc, name, _ = _read(plan_path)
    except PlanError:
        doc, name = None, str(plan_path)
    return to_issues([r for e in raws for r in collect(e)], doc, name)
