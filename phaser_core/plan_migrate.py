"""Plan format migrations: pure ``dict -> dict`` functions from version ``v`` to ``v + 1``.

A plan written for an older format is upgraded step by step before it is structured, so
old plan files keep working. Each migration must not modify its input (it returns a new
mapping; shallow copies of ruamel nodes keep their line/column data for error messages).

To change the format: bump :data:`CURRENT_VERSION`, add ``MIGRATIONS[old] = fn`` and a test.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

CURRENT_VERSION = 1

Migration = Callable[[dict], dict]
MIGRATIONS: dict[int, Migration] = {}


def migration(from_version: int) -> Callable[[Migration], Migration]:
    def deco(fn: Migration) -> Migration:
        MIGRATIONS[from_version] = fn
        return fn

    return deco


def _copy(mapping: Any) -> Any:
    return copy.copy(mapping)  # keeps ruamel's CommentedMap type and .lc positions


@migration(0)
def v0_to_v1(plan: dict) -> dict:
    """Version 0 (pre-release) called ``raw_data`` ``data`` and ``niter`` ``iterations``."""
    new = _copy(plan)
    if "data" in new and "raw_data" not in new:
        new["raw_data"] = new.pop("data")
    engines = new.get("engines")
    if isinstance(engines, list):
        new_engines = []
        for engine in engines:
            if isinstance(engine, dict) and "iterations" in engine and "niter" not in engine:
                engine = _copy(engine)
                engine["niter"] = engine.pop("iterations")
            new_engines.append(engine)
        new["engines"] = _list_like(engines, new_engines)
    new["version"] = 1
    return new


def _list_like(original: Any, items: list) -> Any:
    out = copy.copy(original)
    out[:] = items
    return out


def migrate(plan: dict, from_version: int, to_version: int = CURRENT_VERSION) -> dict:
    """Apply migrations ``from_version -> ... -> to_version``; raises ``ValueError`` if a step is missing."""
    version = from_version
    while version < to_version:
        step = MIGRATIONS.get(version)
        if step is None:
            raise ValueError(f"no migration from plan version {version} to {version + 1}")
        plan = step(plan)
        version += 1
    return plan
