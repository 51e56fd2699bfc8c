"""Grouping: partitions, padding mask, spatial compactness, seeded per-iteration streams."""

from __future__ import annotations

import numpy as np
import pytest

from phaser_core.registry import get_registry
from phaser_std.engines.grouping import Groups, iteration_groups, make_groups


def _grid(ny=7, nx=9, step=2.0):
    y, x = np.meshgrid(np.arange(ny) * step, np.arange(nx) * step, indexing="ij")
    return np.stack([y.ravel(), x.ravel()], axis=1)


def _numpy_bk():
    return get_registry().get("backend", "numpy").obj("float32")


@pytest.mark.parametrize("kind", ["sparse", "compact"])
def test_partition_padding_and_mask(kind):
    pos = _grid()  # 63 positions
    g = make_groups(pos, 10, kind, np.random.default_rng(1))
    assert isinstance(g, Groups)
    assert g.indices.shape == (7, 10) and g.mask.shape == (7, 10)
    assert g.indices.dtype == np.int64 and g.mask.dtype == bool
    members = np.concatenate(g.as_list())
    assert sorted(members.tolist()) == list(range(63))  # every position exactly once
    assert sorted(g.mask.sum(axis=1).tolist()) == [3] + [10] * 6  # one ragged group
    ragged = int(np.argmin(g.mask.sum(axis=1)))
    # padding repeats a valid member of the same group
    assert set(g.indices[ragged][~g.mask[ragged]]) <= set(g.indices[ragged][g.mask[ragged]])


def test_compact_groups_are_spatially_tighter_than_sparse():
    pos = _grid(12, 12)
    spread = {}
    for kind in ("sparse", "compact"):
        g = make_groups(pos, 16, kind, np.random.default_rng(0))
        spread[kind] = np.mean([np.ptp(pos[idx], axis=0).sum() for idx in g.as_list()])
    assert spread["compact"] < 0.4 * spread["sparse"]


def test_seeded_reproducible_and_different_per_iteration():
    bk = _numpy_bk()
    pos = _grid()
    a = iteration_groups(bk, 3, 0, 5, pos, 8, "sparse")
    b = iteration_groups(bk, 3, 0, 5, pos, 8, "sparse")
    c = iteration_groups(bk, 3, 0, 6, pos, 8, "sparse")
    d = iteration_groups(bk, 3, 1, 5, pos, 8, "sparse")
    np.testing.assert_array_equal(a.indices, b.indices)
    assert not np.array_equal(a.indices, c.indices)
    assert not np.array_equal(a.indices, d.indices)


def test_compact_keeps_partition_and_shuffles_order():
    bk = _numpy_bk()
    pos = _grid(10, 10)
    a = iteration_groups(bk, 0, 0, 1, pos, 10, "compact")
    b = iteration_groups(bk, 0, 0, 2, pos, 10, "compact")
    sets_a = sorted(tuple(sorted(x)) for x in a.as_list())
    sets_b = sorted(tuple(sorted(x)) for x in b.as_list())
    assert sets_a == sets_b
    assert not np.array_equal(a.indices, b.indices)
    regrouped = iteration_groups(bk, 0, 0, 2, pos, 10, "sparse", regroup=False)
    assert len(regrouped) == 10


def test_group_size_larger_than_scan_and_errors():
    g = make_groups(_grid(2, 2), 64, "sparse", np.random.default_rng(0))
    assert g.indices.shape == (1, 4) and g.mask.all()
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        make_groups(np.zeros((5, 3)), 2)
    with pytest.raises(ValueError, match="kind"):
        make_groups(_grid(), 2, "random")
    with pytest.raises(ValueError, match="group_size"):
        make_groups(_grid(), 0)
