"""Registration of every solver kind (``role`` meta: gradient, conventional, position).

Gradient solvers (sgd, adam, adamw, nadam, polyak_sgd) live in
:mod:`phaser_std.engines.optimizers`. The conventional solvers (``epie``, ``lsqml``) and the
position solver (``momentum``) are registered below by the engine author.
"""

from __future__ import annotations


def register_all(register) -> None:
    from phaser_std.engines.optimizers import register_all as register_gradient

    register_gradient(register)

    # --- conventional solvers (role="conventional"): epie, lsqml ---------------------------
    # TODO(engine author): register("epie", ..., role="conventional"), register("lsqml", ...)

    # --- position solvers (role="position"): momentum ------------------------------------
    # TODO(engine author): register("momentum", ..., role="position")
