"""Registration of every solver kind (``role`` meta: gradient, conventional, position).

Gradient solvers (sgd, adam, adamw, nadam, polyak_sgd) live in
:mod:`phaser_std.engines.optimizers`. The conventional solvers (``epie``, ``lsqml``) and the
position solver (``momentum``) live in
:mod:`phaser_std.engines.conventional_solvers` and :mod:`phaser_std.engines.positions`.
"""

from __future__ import annotations


def register_all(register) -> None:
    from phaser_std.engines.optimizers import register_all as register_gradient

    register_gradient(register)

    from phaser_std.engines.conventional_solvers import register_conventional
    from phaser_std.engines.positions import register_position_solvers

    register_conventional(register)
    register_position_solvers(register)
