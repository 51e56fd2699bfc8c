"""Regularizers: registration of the constraints and costs, and the info they receive.

- Constraint regularizers (``role="constraint"``, :mod:`.constraints`): projections applied
  per group or per iteration in every engine, ``probe, obj = reg.apply(bk, probe, obj, info)``.
- Cost regularizers (``role="cost"``, :mod:`.costs`): penalties added to the gradient
  engine's loss, ``reg.cost(bk, probe, obj, info, weight)`` and their Wirtinger gradients
  ``reg.grad(...)``.
"""

from __future__ import annotations

from typing import Any

import attrs

from phaser_std.engines.constraints import CONSTRAINTS
from phaser_std.engines.costs import COSTS

__all__ = ["RegInfo", "register_all"]


@attrs.frozen(kw_only=True)
class RegInfo:
    """What regularizers need besides the probe and object.

    :ivar sampling_A: (y, x) pixel size of probe and object [Å].
    :ivar wavelength_A: electron wavelength [Å] (for angles in reciprocal space).
    :ivar thicknesses_A: per-slice thickness [Å] (numpy), or None.
    :ivar fraction: group_size / n_positions; costs are multiplied by it so that one
        iteration adds each penalty once (1.0 for a full-batch evaluation).
    :ivar iteration: engine iteration (0-based), for scheduled cost weights; a traced integer
        scalar inside compiled steps (constraints run under ``bk.jit``).
    :ivar illumination: ``(H, W)`` Σ|P|² over positions on the object grid (backend array),
        or None; weights the phase-ramp fit to the illuminated area.
    """

    sampling_A: tuple[float, float]
    wavelength_A: float | None = None
    thicknesses_A: Any = None
    fraction: float = 1.0
    iteration: Any = 0
    illumination: Any = None

    def replace(self, **changes: Any) -> "RegInfo":
        return attrs.evolve(self, **changes)


def register_all(register) -> None:
    for name, cls, cfg in CONSTRAINTS:
        register(name, cls, config=cfg, role="constraint", doc=(cls.__doc__ or "").strip().splitlines()[0])
    for name, cls, cfg, aliases in COSTS:
        register(name, cls, config=cfg, role="cost", aliases=aliases,
                 doc=(cls.__doc__ or "").strip().splitlines()[0])
