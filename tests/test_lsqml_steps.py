"""LSQML's per-position steps: the 2x2 least-squares system and the references of its
regularisation, which the chunked single-slice step takes from the group's summed maps."""

from __future__ import annotations

import numpy as np
import pytest

from phaser_std.engines.chunked_steps import group_mean, inner_products, solve_2x2, step_references
from phaser_std.physics.forward import abs2, add_views, get_views, shift_probes


def _complex(rng, *shape):
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex128)


def test_step_references_are_the_group_means_of_the_diagonals(backend):
    """Σ_b m_b·Σ|d·ψ_b|² = Σ|d|²·(illumination map) and Σ_b m_b·Σ|p·O_b|² = Σ Σ_modes|p|²·Σ_b
    m_b|O_b|²: the chunked step's references equal the means over the valid positions of
    the per-position diagonals, which the whole-group step takes."""
    bk, xp = backend, backend.xp
    rng = np.random.default_rng(3)
    n_pos, modes, shape, obj_shape = 7, 2, (8, 8), (1, 20, 22)
    obj = bk.asarray(_complex(rng, *obj_shape))
    direction = bk.asarray(_complex(rng, *obj_shape))
    pdir = bk.asarray(_complex(rng, modes, *shape))
    probes = shift_probes(bk, bk.asarray(_complex(rng, modes, *shape)), bk.asarray(rng.uniform(-0.5, 0.5, (n_pos, 2))))
    starts = bk.asarray(np.stack([rng.integers(0, obj_shape[1] - shape[0] + 1, n_pos),
                                  rng.integers(0, obj_shape[2] - shape[1] + 1, n_pos)], axis=1).astype(np.int32))
    mask_f = bk.asarray(np.array([1, 1, 0, 1, 1, 1, 0], dtype=np.float64))
    m = mask_f[:, None, None]

    o_views = get_views(bk, obj, starts, shape)[:, 0]
    illum_map = add_views(bk, xp.zeros(obj_shape, dtype=bk.real_dtype), starts,
                          (xp.sum(abs2(xp, probes), axis=1) * m)[:, None])
    pden = xp.sum(abs2(xp, o_views) * m, axis=0)
    n_valid = xp.sum(mask_f)  # 5 valid positions
    ref_a, ref_b = step_references(xp, direction, illum_map, pdir, pden, n_valid)

    a = get_views(bk, direction, starts, shape)[:, 0][:, None] * probes
    b = pdir[None] * o_views[:, None]
    d = inner_products(xp, xp.zeros_like(a), a, b)
    # sums of 7 positions x 2 modes x 64 pixels, compared through different orders
    np.testing.assert_allclose(float(ref_a), float(group_mean(xp, d["aa"], mask_f)), rtol=2e-5)
    np.testing.assert_allclose(float(ref_b), float(group_mean(xp, d["bb"], mask_f)), rtol=2e-5)
    assert step_references(xp, direction, illum_map, None, pden, n_valid)[1] == 0.0


@pytest.mark.parametrize("gamma", [0.0, 1e-2])
def test_joint_steps_are_the_regularised_least_squares_solution(gamma):
    """(α, β) minimise Σ|χ − α·a − β·b|² + γ·(r_a·α² + r_b·β²) for each position: the
    gradient of that (the normal equations) vanishes."""
    rng = np.random.default_rng(5)
    chi, a, b = (_complex(rng, 4, 2, 6, 6) for _ in range(3))
    d = inner_products(np, chi, a, b)
    ref_a, ref_b = 3.0, 5.0
    alpha, beta = solve_2x2(np, d, gamma, ref_a, ref_b)
    rest = chi - alpha[:, None, None, None] * a - beta[:, None, None, None] * b
    axes = (1, 2, 3)
    np.testing.assert_allclose(np.sum(np.real(np.conj(a) * rest), axis=axes), gamma * ref_a * alpha, atol=1e-9)
    np.testing.assert_allclose(np.sum(np.real(np.conj(b) * rest), axis=axes), gamma * ref_b * beta, atol=1e-9)


def test_illum_reg_object_left_null_depends_on_the_slices():
    """δ_O: 0.3 on one slice, 0.1 with several (benchmarks/NOTES.md 68); a plan's value wins."""
    from phaser_std.engines.conventional_solvers import LsqmlConfig, LsqmlSolver

    auto = LsqmlSolver(LsqmlConfig())
    assert auto.config.illum_reg_object == 0.3  # usable before the engine resolves it
    assert auto.for_slices(1).config.illum_reg_object == 0.3
    assert auto.for_slices(8).config.illum_reg_object == 0.1
    assert auto.config.illum_reg_object == 0.3  # for_slices copies
    fixed = LsqmlSolver(LsqmlConfig(illum_reg_object=0.05))
    assert fixed.for_slices(1).config.illum_reg_object == fixed.for_slices(8).config.illum_reg_object == 0.05
