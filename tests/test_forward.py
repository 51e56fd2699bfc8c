"""The shared forward model: views, shifts, multislice, far field, and its adjoint."""

import numpy as np
import pytest
from conftest import build_backend

from phaser_core.physics_constants import wavelength_A
from phaser_std.backends.numpy_backend import NumpyBackend
from phaser_std.physics import forward as fw
from phaser_std.physics.objects import object_grid
from phaser_std.physics.probe import make_modes, make_probe
from phaser_std.physics.scan import raster_scan

LAM = wavelength_A(200e3)
NY = NX = 24
SAMP = (0.4, 0.4)


def _jax_backend(dtype="float32"):
    """The registered jax backend; skips only when jax is not installed."""
    return build_backend("jax", dtype)


def _setup(n_slices=1, n_modes=2, rng_seed=0, subpixel=True):
    rng = np.random.default_rng(rng_seed)
    probe = make_modes(make_probe((NY, NX), SAMP, LAM, 20.0, defocus_A=30.0), n_modes)
    scan = raster_scan((3, 3), (1.7, 1.3), rotation_deg=10.0)
    if not subpixel:
        scan = np.round(scan / SAMP[0]) * SAMP[0]
    shape, corner = object_grid(scan, (NY, NX), SAMP, pad_px=2)
    obj = (rng.uniform(0.8, 1.0, (n_slices, *shape)) * np.exp(1j * rng.uniform(-0.5, 0.5, (n_slices, *shape))))
    return probe, obj, scan, corner


