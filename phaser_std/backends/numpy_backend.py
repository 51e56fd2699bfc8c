"""The numpy backend: the reference every other backend is tested against."""

from __future__ import annotations

from typing import Any

import numpy as np

from phaser_core.backend import BaseBackend


class NumpyBackend(BaseBackend):
    """CPU arrays with numpy; ``add_at`` accumulates in place with ``np.add.at``."""

    name = "numpy"
    xp = np

    def add_at(self, target: Any, index: tuple, values: Any) -> Any:
        np.add.at(target, index, values)
        return target
