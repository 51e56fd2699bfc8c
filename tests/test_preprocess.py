"""Post-load steps: shapes, sampling, dose, seeding, masks; inputs are never modified."""

from __future__ import annotations

import numpy as np
import pytest

from phaser_core.context import LoadContext
from phaser_core.data import RawData
from phaser_core.errors import DataError
from phaser_std.data import preprocess as pp
from helpers import assert_close

CTX = LoadContext(seed=5)


def make_data(n_y=3, n_x=4, q=16, dtype=np.float32, centre=None) -> RawData:
    """Gaussian discs centred on pixel ``centre`` (default Q//2), varying amplitude per pattern."""
    yy, xx = np.indices((q, q))
    cy, cx = centre if centre is not None else (q // 2, q // 2)
    disc = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 2.0**2))
    amp = 1 + 0.1 * np.arange(n_y * n_x)
    patterns = (amp[:, None, None] * disc * 100).astype(dtype)
    return RawData(patterns=patterns, reciprocal_sampling_invA=(0.1, 0.12), energy_eV=200e3,
                   convergence_angle_mrad=20.0, scan_shape=(n_y, n_x), scan_step_A=(0.5, 0.4))


def frozen(data: RawData) -> np.ndarray:
    return np.array(data.patterns, copy=True)


def test_all_registered():
    from phaser_core.registry import Registry

    names = set(Registry.build().names("preprocessor"))
    assert {"crop_data", "bin", "pad", "scale", "poisson", "drop_nan_patterns", "center_diffraction",
            "detector_mask"} <= names


def test_crop_detector_keeps_zero_angle_and_sampling():
    data = make_data()
    before = frozen(data)
    out = pp.crop_data(pp.CropConfig(size=(8, 10)), data, CTX)
    assert out.pattern_shape == (8, 10)
    assert out.reciprocal_sampling_invA == data.reciprocal_sampling_invA
    # the maximum (zero angle, pixel 8 of 16) is at the new Q//2
    assert np.unravel_index(np.argmax(out.patterns[0]), (8, 10)) == (4, 5)
    # the window is rows 8-4 .. 8+4, columns 8-5 .. 8+5 of every pattern, values untouched
    np.testing.assert_array_equal(out.patterns, before[:, 4:12, 3:13])
    assert out.patterns.dtype == np.float32 and out.n_patterns == 12
    np.testing.assert_array_equal(data.patterns, before)
    assert out.real_space_sampling_A() == pytest.approx((1 / (8 * 0.1), 1 / (10 * 0.12)))


def test_crop_scan():
    data = make_data()
    out = pp.crop_data(pp.CropConfig(scan=(1, 3, 0, 2)), data, CTX)
    assert out.scan_shape == (2, 2) and out.n_patterns == 4
    np.testing.assert_array_equal(out.patterns, data.patterns[[4, 5, 8, 9]])
    full = pp.raster_positions(data)
    np.testing.assert_array_equal(out.scan_positions_A, full[[4, 5, 8, 9]])
    with pytest.raises(DataError, match="fit the detector"):
        pp.crop_data(pp.CropConfig(size=(32, 8)), data, CTX)


def test_bin_conserves_counts_and_scales_sampling():
    data = make_data().replace(mask=np.ones((16, 16), bool))
    data.mask[3, 3] = False
    out = pp.bin_detector(pp.BinConfig(factor=2), data, CTX)
    assert out.pattern_shape == (8, 8)
    np.testing.assert_allclose(out.patterns.sum(axis=(1, 2)), data.patterns.sum(axis=(1, 2)), rtol=1e-6)
    assert out.reciprocal_sampling_invA == pytest.approx((0.2, 0.24))
    assert not out.mask[1, 1] and out.mask.sum() == 63
    # factor 2: blocks (0, 1), (2, 3), ... so pixel 8 is the first pixel of block 4 = n//2
    p = np.asarray(data.patterns, np.float64)
    assert_close(out.patterns, p.reshape(12, 8, 2, 8, 2).sum(axis=(2, 4)), np.float32)
    out3 = pp.bin_detector(pp.BinConfig(factor=(3, 4)), data, CTX)
    # 16 px in blocks of 4 with pixel 8 in a middle position of block n//2: only 3 blocks fit
    assert out3.pattern_shape == (5, 3)
    # rows: 5 blocks of 3 from row 1 (block 2 = rows 7, 8, 9, centred on pixel 8; row 0 dropped);
    # columns: 3 blocks of 4 with pixel 8 at one of the two middle places of block 1, which
    # the layout leaves open: columns 6..9 (from column 2) or 7..10 (from column 3)
    def blocks(x0):
        return np.array([[p[:, 1 + 3 * i:4 + 3 * i, x0 + 4 * j:x0 + 4 + 4 * j].sum(axis=(1, 2)) for j in range(3)]
                         for i in range(5)]).transpose(2, 0, 1)

    matches = []
    for x0 in (2, 3):
        try:
            assert_close(out3.patterns, blocks(x0), np.float32)
            matches.append(x0)
        except AssertionError:
            pass
    assert len(matches) == 1, "the (3, 4) binning is not a documented block layout"
    assert out3.reciprocal_sampling_invA == pytest.approx((0.3, 0.48))