def test_scan_to_pixels_puts_probe_centre_on_position():
    corner = (-3.0, 2.0)
    scan = np.array([[0.3, -1.1], [5.0, 7.77]])
    starts, frac = fw.scan_to_pixels(scan, corner, SAMP, (NY, NX))
    pos = (starts + np.array([NY // 2, NX // 2]) + frac) * np.array(SAMP) + np.array(corner)
    np.testing.assert_allclose(pos, scan, atol=1e-12)
    assert starts.dtype == np.int32 and np.all(np.abs(frac) <= 0.5)


def test_shift_probe_moves_towards_larger_indices():
    bk = NumpyBackend("float64")
    p = np.zeros((1, 16, 16), complex)
    p[0, 8, 8] = 1
    # integer shift by the phase ramp is exact
    out = fw.shift_probes(bk, p, np.array([[1.0, -2.0]]))
    assert np.unravel_index(np.argmax(np.abs(out[0, 0])), (16, 16)) == (9, 6)
    np.testing.assert_allclose(np.abs(out[0, 0, 9, 6]), 1.0, atol=1e-12)


def test_single_slice_equals_hand_computed_farfield():
    bk = NumpyBackend("float64")
    probe, obj, scan, corner = _setup(n_slices=1)
    starts, frac = fw.scan_to_pixels(scan, corner, SAMP, (NY, NX))
    model = fw.forward_intensity(bk, probe, obj, starts, frac, None)
    ky = np.fft.fftfreq(NY)[:, None]
    kx = np.fft.fftfreq(NX)[None, :]
    for b in range(len(scan)):
        y0, x0 = starts[b]
        o = obj[0, y0:y0 + NY, x0:x0 + NX]
        ramp = np.exp(-2j * np.pi * (ky * frac[b, 0] + kx * frac[b, 1]))
        ref = 0.0
        for m in range(probe.shape[0]):
            pm = np.fft.ifft2(np.fft.fft2(probe[m]) * ramp)
            ref = ref + np.abs(np.fft.fft2(pm * o) / np.sqrt(NY * NX)) ** 2
        np.testing.assert_allclose(model[b], ref, rtol=1e-10, atol=1e-14)
    # with the probe power, Σ I = Σ|P|² |O|² ≤ Σ|P|² (unitary far field)
    assert np.all(model.sum(axis=(1, 2)) <= np.sum(np.abs(probe) ** 2) + 1e-12)


def test_multislice_matches_loop_with_per_position_tilt():
    bk = NumpyBackend("float64")
    probe, obj, scan, corner = _setup(n_slices=3)
    t = np.array([4.0, 6.0, 5.0])
    starts, frac = fw.scan_to_pixels(scan, corner, SAMP, (NY, NX))
    tilts = np.random.default_rng(1).normal(0, 5.0, size=(len(scan), 2))
    props = fw.make_propagators(bk, (NY, NX), SAMP, LAM, t, tilts)
    assert props.shape == (len(scan), 2, NY, NX)
    probes = fw.shift_probes(bk, probe, frac)
    views = fw.get_views(bk, obj, starts, (NY, NX))
    _, exit_w = fw.multislice_forward(bk, probes, views, props)
    for b in [0, 4]:
        single = fw.make_propagators(bk, (NY, NX), SAMP, LAM, t, tuple(tilts[b]))
        psi = probes[b]
        for i in range(3):
            psi = psi * views[b, i]
            if i < 2:
                psi = np.fft.ifft2(np.fft.fft2(psi) * single[i])
        np.testing.assert_allclose(exit_w[b], psi, atol=1e-12)


def test_get_views_and_add_views_match_python_loop():
    bk = NumpyBackend("float64")
    rng = np.random.default_rng(2)
    obj = rng.normal(size=(2, 40, 41)) + 1j * rng.normal(size=(2, 40, 41))
    starts = np.array([[0, 0], [3, 5], [3, 5], [10, 12], [16, 17]], dtype=np.int32)  # overlapping + repeated
    views = fw.get_views(bk, obj, starts, (NY, NX))
    for b, (y, x) in enumerate(starts):
        np.testing.assert_array_equal(views[b], obj[:, y:y + NY, x:x + NX])
    vals = rng.normal(size=(5, 2, NY, NX)) + 1j * rng.normal(size=(5, 2, NY, NX))
    out = fw.add_views(bk, np.zeros_like(obj), starts, vals)
    ref = np.zeros_like(obj)
    for b, (y, x) in enumerate(starts):
        ref[:, y:y + NY, x:x + NX] += vals[b]
    np.testing.assert_allclose(out, ref, atol=1e-12)
    out2 = fw.add_views(bk, np.zeros((40, 41)), starts, np.abs(vals[:, 0]))
    ref2 = np.zeros((40, 41))
    for b, (y, x) in enumerate(starts):
        ref2[y:y + NY, x:x + NX] += np.abs(vals[b, 0])
    np.testing.assert_allclose(out2, ref2, atol=1e-12)


@pytest.mark.parametrize("backend", ["numpy", "jax"])
def test_views_per_slice_are_the_same_views(backend):
    """``get_views(per_slice=True)`` gives slice i of the 4-d gather as its i-th array,
    ``add_views`` takes that tuple as it takes the 4-d values, and the multislice forward
    and backward give the same waves and gradients from either form."""
    bk = NumpyBackend("float32") if backend == "numpy" else _jax_backend("float32")
    rng = np.random.default_rng(3)
    obj = (rng.normal(size=(3, 40, 41)) + 1j * rng.normal(size=(3, 40, 41))).astype(np.complex64)
    starts = np.array([[0, 0], [3, 5], [3, 5], [10, 12]], dtype=np.int32)
    o, st = bk.asarray(obj), bk.asarray(starts)
    whole = bk.to_numpy(fw.get_views(bk, o, st, (NY, NX)))
    per = fw.get_views(bk, o, st, (NY, NX), per_slice=True)
    assert isinstance(per, tuple) and len(per) == 3 == fw.n_view_slices(per) == fw.n_view_slices(whole)
    for i in range(3):
        np.testing.assert_array_equal(bk.to_numpy(per[i]), whole[:, i])
        np.testing.assert_array_equal(bk.to_numpy(fw.view_slice(per, i)), fw.view_slice(whole, i))
    vals = (rng.normal(size=(4, 3, NY, NX)) + 1j * rng.normal(size=(4, 3, NY, NX))).astype(np.complex64)
    ref = fw.add_views(NumpyBackend("float32"), np.zeros_like(obj), starts, vals)
    for by_slice in (False, True):
        out = fw.add_views(bk, bk.asarray(np.zeros_like(obj)), st, tuple(bk.asarray(vals[:, i]) for i in range(3)),
                           by_slice=by_slice)
        np.testing.assert_allclose(bk.to_numpy(out), ref, atol=1e-5)
    # SliceViews: slice i gathered where read, plus the offsets when given; its transmit is
    # the product with the same views
    offsets = tuple(bk.asarray(vals[:, i]) for i in range(3))
    lazy, shifted = fw.SliceViews(bk, o, st, (NY, NX)), fw.SliceViews(bk, o, st, (NY, NX), offsets=offsets)
    assert lazy.shape == whole.shape and fw.n_view_slices(lazy) == 3
    psi = bk.asarray(rng.normal(size=(4, 2, NY, NX)).astype(np.complex64))
    for i in range(3):
        np.testing.assert_array_equal(bk.to_numpy(lazy[:, i]), whole[:, i])
        np.testing.assert_allclose(bk.to_numpy(shifted[:, i]), whole[:, i] + vals[:, i], atol=1e-6)
        np.testing.assert_allclose(bk.to_numpy(shifted.transmit(psi, i)),
                                   bk.to_numpy(psi) * (whole[:, i] + vals[:, i])[:, None], rtol=1e-6, atol=1e-5)
    props = fw.make_propagators(bk, (NY, NX), SAMP, LAM, np.array([6.0, 6.0, 6.0]))
    modes = _setup(n_slices=1)[0].astype(np.complex64)
    probes = bk.asarray(np.broadcast_to(modes, (4,) + modes.shape).copy())
    psis_w, exit_w = fw.multislice_forward(bk, probes, bk.asarray(whole), props)
    psis_p, exit_p = fw.multislice_forward(bk, probes, per, props)
    np.testing.assert_array_equal(bk.to_numpy(exit_p), bk.to_numpy(exit_w))
    g_w, gp_w = fw.multislice_backward(bk, probes, bk.asarray(whole), props, psis_w, exit_w)
    g_p, gp_p = fw.multislice_backward(bk, probes, per, props, psis_p, exit_p)
    np.testing.assert_array_equal(bk.to_numpy(g_p), bk.to_numpy(g_w))
    np.testing.assert_array_equal(bk.to_numpy(gp_p), bk.to_numpy(gp_w))


@pytest.mark.parametrize("n_slices", [1, 3])
def test_adjoint_matches_finite_differences(n_slices):
    """dL = 2 Re Σ conj(grad)·dz for L = Σ (I − D)², grad = dL/d conj(z) (float64)."""
    bk = NumpyBackend("float64")
    probe, obj, scan, corner = _setup(n_slices=n_slices, rng_seed=5)
    t = np.full(n_slices, 5.0)
    starts, frac = fw.scan_to_pixels(scan, corner, SAMP, (NY, NX))
    props = fw.make_propagators(bk, (NY, NX), SAMP, LAM, t, (3.0, -2.0))
    rng = np.random.default_rng(7)
    data = rng.uniform(0, 0.01, size=(len(scan), NY, NX))

    def loss(p, o):
        i = fw.forward_intensity(bk, p, o, starts, frac, props)
        return float(np.sum((i - data) ** 2))

    probes = fw.shift_probes(bk, probe, frac)
    views = fw.get_views(bk, obj, starts, (NY, NX))
    psis, exit_w = fw.multislice_forward(bk, probes, views, props)
    wave_k = fw.farfield(bk, exit_w)
    model = fw.intensity(bk, wave_k)
    grad_k = 2 * (model - data)[:, None] * wave_k
    gv, gp = fw.multislice_backward(bk, probes, views, props, psis, fw.farfield_adjoint(bk, grad_k))
    g_obj = fw.add_views(bk, np.zeros_like(obj), starts, gv)
    g_probe = fw.unshift_probes(bk, gp, frac)

    d_obj = rng.normal(size=obj.shape) + 1j * rng.normal(size=obj.shape)
    d_probe = rng.normal(size=probe.shape) + 1j * rng.normal(size=probe.shape)
    eps = 1e-6
    fd_obj = (loss(probe, obj + eps * d_obj) - loss(probe, obj - eps * d_obj)) / (2 * eps)
    fd_probe = (loss(probe + eps * d_probe, obj) - loss(probe - eps * d_probe, obj)) / (2 * eps)
    an_obj = 2 * np.real(np.vdot(g_obj, d_obj))
    an_probe = 2 * np.real(np.vdot(g_probe, d_probe))
    assert an_obj == pytest.approx(fd_obj, rel=1e-6)
    assert an_probe == pytest.approx(fd_probe, rel=1e-6)


def test_numpy_and_jax_forward_agree_float32():
    bj = _jax_backend("float32")
    bn = NumpyBackend("float32")
    probe, obj, scan, corner = _setup(n_slices=2)
    t = np.array([6.0, 6.0])
    starts, frac = fw.scan_to_pixels(scan, corner, SAMP, (NY, NX))
    results = []
    for bk in (bn, bj):
        props = fw.make_propagators(bk, (NY, NX), SAMP, LAM, t)
        f = bk.jit(lambda p, o, s, fr: fw.forward_intensity(bk, p, o, s, fr, props))
        out = f(bk.asarray(probe), bk.asarray(obj), bk.asarray(starts), bk.asarray(frac))
        results.append(bk.to_numpy(out))
    ref = NumpyBackend("float64")
    exact = fw.forward_intensity(ref, probe, obj, starts, frac, fw.make_propagators(ref, (NY, NX), SAMP, LAM, t))
    scale = np.max(exact)
    for r in results:
        assert r.dtype == np.float32
        np.testing.assert_allclose(r, exact, atol=1e-5 * scale)
    np.testing.assert_allclose(results[0], results[1], atol=1e-5 * scale)


def test_jax_add_views_matches_numpy():
    bj = _jax_backend("float32")
    rng = np.random.default_rng(4)
    starts = np.array([[0, 0], [2, 3], [2, 3]], dtype=np.int32)
    vals = (rng.normal(size=(3, 2, NY, NX)) + 1j * rng.normal(size=(3, 2, NY, NX))).astype(np.complex64)
    ref = fw.add_views(NumpyBackend("float32"), np.zeros((2, 30, 30), np.complex64), starts, vals)
    out = bj.jit(lambda t, s, v: fw.add_views(bj, t, s, v))(bj.asarray(np.zeros((2, 30, 30), np.complex64)),
                                                           bj.asarray(starts), bj.asarray(vals))
    np.testing.assert_allclose(bj.to_numpy(out), ref, atol=1e-5)


def test_jax_backward_matches_numpy_float32():
    bj = _jax_backend("float32")
    probe, obj, scan, corner = _setup(n_slices=2)
    t = np.array([6.0, 6.0])
    starts, frac = fw.scan_to_pixels(scan, corner, SAMP, (NY, NX))
    g_exit = np.random.default_rng(9).normal(size=(len(scan), probe.shape[0], NY, NX)) * (1 + 0.5j)

    def run(bk):
        props = fw.make_propagators(bk, (NY, NX), SAMP, LAM, t)

        def f(p, o, s, fr, g):
            probes = fw.shift_probes(bk, p, fr)
            views = fw.get_views(bk, o, s, (NY, NX))
            psis, _ = fw.multislice_forward(bk, probes, views, props)
            gv, gp = fw.multislice_backward(bk, probes, views, props, psis, g)
            return fw.add_views(bk, bk.xp.zeros_like(o), s, gv), fw.unshift_probes(bk, gp, fr)

        out = bk.jit(f)(*(bk.asarray(a) for a in (probe, obj, starts, frac, g_exit)))
        return [bk.to_numpy(o) for o in out]

    ref = run(NumpyBackend("float64"))
    for r, j in zip(ref, run(bj)):
        np.testing.assert_allclose(j, r, atol=1e-5 * np.max(np.abs(r)))


@pytest.mark.parametrize("backend", ["numpy", "jax"])
def test_precomputed_shift_ramp_gives_the_same_shifts(backend):
    """Shifting and un-shifting with a ShiftRamp computed once for all positions (as the
    engines do outside their compiled loops), also split into per-group rows, equals
    shifting with the fractions."""
    bk = build_backend(backend, "float32")
    rng = np.random.default_rng(2)
    probe = bk.asarray((rng.standard_normal((2, 16, 12)) + 1j * rng.standard_normal((2, 16, 12))).astype(np.complex64))
    frac = rng.uniform(-0.5, 0.5, (3, 4, 2)).astype(np.float32)  # 3 groups of 4
    ramps = fw.shift_ramp_factors(bk, bk.asarray(frac), (16, 12))
    assert ramps.y.shape == (3, 4, 16) and ramps.x.shape == (3, 4, 12)
    waves = bk.asarray(rng.standard_normal((4, 2, 16, 12)).astype(np.complex64))
    _, rows = bk.scan(lambda c, x: (c, {"y": x[0].y, "x": x[0].x}), 0, (ramps,))
    np.testing.assert_array_equal(bk.to_numpy(rows["y"]), bk.to_numpy(ramps.y))
    np.testing.assert_array_equal(bk.to_numpy(rows["x"]), bk.to_numpy(ramps.x))
    for g in range(3):
        group = fw.ShiftRamp(ramps.y[g], ramps.x[g])
        f = bk.asarray(frac[g])
        np.testing.assert_allclose(bk.to_numpy(fw.shift_probes(bk, probe, group)),
                                   bk.to_numpy(fw.shift_probes(bk, probe, f)), rtol=0, atol=1e-5)
        np.testing.assert_allclose(bk.to_numpy(fw.unshift_probes(bk, waves, group)),
                                   bk.to_numpy(fw.unshift_probes(bk, waves, f)), rtol=0, atol=1e-5)
    split = fw.split_rows(fw.ShiftRamp(ramps.y.reshape(12, 16), ramps.x.reshape(12, 12)), 3)
    np.testing.assert_array_equal(bk.to_numpy(split.x), bk.to_numpy(ramps.x))
    np.testing.assert_array_equal(bk.to_numpy(split.y), bk.to_numpy(ramps.y))


def test_back_through_slice_is_the_adjoint_of_one_slice_step():
    """⟨back(g), x⟩ = ⟨g, forward(x)⟩ for the step x -> O_i·propagate(x, H_{i-1}) (the wave
    at the exit of slice i − 1 carried to the exit of slice i): what the conventional sweeps
    pass χ back with (float64)."""
    bk = NumpyBackend("float64")
    rng = np.random.default_rng(7)
    props = fw.make_propagators(bk, (NY, NX), SAMP, LAM, np.array([5.0, 7.0, 3.0]), (4.0, -2.0))
    view = np.exp(1j * rng.normal(size=(3, NY, NX))) * rng.uniform(0.5, 1.0, (3, NY, NX))
    x = rng.normal(size=(3, 2, NY, NX)) + 1j * rng.normal(size=(3, 2, NY, NX))
    g = rng.normal(size=(3, 2, NY, NX)) + 1j * rng.normal(size=(3, 2, NY, NX))
    for i in (1, 2):
        forward = view[:, None] * fw.propagate(bk, x, props[i - 1])
        back = fw.back_through_slice(bk, g, view, props, i)
        np.testing.assert_allclose(np.vdot(back, x), np.vdot(g, forward), rtol=1e-12)


def test_compiled_forward_intensity_holds_one_slice_of_views():
    """On jax, ``forward_intensity`` (the probe-scaling pass before the first iteration)
    gathers each slice's views inside the compiled loop over the slices: XLA's temporaries
    do not grow with the slices here (0.00), where the views of all slices gathered at once
    grew them by a wave array a slice (1.00) (the paper's 64 x 20 x 128² batch: 184 -> 24 MiB)."""
    jax = pytest.importorskip("jax")
    bk = _jax_backend("float32")
    n, b, h = 32, 16, 96
    rng = np.random.default_rng(5)

    def temporaries(n_slices: int) -> int:
        props = np.exp(0.1j * rng.random((n_slices - 1, n, n))).astype(np.complex64)
        args = ((rng.random((1, n, n)) + 1j).astype(np.complex64),
                np.exp(0.3j * rng.random((n_slices, h, h))).astype(np.complex64),
                rng.integers(0, h - n, (b, 2)).astype(np.int32), (rng.random((b, 2)) - 0.5).astype(np.float32), props)
        fn = jax.jit(lambda p, o, s, f, hs: fw.forward_intensity(bk, p, o, s, f, hs))
        return fn.lower(*args).compile().memory_analysis().temp_size_in_bytes

    wave = b * n * n * 8  # one (B, M=1, Ny, Nx) complex64 array
    per_slice = (temporaries(12) - temporaries(3)) / 9 / wave
    assert per_slice < 0.25, f"the pass's temporaries grow by {per_slice:.2f} wave arrays a slice"
