"""Raster scans: centring, ordering, rotation direction, affine and jitter."""

import attrs
import numpy as np
import pytest

from phaser_core.errors import DataError
from phaser_std.physics.scan import jitter, raster_scan


def test_raster_centred_row_major_fast_x():
    s = raster_scan((3, 4), (2.0, 1.0))
    assert s.shape == (12, 2) and s.dtype == np.float64
    np.testing.assert_allclose(s.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(s[1] - s[0], [0.0, 1.0], atol=1e-12)  # fast axis x
    np.testing.assert_allclose(s[4] - s[0], [2.0, 0.0], atol=1e-12)  # slow axis y


def test_raster_rotation_direction():
    th = 30.0
    s = raster_scan((3, 4), 1.0, rotation_deg=th)
    r = np.deg2rad(th)
    # fast axis goes (y, x) = (sin θ, cos θ): positive θ turns +x toward +y
    np.testing.assert_allclose(s[1] - s[0], [np.sin(r), np.cos(r)], atol=1e-12)
    np.testing.assert_allclose(s[4] - s[0], [np.cos(r), -np.sin(r)], atol=1e-12)
    s90 = raster_scan((1, 2), 1.0, rotation_deg=90.0)
    np.testing.assert_allclose(s90[1] - s90[0], [1.0, 0.0], atol=1e-12)


def test_raster_affine():
    a = np.array([[1.1, 0.0], [0.05, 0.9]])
    s = raster_scan((2, 3), 1.0, affine=a)
    np.testing.assert_allclose(s, raster_scan((2, 3), 1.0) @ a.T, atol=1e-12)
    with pytest.raises(ValueError, match="2x2"):
        raster_scan((2, 3), 1.0, affine=np.eye(3))


def test_jitter_seeded():
    s = raster_scan((4, 4), 1.0)
    a = jitter(s, 0.1, np.random.default_rng(1))
    b = jitter(s, 0.1, np.random.default_rng(1))
    np.testing.assert_array_equal(a, b)
    assert 0.02 < np.std(a - s) < 0.3


def _ctx(**meta):
    from phaser_core.context import InitContext
    from phaser_core.data import RawData

    return InitContext(data=RawData(patterns=np.zeros((6, 8, 8)), **meta))


def test_scan_initializers():
    from phaser_std.physics import initializers as ini

    s = ini.init_scan_from_data(ini.FromDataScanConfig(), _ctx(scan_shape=(2, 3), scan_step_A=(1.0, 2.0)))
    np.testing.assert_allclose(s, raster_scan((2, 3), (1.0, 2.0)), atol=0)
    given = np.arange(12.0).reshape(6, 2)
    out = ini.init_scan_from_data(ini.FromDataScanConfig(), _ctx(scan_positions_A=given))
    np.testing.assert_array_equal(out, given)
    with pytest.raises(DataError, match="scan_step_A"):
        ini.init_scan_from_data(ini.FromDataScanConfig(), _ctx(scan_shape=(2, 3)))
    r = ini.init_raster_scan(ini.RasterScanConfig(shape=(3, 2), step_A=(0.5, 0.5), rotation_deg=5.0), _ctx())
    np.testing.assert_allclose(r, raster_scan((3, 2), 0.5, 5.0), atol=0)
    skew = ((1.0, 0.1), (0.0, 0.98))  # a plan's scan distortion reaches the raster
    r = ini.init_raster_scan(ini.RasterScanConfig(shape=(3, 2), step_A=0.5, rotation_deg=5.0, affine=skew), _ctx())
    np.testing.assert_allclose(r, raster_scan((3, 2), 0.5, 5.0) @ np.array(skew).T, atol=1e-15)
    with pytest.raises(ValueError, match="2x2 matrix"):
        ini.RasterScanConfig(affine=(1.0, 0.1))
    with pytest.raises(ValueError, match="6 patterns"):
        ini.init_raster_scan(ini.RasterScanConfig(shape=(2, 2), step_A=1.0), _ctx())


def test_scan_from_file(tmp_path):
    from phaser_std.physics import initializers as ini

    s = raster_scan((2, 3), 1.0)
    np.save(tmp_path / "s.npy", s)
    np.testing.assert_array_equal(ini.init_scan_from_file(ini.ScanFileConfig(path="s.npy"),
                                                          attrs.evolve(_ctx(), plan_dir=tmp_path)), s)
