"""Position correction: turn per-iteration shift estimates into position updates.

Engines accumulate a per-position shift estimate [Å] over an iteration; a position
solver turns it into an update. ``momentum`` smooths steps with momentum, limits each
step to ``max_step_A`` and then removes the steps' mean (a global drift is
indistinguishable from an object shift, and letting it through walks the whole scan
away; removed after the limit, an outlier's estimate does not move the others). Its velocity
is kept in ``state.extra`` so a resumed run continues exactly.
"""

from __future__ import annotations

import attrs
import numpy as np

from phaser_core.config import in_range, param


@attrs.frozen
class MomentumPositionConfig:
    step_size: float = param(0.5, doc="fraction of the estimated shift applied per iteration",
                             validator=in_range(0, lo_open=True))
    momentum: float = param(0.5, doc="fraction of the previous step carried over",
                            validator=in_range(0, 1, hi_open=True))
    max_step_A: float = param(0.2, unit="Å", doc="largest step of one position in one iteration (before the "
                              "steps' mean is removed)",
                              validator=in_range(0, lo_open=True))


class MomentumPositionSolver:
    """Momentum position updates with the mean drift removed and a step limit."""

    def __init__(self, config: MomentumPositionConfig | None = None):
        self.config = config or MomentumPositionConfig()

    def update(self, scan_A: np.ndarray, shift_A: np.ndarray, extra: dict) -> np.ndarray:
        """New positions (N, 2) [Å] from the iteration's shift estimates (N, 2) [Å]."""
        cfg = self.config
        shift = np.asarray(shift_A, dtype=np.float64)
        velocity = np.asarray(extra.get("position_velocity", np.zeros_like(shift)), dtype=np.float64)
        if velocity.shape != shift.shape:
            velocity = np.zeros_like(shift)
        velocity = cfg.momentum * velocity + cfg.step_size * shift
        norm = np.linalg.norm(velocity, axis=1, keepdims=True)
        velocity = velocity * np.minimum(1.0, cfg.max_step_A / np.maximum(norm, 1e-30))
        # the mean of the limited steps: an outlier's estimate, limited, no longer shifts the others
        velocity -= velocity.mean(axis=0)
        extra["position_velocity"] = velocity
        return scan_A + velocity


def register_position_solvers(register) -> None:
    register("momentum", MomentumPositionSolver, config=MomentumPositionConfig, role="position",
             doc="Momentum position correction with mean drift removed and a step limit [Å].")