@pytest.mark.parametrize("q,f", [(128, 2), (96, 3), (128, 3), (64, 4), (65, 2), (64, 1)])
def test_bin_keeps_the_zero_angle_at_the_centre_pixel(q, f):
    """Zero angle at Q//2 before binning -> the binned pixel n//2 holds it."""
    p = np.zeros((1, q, q), np.float32)
    p[0, q // 2, q // 2] = 1.0
    out = pp.bin_detector(pp.BinConfig(factor=f), RawData(patterns=p), CTX)
    n = out.pattern_shape[0]
    assert np.unravel_index(np.argmax(out.patterns[0]), (n, n)) == (n // 2, n // 2)
    assert n >= q // f - 1


def test_pad_masks_new_pixels():
    data = make_data()
    out = pp.pad(pp.PadConfig(size=(20, 24)), data, CTX)
    assert out.pattern_shape == (20, 24)
    assert np.unravel_index(np.argmax(out.patterns[0]), (20, 24)) == (10, 12)
    assert out.mask.sum() == 16 * 16 and out.mask[10, 12] and not out.mask[0, 0]
    np.testing.assert_array_equal(out.patterns[:, 2:18, 4:20], data.patterns)


def test_scale():
    data = make_data()
    before = frozen(data)
    out = pp.scale(pp.ScaleConfig(factor=0.5), data, CTX)
    np.testing.assert_allclose(out.patterns, before * 0.5)
    np.testing.assert_array_equal(data.patterns, before)
    assert out.patterns.dtype == np.float32


def test_poisson_reaches_dose_and_is_seeded():
    data = make_data()
    before = frozen(data)
    cfg = pp.PoissonConfig(dose=2000.0)
    a = pp.poisson(cfg, data, CTX)
    b = pp.poisson(cfg, data, CTX)
    c = pp.poisson(cfg, data, LoadContext(seed=6))
    np.testing.assert_array_equal(a.patterns, b.patterns)
    assert not np.array_equal(a.patterns, c.patterns)
    assert np.all(a.patterns == np.round(a.patterns)) and a.patterns.dtype == np.float32
    # expected mean counts per pattern: 2000 e/Å² · 0.5·0.4 Å² = 400 e; 12 patterns -> σ_mean ≈ 6
    assert abs(a.patterns.sum(axis=(1, 2)).mean() - 400.0) < 30
    np.testing.assert_array_equal(data.patterns, before)
    # the seed key overrides the plan's seed
    d = pp.poisson(pp.PoissonConfig(dose=2000.0, seed=6), data, CTX)
    np.testing.assert_array_equal(d.patterns, c.patterns)


def test_poisson_stream_is_the_documented_one():
    from phaser_core.backend import stream_seed

    data = make_data()
    out = pp.poisson(pp.PoissonConfig(scale=1.0), data, CTX)
    rng = np.random.default_rng(stream_seed(5, "poisson-resample"))
    np.testing.assert_array_equal(out.patterns, rng.poisson(np.asarray(data.patterns, np.float64)))


def test_drop_nan_patterns_drops_positions_consistently():
    data = make_data()
    p = np.array(data.patterns)
    p[2, 0, 0] = np.nan
    p[7] = 0.0
    data = data.replace(patterns=p)
    out = pp.drop_nan_patterns(pp.DropNanConfig(), data, CTX)
    keep = [i for i in range(12) if i not in (2, 7)]
    assert out.n_patterns == 10 and out.scan_shape is None
    np.testing.assert_array_equal(out.patterns, p[keep])
    np.testing.assert_array_equal(out.scan_positions_A, pp.raster_positions(data)[keep])
    np.testing.assert_array_equal(out.extra["kept_indices"], keep)
    assert np.isnan(data.patterns[2, 0, 0])  # input untouched
    # a NaN fraction threshold keeps pattern 2 (1 NaN pixel of 256) and zero-fills it
    out2 = pp.drop_nan_patterns(pp.DropNanConfig(threshold=0.5), data, CTX)
    assert out2.n_patterns == 11 and not np.isnan(out2.patterns).any()


def test_drop_nan_patterns_fill_marks_the_filled_pixels_invalid():
    """``fill`` zeroes the NaN pixels of the kept patterns and marks them invalid in the
    detector mask (docs/engines.md, the detector mask), so the engines do not fit the zeros:
    a dead pixel (NaN in every pattern) and one NaN in one pattern, with the data's own mask
    kept."""
    data = make_data()
    p = np.array(data.patterns)
    p[:, 8, 9] = np.nan   # a dead pixel in the bright field
    p[4, 3, 2] = np.nan   # one bad reading
    own = np.ones((16, 16), dtype=bool)
    own[0, 0] = False
    out = pp.drop_nan_patterns(pp.DropNanConfig(threshold=0.5), data.replace(patterns=p, mask=own), CTX)
    assert out.n_patterns == 12 and not np.isnan(out.patterns).any()
    expected = own.copy()
    expected[8, 9] = expected[3, 2] = False
    np.testing.assert_array_equal(out.mask, expected)
    # without a mask of its own the data get one; clean data keep none
    out = pp.drop_nan_patterns(pp.DropNanConfig(threshold=0.5), data.replace(patterns=p), CTX)
    assert (~out.mask).sum() == 2 and not out.mask[8, 9] and not out.mask[3, 2]
    assert pp.drop_nan_patterns(pp.DropNanConfig(), data, CTX).mask is None
    # fill: false leaves the NaN (and the mask) alone
    out = pp.drop_nan_patterns(pp.DropNanConfig(threshold=0.5, fill=False), data.replace(patterns=p), CTX)
    assert out.mask is None and np.isnan(out.patterns[:, 8, 9]).all()
    # the default threshold would drop every pattern: the error names the dead pixel
    with pytest.raises(DataError, match="1 pixel.s. are NaN in every pattern .dead.: keep the patterns with"):
        pp.drop_nan_patterns(pp.DropNanConfig(), data.replace(patterns=p), CTX)


def test_center_diffraction_integer_and_subpixel():
    data = make_data(centre=(6, 11))
    out = pp.center_diffraction(pp.CenterConfig(subpixel=False), data, CTX)
    assert np.unravel_index(np.argmax(out.patterns[0]), (16, 16)) == (8, 8)
    assert out.extra["center_shift_px"] == pytest.approx((2.0, -3.0), abs=0.05)
    assert out.mask.sum() == 14 * 13 and out.mask[2:, :13].all()  # shifted down 2, left 3
    # whole pixels move unchanged: out[y + 2, x - 3] = in[y, x], zero where nothing came in
    expected = np.zeros_like(data.patterns)
    expected[:, 2:, :13] = data.patterns[:, :14, 3:]
    np.testing.assert_array_equal(out.patterns, expected)
    # sub-pixel: a disc at (7.5, 8.25) is centred to within a small fraction of a pixel
    yy, xx = np.indices((16, 16))
    disc = np.exp(-((yy - 7.5) ** 2 + (xx - 8.25) ** 2) / 8.0)
    sub = make_data().replace(patterns=np.stack([disc, 2 * disc]).astype(np.float64), scan_shape=None)
    out = pp.center_diffraction(pp.CenterConfig(), sub, CTX)
    com = pp.centre_of_mass(out.patterns.mean(axis=0))
    assert com == pytest.approx((8.0, 8.0), abs=0.05)
    np.testing.assert_allclose(out.patterns.sum(), sub.patterns.sum(), rtol=1e-3)


def test_center_diffraction_on_the_disc_is_not_pulled_by_dark_field_to_one_side():
    """A disc at (6, 11) with a Bragg spot to one side: the centre of mass moves toward the
    spot, the disc's centroid does not."""
    yy, xx = np.indices((16, 16))
    disc = (np.hypot(yy - 6, xx - 11) <= 3).astype(np.float64) * 100.0
    disc[np.hypot(yy - 13, xx - 3) <= 2] = 40.0  # a Bragg disc below half the bright field's level
    data = make_data().replace(patterns=np.stack([disc, disc]), scan_shape=None)
    com = pp.center_diffraction(pp.CenterConfig(subpixel=False), data, CTX).extra["center_shift_px"]
    on_disc = pp.center_diffraction(pp.CenterConfig(subpixel=False, method="disc"), data, CTX)
    assert on_disc.extra["center_shift_px"] == (2.0, -3.0)
    assert com != (2.0, -3.0)
    assert pp.centre_of_mass(on_disc.patterns[0] * (on_disc.patterns[0] > 50)) == pytest.approx((8.0, 8.0))
    with pytest.raises(DataError, match="no bright-field disc"):
        pp.center_diffraction(pp.CenterConfig(method="disc"), data.replace(patterns=np.zeros((2, 16, 16))), CTX)


def test_detector_mask_from_file_and_rectangles(tmp_path):
    data = make_data()
    m = np.ones((16, 16), bool)
    m[0, :] = False
    np.save(tmp_path / "m.npy", m)
    out = pp.detector_mask(pp.DetectorMaskConfig(path="m.npy", rectangles=[[5, 7, 5, 6]], zero_masked=True),
                           data, LoadContext(plan_dir=tmp_path))
    assert not out.mask[0].any() and not out.mask[5:7, 5].any() and out.mask.sum() == 256 - 16 - 2
    assert np.all(out.patterns[:, 0, :] == 0) and data.patterns[0, 5, 5] != 0
    with pytest.raises(DataError, match="shape"):
        np.save(tmp_path / "bad.npy", np.ones((8, 8)))
        pp.detector_mask(pp.DetectorMaskConfig(path="bad.npy"), data, LoadContext(plan_dir=tmp_path))


def test_pacbed_reads_the_patterns_a_block_at_a_time():
    """The position-averaged pattern is the NaN-ignoring mean (a pixel NaN everywhere stays
    NaN, a masked one 0), summed a block at a time: a whole-array float64 copy and NaN mask
    needed ~5x the patterns' size (benchmarks/NOTES.md 85), so its memory is held to a few
    blocks whatever the data's size."""
    import tracemalloc
    import warnings

    from phaser_std.data.preprocess import pacbed

    rng = np.random.default_rng(0)
    pats = (rng.random((2048, 64, 64)) * 50).astype(np.float32)  # 32 MiB
    pats[5, 3, 4] = np.nan
    pats[:, 0, 1] = np.nan  # dead in every pattern
    mask = np.ones((64, 64), bool)
    mask[7, 7] = False
    data = RawData(patterns=pats, mask=mask)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        want = np.nanmean(pats.astype(np.float64), axis=0) * mask
    tracemalloc.start()
    try:
        got = pacbed(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert np.allclose(got, want, rtol=1e-12, equal_nan=True)
    assert np.isnan(got[0, 1]) and got[7, 7] == 0.0 and np.isfinite(got[3, 4])
    assert peak < 24 << 20, f"{peak / 2**20:.0f} MiB for 32 MiB of patterns"


def test_center_diffraction_interpolates_integer_counts():
    """Counted patterns stored as integers (a Merlin's uint16): the sub-pixel shift's
    bilinear weights are below 1, so computed in the patterns' dtype every term truncated to
    0 and the run got all-zero patterns. Interpolated they are float32 now, equal to the
    float patterns' result; a whole-pixel shift keeps the integers, exactly."""
    from phaser_std.data.preprocess import CenterConfig, center_diffraction

    q = 32
    yy, xx = np.indices((q, q))
    disc = ((yy - 15.3) ** 2 + (xx - 16.6) ** 2 < 36) * 100.0
    pats = np.stack([disc, 2 * disc, 3 * disc])
    floats = center_diffraction(CenterConfig(), RawData(patterns=pats.astype(np.float32)), None)
    counts = center_diffraction(CenterConfig(), RawData(patterns=pats.astype(np.uint16)), None)
    assert counts.patterns.dtype == np.float32
    assert np.array_equal(counts.patterns, floats.patterns)
    assert abs(float(counts.patterns.sum()) - pats.sum()) < 1e-3 * pats.sum()
    whole = center_diffraction(CenterConfig(subpixel=False), RawData(patterns=pats.astype(np.uint16)), None)
    assert whole.patterns.dtype == np.uint16 and whole.extra["center_shift_px"] == (1.0, -1.0)
    assert np.array_equal(whole.patterns, np.roll(pats, (1, -1), axis=(1, 2)).astype(np.uint16))


def test_scale_and_bin_keep_integer_patterns_right():
    """Raw integer patterns (ADU or counts): `scale` by a factor below 1 truncated to 0 in
    their dtype (all-zero patterns), and `bin` wrapped uint8 sums past 255. Scaled they are
    float32 now; binned they keep their dtype while the sums fit it, else a wider one."""
    from phaser_std.data import preprocess as pp

    p8 = np.full((2, 8, 8), 200, np.uint8)
    scaled = pp.scale(pp.ScaleConfig(factor=0.5), RawData(patterns=p8), CTX)
    assert scaled.patterns.dtype == np.float32 and np.all(scaled.patterns == 100.0)
    floats = pp.scale(pp.ScaleConfig(factor=0.5), RawData(patterns=p8.astype(np.float32)), CTX)
    assert floats.patterns.dtype == np.float32 and np.array_equal(floats.patterns, scaled.patterns)
    binned = pp.bin_detector(pp.BinConfig(factor=(2, 2)), RawData(patterns=p8, reciprocal_sampling_invA=(0.1, 0.1)),
                             CTX)
    assert binned.patterns.dtype == np.uint16 and np.all(binned.patterns == 800)
    small = pp.bin_detector(pp.BinConfig(factor=(2, 2)),
                            RawData(patterns=np.full((2, 8, 8), 10, np.uint8), reciprocal_sampling_invA=(0.1, 0.1)), CTX)
    assert small.patterns.dtype == np.uint8 and np.all(small.patterns == 40)


def test_poisson_draws_a_block_at_a_time_as_one_whole_draw(monkeypatch):
    """The resampling draws a block of patterns at a time (bounded memory); the generator
    draws in the same order, so the counts equal one whole-array draw of the same seed."""
    from phaser_core.backend import stream_seed
    from phaser_std.data import preprocess as pp

    p = (np.random.default_rng(0).random((300, 16, 16)) * 20).astype(np.float32)
    p[3, 2, 2] = np.nan
    want = np.random.default_rng(stream_seed(7, "poisson-resample")).poisson(
        np.clip(np.nan_to_num(p.astype(np.float64) * 3.0, nan=0.0), 0.0, None)).astype(np.float32)
    monkeypatch.setattr(pp, "CHECK_BLOCK", 1000)  # 3 patterns a block: 100 blocks
    got = pp.poisson(pp.PoissonConfig(scale=3.0), RawData(patterns=p), LoadContext(seed=7))
    assert got.patterns.dtype == np.float32 and np.array_equal(got.patterns, want)


def test_the_mean_pattern_is_zero_at_masked_pixels_even_where_they_read_inf():
    """A dead pixel the mask marks invalid may read ±inf: multiplied by the mask it gave NaN
    in the mean pattern (the probe's aperture edge and scale read it), not the documented 0."""
    from phaser_core.data import RawData
    from phaser_std.data.preprocess import pacbed

    patterns = np.ones((4, 6, 6), np.float32)
    patterns[:, 1, 2] = np.inf
    mask = np.ones((6, 6), bool)
    mask[1, 2] = False
    with np.errstate(all="raise"):
        mean = pacbed(RawData(patterns=patterns, mask=mask))
    assert mean[1, 2] == 0.0 and np.isfinite(mean).all()


@pytest.mark.parametrize("shape, rotation", [((8, 8), 0.0), ((4, 16), 0.0), ((2, 50), 30.0), ((1, 64), 0.0),
                                             ((6, 9), 45.0)])
def test_the_area_per_position_of_explicit_positions_is_the_step_area(shape, rotation):
    """Explicit positions without a step: the area they cover per position. A square grid
    was assumed (√N per side): a 4 x 16 raster came out at 0.92 of its step area, 2 x 50 at
    0.61, a line of 64 at 81x (so `poisson: {dose}` missed the dose by as much)."""
    from phaser_core.data import RawData
    from phaser_std.data.preprocess import scan_area_per_position_A2
    from phaser_std.physics.scan import raster_scan

    def area(step):
        pos = raster_scan(shape, step, rotation_deg=rotation)
        return scan_area_per_position_A2(RawData(patterns=np.ones((len(pos), 4, 4), np.float32),
                                                 scan_positions_A=pos))

    assert area((0.6, 0.6)) == pytest.approx(0.36, rel=1e-9)
    if min(shape) > 1:  # unequal steps: the margin uses the smaller one (within 5% here)
        assert area((0.5, 0.8)) == pytest.approx(0.4, rel=0.05)
