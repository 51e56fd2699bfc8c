"""A noise model written from docs/hooks.md alone runs in every engine, mask included.

The plan names it as a local component (``module:attr``, with its attrs ``Config``), the
way a lab tries one before packaging it as a plugin."""

from __future__ import annotations

import attrs
import h5py
import numpy as np
import pytest
from recon import make_dataset, run


class PlainGaussian:
    """Gaussian noise, written against the documented interface only."""

    Config = attrs.make_class("Config", {"sigma": attrs.field(default=2.0)}, frozen=True)

    def __init__(self, config):
        self.config = config

    def loss(self, bk, model_I, measured_I):
        d = model_I - measured_I
        return bk.xp.sum(d * d, axis=(-2, -1)) / (2 * self.config.sigma ** 2)

    def grad_intensity(self, bk, model_I, measured_I):
        return (model_I - measured_I) / self.config.sigma ** 2

    def wave_update(self, bk, far_wave, model_I, measured_I):
        factor = (measured_I - model_I) / (2 * model_I + 1e-3)
        return factor[:, None] * far_wave


NOISE = {"type": "test_noise_model_plugin:PlainGaussian", "sigma": 2.0}


@pytest.fixture(scope="module")
def masked_data(tmp_path_factory):
    path = make_dataset(tmp_path_factory.mktemp("plugin_noise") / "d.h5", scan={"shape": [6, 6], "step_A": 0.6},
                        dose=1e5)
    with h5py.File(path, "a") as f:
        mask = np.ones((64, 64), bool)
        mask[3, 4] = False
        f["mask"] = mask
        p = f["patterns"][...]
        p[..., 3, 4] = 1e6  # under the mask: must not matter
        f["patterns"][...] = p
    return path


@pytest.mark.parametrize("engine, backend", [("conventional", "numpy"), ("gradient", "numpy"),
                                             ("conventional", "jax"), ("gradient", "jax")])
def test_a_documented_noise_model_runs_in_every_engine(masked_data, engine, backend):
    if backend == "jax":
        pytest.importorskip("jax")
    block = {"type": engine, "niter": 2, "grouping": {"size": 12}, "noise_model": NOISE}
    state = run(masked_data, [block], backend=backend)
    loss = np.asarray(state.progress.loss)
    assert np.isfinite(loss).all() and loss[-1] < 1e6  # the hot pixel (1e6 e⁻ each) is left out
