"""Plan validation errors: what went wrong, where in the file and where in the plan.

Structuring a plan with cattrs (detailed validation) raises a tree of exceptions. This module
walks that tree alongside the loaded YAML (ruamel round-trip nodes keep ``.lc`` line/column
data) and turns every leaf into one :class:`PlanIssue`, formatted like a compiler error::

    plan.yaml:14:11: engines[0].solver.type: unknown solver 'epei'; did you mean 'epie'? ...
"""

from __future__ import annotations


import re
from collections.abc import Mapping, Sequence
from typing import Any, Iterable

import attrs
from cattrs.errors import (
    AttributeValidationNote,
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
    IterableValidationNote,
)

from .errors import PhaserError, did_you_mean

#: the message of attrs' comparison validators (ge, le, gt, lt), which name the field only here
_VALIDATOR_MESSAGE = re.compile(r"^'(\w+)' must be [<>]=? ")

PathT = tuple  # tuple[str | int, ...]


@attrs.frozen
class PlanIssue:
    """One problem in a plan: file, 1-based line and column (``None`` if unknown), plan path, message."""

    message: str
    path: PathT = ()
    file: str | None = None
    line: int | None = None
    col: int | None = None

    @property
    def path_str(self) -> str:
        return format_path(self.path)

    def __str__(self) -> str:
        where = self.file or "<plan>"
        if self.line is not None:
            where += f":{self.line}"
            if self.col is not None:
                where += f":{self.col}"
        path = self.path_str
        return f"{where}: {path}: {self.message}" if path else f"{where}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "col": self.col, "path": self.path_str,
                "message": self.message, "text": str(self)}


def format_path(path: Iterable[Any]) -> str:
    """``("engines", 0, "solver", "type")`` -> ``engines[0].solver.type``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


# ---------------------------------------------------------------------------------------
# Exceptions raised by our own structure hooks (internal)
# ---------------------------------------------------------------------------------------


class Issue(Exception):
    """A leaf problem raised inside structuring.

    :param rel: path relative to the node being structured.
    :param anchor: ``"value"`` (point at the value at ``rel``), ``"key"`` (point at the key
        ``rel[-1]``; the path shown is the parent's) or ``"node"`` (point at the node itself).
    """

    def __init__(self, message: str, rel: PathT = (), anchor: str = "value"):
        super().__init__(message)
        self.message = message
        self.rel = tuple(rel)
        self.anchor = anchor


class IssueGroup(Exception):
    """Several problems found by one hook, each an :class:`Issue` or a cattrs error tree."""

    def __init__(self, issues: list[BaseException], rel: PathT = ()):
        super().__init__(f"{len(issues)} problems")
        self.issues = list(issues)
        self.rel = tuple(rel)


def describe_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return repr(value)


def unknown_key_message(key: Any, valid: Iterable[str]) -> str:
    valid = list(valid)
    msg = f"unknown key {key!r}"
    hint = did_you_mean(key, valid)
    if hint:
        return msg + hint + (f" valid keys: {', '.join(valid)}" if valid else "")
    return msg + (f"; valid keys: {', '.join(valid)}" if valid else " (this component takes no settings)")


def _config_keys(cl: Any) -> list[str]:
    keys = [f.alias if getattr(f, "alias", None) else f.name for f in attrs.fields(cl)] if attrs.has(cl) else []
    return list(getattr(cl, "__phaser_extra_keys__", ())) + keys


# ---------------------------------------------------------------------------------------
# Walking the error tree
# ---------------------------------------------------------------------------------------


@attrs.frozen
class _Raw:
    path: PathT
    anchor: str
    message: str
    display: PathT


def collect(exc: BaseException, path: PathT = ()) -> list[_Raw]:
    """Flatten a structuring exception tree into leaf problems with their plan paths."""
    out: list[_Raw] = []
    _collect(exc, tuple(path), out)
    return out


def validator_attribute(exc: BaseException) -> Any:
    """The ``attrs.Attribute`` an attrs validator's error names (its ``(message,
    attribute, ...)`` arguments, as ``in_range``'s), or None."""
    args = getattr(exc, "args", ())
    return args[1] if len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], attrs.Attribute) else None


def failed_fields(exc: BaseException) -> set[str]:
    """The attribute names a cattrs ``ClassValidationError`` says failed to structure."""
    return {note.name for sub in getattr(exc, "exceptions", ()) if (note := _note(sub, AttributeValidationNote))}


def _note(exc: BaseException, kind: type) -> Any:
    for note in getattr(exc, "__notes__", ()) or ():
        if isinstance(note, kind):
            return note
    return None


