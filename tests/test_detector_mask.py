"""The detector mask: invalid pixels take no part in any engine's fit.

Pinned two ways: the noise-model wrapper is zero at masked pixels (loss, dL/dI, the wave
update, and jax's autodiff), and a whole reconstruction does not depend on what the masked
pixels hold (a hot pixel under the mask gives the run of clean data under the same mask).
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from conftest import build_backend
from recon import make_dataset, run
from test_noise_models import NAMES, _data, _model

from phaser_core.errors import DataError
from phaser_std.engines.common import valid_pixels
from phaser_std.engines.noise_models import DetectorMasked, intensity, on_valid_pixels


def _waves():
    """Test waves and counts (``test_noise_models``'s) and a mask with two invalid pixels."""
    psi, meas = _data()
    valid = np.ones(meas.shape[-2:], bool)
    valid[1, 2] = valid[5, 0] = False
    return psi, meas, valid


@pytest.mark.parametrize("name", NAMES)
def test_masked_pixels_add_nothing_and_are_left_free(name):
    bk = build_backend("numpy", "float64")
    noise = _model(name)
    psi, meas, valid = _waves()
    masked = DetectorMasked(noise, valid)
    model_i = intensity(bk, psi)
    wild = meas.copy()
    wild[:, ~valid] = 1e6  # a hot pixel: must not matter under the mask

    loss = masked.loss(bk, model_i, wild)
    d_i = masked.grad_intensity(bk, model_i, wild)
    update = masked.wave_update(bk, psi, model_i, wild)
    # the same as the data with the model's own intensity at the masked pixels
    matched = np.where(valid, meas, model_i)
    np.testing.assert_allclose(loss, noise.loss(bk, model_i, matched), rtol=1e-12)
    assert np.all(d_i[:, ~valid] == 0) and np.all(update[:, :, ~valid] == 0)
    np.testing.assert_allclose(d_i[:, valid], noise.grad_intensity(bk, model_i, meas)[:, valid], rtol=1e-12)
    if name != "poisson":  # poisson's Newton step is a per-pattern sum: it sees the mask
        np.testing.assert_allclose(update[:, :, valid], noise.wave_update(bk, psi, model_i, meas)[:, :, valid],
                                   rtol=1e-12)
    assert np.isfinite(loss).all()


@pytest.mark.parametrize("name", NAMES)
def test_autodiff_through_the_masked_loss_is_zero_at_masked_pixels(name):
    jax = pytest.importorskip("jax")
    bk = build_backend("jax", "float32")
    psi, meas, valid = _waves()
    wild = meas.copy()
    wild[:, ~valid] = 1e6
    masked = DetectorMasked(_model(name), valid)

    def total(re, im):
        return bk.xp.sum(masked.loss(bk, intensity(bk, re + 1j * im), bk.xp.asarray(wild, dtype=bk.real_dtype)))

    g_re, g_im = jax.grad(total, argnums=(0, 1))(bk.xp.asarray(psi.real, bk.real_dtype),
                                                 bk.xp.asarray(psi.imag, bk.real_dtype))
    assert np.all(np.asarray(g_re)[:, :, ~valid] == 0) and np.all(np.asarray(g_im)[:, :, ~valid] == 0)
    assert np.abs(np.asarray(g_re)[:, :, valid]).max() > 0


def test_the_wrapper_copies_and_passes_the_model_through():
    import copy

    noise = _model("poisson")
    masked = DetectorMasked(noise, np.ones((4, 4), bool))
    assert masked.config is noise.config and masked.step_size == noise.step_size
    assert copy.deepcopy(masked).config == noise.config


def test_no_mask_or_all_valid_leaves_the_noise_model_as_it_is():
    noise = _model("amplitude")
    assert on_valid_pixels(noise, None) is noise

    class Data:
        pattern_shape = (4, 6)
        mask = np.ones((4, 6), bool)

    assert valid_pixels(Data) is None
    Data.mask = np.ones((4, 6), bool)
    Data.mask[0, 0] = False  # centred (0, 0) -> corner-centred like the engines' patterns
    corner = valid_pixels(Data)
    assert corner.shape == (4, 6) and not corner[2, 3] and corner.sum() == 23
    Data.mask = np.ones((6, 4), bool)
    with pytest.raises(DataError, match=r"mask is \(6, 4\) but the patterns are \(4, 6\)"):
        valid_pixels(Data)
    Data.mask = np.zeros((4, 6), bool)
    with pytest.raises(DataError, match="every pixel invalid"):
        valid_pixels(Data)


@pytest.fixture(scope="module")
def clean_and_hot(tmp_path_factory):
    """The same simulated data twice with one detector mask: clean, and with three hot
    pixels (and a dead one) under the mask."""
    folder = tmp_path_factory.mktemp("mask")
    clean = make_dataset(folder / "clean.h5", scan={"shape": [8, 8], "step_A": 0.6}, dose=1e5)
    hot = folder / "hot.h5"
    hot.write_bytes(clean.read_bytes())
    mask = np.ones((64, 64), bool)
    bad = [(2, 2), (30, 33), (40, 7), (31, 31)]  # (30, 33), (31, 31): inside the bright-field disc
    for f in (clean, hot):
        with h5py.File(f, "a") as h:
            for y, x in bad:
                mask[y, x] = False
            h["mask"] = mask
            if f == hot:
                p = h["patterns"][...]
                for y, x in bad[:3]:
                    p[..., y, x] = 1e5
                p[..., 31, 31] = 0.0
                h["patterns"][...] = p
    return clean, hot


ENGINES = {
    "epie": {"type": "conventional", "niter": 3, "grouping": {"size": 16}, "solver": {"type": "epie"}},
    "lsqml": {"type": "conventional", "niter": 3, "grouping": {"size": 16}, "solver": {"type": "lsqml"},
              "noise_model": {"type": "poisson"}},
    "gradient": {"type": "gradient", "niter": 3, "grouping": {"size": 16}},
}


@pytest.mark.parametrize("backend", ["numpy", "jax"])
@pytest.mark.parametrize("engine", list(ENGINES))
def test_a_run_does_not_depend_on_the_masked_pixels(clean_and_hot, engine, backend):
    if backend == "jax":
        pytest.importorskip("jax")
    clean, hot = clean_and_hot
    a = run(clean, [ENGINES[engine]], backend=backend)
    b = run(hot, [ENGINES[engine]], backend=backend)
    obj_a, obj_b = np.asarray(a.object.data), np.asarray(b.object.data)
    # the hot pixels (1e5 e⁻, ~1e3x a pixel's counts) reach no arithmetic: the same numbers
    # (measured: identical on numpy and jax on a CPU); float32 rounding allowed for a GPU's
    # atomic adds
    np.testing.assert_allclose(obj_b, obj_a, rtol=0, atol=1e-6,
                               err_msg=f"{engine}/{backend}: masked pixels changed the object")
    probe_a = np.asarray(a.probe.data)
    np.testing.assert_allclose(np.asarray(b.probe.data), probe_a, rtol=0, atol=1e-6 * np.abs(probe_a).max())
    np.testing.assert_allclose(b.progress.loss[-1], a.progress.loss[-1], rtol=1e-6)


def test_without_the_mask_a_hot_pixel_would_dominate(clean_and_hot, tmp_path):
    """The check above would pass trivially if the hot pixels did not matter at all."""
    _, hot = clean_and_hot
    bare = tmp_path / "bare.h5"
    bare.write_bytes(hot.read_bytes())
    with h5py.File(bare, "a") as h:
        del h["mask"]
    masked = run(hot, [ENGINES["lsqml"]])
    unmasked = run(bare, [ENGINES["lsqml"]])
    assert unmasked.progress.loss[-1] > 10 * masked.progress.loss[-1]
