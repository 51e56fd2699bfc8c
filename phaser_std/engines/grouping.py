"""Groups of scan positions processed together by the engines.

Two kinds (PHASER_REFERENCE §2.5):

- ``"sparse"``: a random partition; each group spreads over the whole scan (good for
  stochastic updates, few overlaps inside a group).
- ``"compact"``: spatially clustered groups (LSQML-c style), by recursive splitting of the
  positions along their longer extent into blocks of ``group_size`` (a balanced k-d split:
  every group is full except the last); the rng only breaks ties and shuffles the order.

Groups come back as one ``(G, S)`` int array padded to equal size ``S = group_size`` plus a
``(G, S)`` bool mask: the ragged last group is padded by repeating its own first index with
``mask=False``, so a jit-compiled group step sees one shape for every group and never
recompiles; engines multiply per-pattern contributions (loss, updates) by the mask.

Per-iteration randomness comes from ``bk.rng(seed, f"grouping-{engine_num}-{iteration}")``
(:func:`iteration_groups`), so a resumed run regroups exactly as an uninterrupted one.
"""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np

__all__ = ["Groups", "make_groups", "iteration_groups", "stream_name"]

KINDS = ("sparse", "compact")


@attrs.frozen
class Groups:
    """``indices`` ``(G, S)`` int64 into the scan; ``mask`` ``(G, S)`` bool (False: padding)."""

    indices: np.ndarray
    mask: np.ndarray

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    @property
    def group_size(self) -> int:
        return int(self.indices.shape[1])

    def as_list(self) -> list[np.ndarray]:
        """The groups without padding, one index array each."""
        return [idx[m] for idx, m in zip(self.indices, self.mask)]

    def shuffled(self, rng: np.random.Generator) -> "Groups":
        """The same groups in a random order."""
        order = rng.permutation(len(self))
        return Groups(self.indices[order], self.mask[order])


def _pad(groups: list[np.ndarray], size: int) -> Groups:
    idx = np.empty((len(groups), size), dtype=np.int64)
    mask = np.zeros((len(groups), size), dtype=bool)
    for g, members in enumerate(groups):
        n = len(members)
        idx[g, :n] = members
        idx[g, n:] = members[0]
        mask[g, :n] = True
    return Groups(idx, mask)


def _compact_split(pos: np.ndarray, members: np.ndarray, n_groups: int, size: int) -> list[np.ndarray]:
    if n_groups <= 1:
        return [np.sort(members)]
    p = pos[members]
    axis = int(np.argmax(np.ptp(p, axis=0)))
    # stable sort along the longer extent; ties broken by the (shuffled) member order
    order = np.argsort(p[:, axis], kind="stable")
    left_groups = n_groups // 2
    n_left = left_groups * size
    left, right = members[order[:n_left]], members[order[n_left:]]
    return (_compact_split(pos, left, left_groups, size)
            + _compact_split(pos, right, n_groups - left_groups, size))


def make_groups(positions_A: Any, group_size: int, kind: str = "sparse",
                rng: np.random.Generator | None = None) -> Groups:
    """Partition the scan positions ``(N, 2)`` [Å] into groups of ``group_size``.

    :param kind: ``"sparse"`` (random) or ``"compact"`` (spatially clustered).
    :param rng: a numpy Generator (``bk.rng(seed, stream)``); None: seed 0.
    :returns: :class:`Groups` of ``ceil(N / group_size)`` groups, all full but the last.
    """
    pos = np.asarray(positions_A, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 2:
        raise ValueError(f"make_groups: positions must be (N, 2) (y, x) [Å], got shape {pos.shape}")
    n = pos.shape[0]
    if n == 0:
        raise ValueError("make_groups: no scan positions to group")
    group_size = int(group_size)
    if group_size < 1:
        raise ValueError(f"make_groups: group_size must be >= 1, got {group_size}")
    if kind not in KINDS:
        raise ValueError(f"make_groups: kind must be one of {KINDS}, got {kind!r}")
    rng = rng if rng is not None else np.random.default_rng(0)
    size = min(group_size, n)
    n_groups = -(-n // size)
    perm = rng.permutation(n)
    if kind == "sparse":
        groups = [np.sort(perm[i * size:(i + 1) * size]) for i in range(n_groups)]
    else:
        groups = _compact_split(pos, perm, n_groups, size)
        order = rng.permutation(n_groups)
        groups = [groups[i] for i in order]
    return _pad(groups, size)


def stream_name(engine_num: int, iteration: int) -> str:
    """The rng stream of an engine iteration's grouping."""
    return f"grouping-{int(engine_num)}-{int(iteration)}"


def iteration_groups(bk: Any, seed: int, engine_num: int, iteration: int, positions_A: Any,
                     group_size: int, kind: str = "sparse", regroup: bool | None = None) -> Groups:
    """The groups of one engine iteration.

    ``regroup`` (default: True for sparse, False for compact) makes a new partition from this
    iteration's stream; otherwise the partition of the engine's stream
    (``grouping-{engine_num}``) is kept and only its order is shuffled with this iteration's
    stream. Either way the result depends only on (seed, engine_num, iteration).
    """
    if regroup is None:
        regroup = kind == "sparse"
    rng = bk.rng(seed, stream_name(engine_num, iteration))
    if regroup:
        return make_groups(positions_A, group_size, kind, rng)
    base = make_groups(positions_A, group_size, kind, bk.rng(seed, f"grouping-{int(engine_num)}"))
    return base.shuffled(rng)