def _collect(exc: BaseException, path: PathT, out: list[_Raw]) -> None:
    if isinstance(exc, IssueGroup):
        for sub in exc.issues:
            _collect(sub, path + exc.rel, out)
    elif isinstance(exc, Issue):
        full = path + exc.rel
        display = full[:-1] if exc.anchor == "key" else full
        out.append(_Raw(full, exc.anchor, exc.message, display))
    elif isinstance(exc, ClassValidationError):
        for sub in exc.exceptions:
            note = _note(sub, AttributeValidationNote)
            if note is None:
                _collect(sub, path, out)
            elif isinstance(sub, KeyError) and not isinstance(sub, Issue):
                out.append(_Raw(path, "node", f"missing required key {note.name!r}", path))
            else:
                _collect(sub, path + (note.name,), out)
    elif isinstance(exc, IterableValidationError):
        for sub in exc.exceptions:
            note = _note(sub, IterableValidationNote)
            _collect(sub, path + ((note.index,) if note is not None else ()), out)
    elif isinstance(exc, ForbiddenExtraKeysError):
        valid = _config_keys(exc.cl)
        for key in sorted(exc.extra_fields, key=str):
            out.append(_Raw(path + (key,), "key", unknown_key_message(key, valid), path))
    elif isinstance(exc, BaseExceptionGroup):
        for sub in exc.exceptions:
            _collect(sub, path, out)
    elif isinstance(exc, PhaserError):
        out.append(_Raw(path, "value", str(exc), path))
    elif validator_attribute(exc) is not None:
        # an attrs validator's (message, attribute, ...): point at the key, say the message
        name = validator_attribute(exc).alias or validator_attribute(exc).name
        out.append(_Raw(path + (name,), "value", exc.args[0], path + (name,)))
    elif isinstance(exc, ValueError) and _VALIDATOR_MESSAGE.match(str(exc)):
        # attrs' ge/le/gt/lt validators pass only "'name' must be >= 1: 0"
        name = _VALIDATOR_MESSAGE.match(str(exc)).group(1)
        out.append(_Raw(path + (name,), "value", str(exc), path + (name,)))
    else:
        out.append(_Raw(path, "value", f"{type(exc).__name__}: {exc}" if not str(exc) else str(exc), path))


# ---------------------------------------------------------------------------------------
# Positions in the loaded YAML
# ---------------------------------------------------------------------------------------


def _lc_of_node(node: Any) -> tuple[int, int] | None:
    lc = getattr(node, "lc", None)
    if lc is None or getattr(lc, "line", None) is None:
        return None
    return (lc.line, lc.col)


def _lc_child(parent: Any, key: Any, which: str) -> tuple[int, int] | None:
    lc = getattr(parent, "lc", None)
    if lc is None:
        return None
    try:
        if isinstance(parent, Mapping):
            pos = lc.key(key) if which == "key" else lc.value(key)
        else:
            pos = lc.item(key)
    except (KeyError, IndexError, TypeError, AttributeError):
        return None
    return (pos[0], pos[1]) if pos is not None and pos[0] is not None else None


def locate(root: Any, path: PathT, anchor: str) -> tuple[int, int] | None:
    """0-based (line, col) of ``path`` in the loaded document, or of its nearest ancestor."""
    best = _lc_of_node(root)
    node = root
    for i, part in enumerate(path):
        last = i == len(path) - 1
        if isinstance(node, Mapping) and part in node:
            if last and anchor == "key":
                return _lc_child(node, part, "key") or best
            pos = _lc_child(node, part, "value")
        elif (isinstance(node, Sequence) and not isinstance(node, str) and isinstance(part, int)
              and 0 <= part < len(node)):
            pos = _lc_child(node, part, "item")
        else:
            return best
        child = node[part]
        if last and anchor == "node":
            return _lc_of_node(child) or pos or best
        if pos is not None:
            best = pos
        node = child
    return best


def to_issues(raws: Iterable[_Raw], root: Any, file: str | None) -> list[PlanIssue]:
    """Attach file positions and sort by position (unknown positions last)."""
    issues = []
    for raw in raws:
        pos = locate(root, raw.path, raw.anchor)
        line, col = (pos[0] + 1, pos[1] + 1) if pos is not None else (None, None)
        issues.append(PlanIssue(raw.message, raw.display, file, line, col))
    issues.sort(key=lambda i: (i.line is None, i.line or 0, i.col or 0))
    return issues


def yaml_syntax_error(exc: Any) -> tuple[int | None, int | None, str]:
    """``(line, col, message)`` of a ruamel ``MarkedYAMLError``, 1-based: where the parser
    stopped and what it expected, with where the construct it was reading began (an
    unclosed ``{`` is reported where the parser gave up, often a line later)."""
    mark = exc.problem_mark or exc.context_mark
    line, col = (mark.line + 1, mark.column + 1) if mark is not None else (None, None)
    context = str(exc.context) if exc.context else ""
    start = exc.context_mark
    if context and start is not None and (exc.problem_mark is None or start.line != exc.problem_mark.line
                                          or start.column != exc.problem_mark.column):
        context += f" (begun at line {start.line + 1}, column {start.column + 1})"
    problem = ": ".join(p for p in (context, str(exc.problem) if exc.problem else "") if p) or str(exc)
    return line, col, problem
