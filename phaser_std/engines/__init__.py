"""Reconstruction engines and the components they plug in (noise models, solvers, ...)."""

from __future__ import annotations


def register_all(register) -> None:
    from phaser_std.engines.conventional import ConventionalConfig, ConventionalEngine

    register("conventional", ConventionalEngine, config=ConventionalConfig,
             doc="ePIE / LSQML over groups of positions; multislice, probe modes, position correction.")

    from phaser_std.engines.gradient import GradientConfig, GradientEngine

    register("gradient", GradientEngine, config=GradientConfig,
             doc="Gradient descent (optax solvers) on the noise-model loss plus cost regularizers; "
                 "autodiff on jax, analytic adjoint on numpy/cupy.")
