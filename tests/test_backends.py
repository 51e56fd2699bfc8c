"""Every installed backend against numpy: FFTs, indexed add/set, random streams, dtypes, jit."""

from __future__ import annotations

import os

import numpy as np
import pytest
from helpers import assert_close, tolerance

from phaser_core.backend import Backend, BaseBackend
from phaser_core.errors import BackendUnavailable
from phaser_core.registry import get_registry

SHAPES = [(8, 8), (6, 10), (5, 7)]  # even, rectangular, odd


def _cplx(rng, shape, dtype=np.complex128):
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)


# -- FFTs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", SHAPES)
def test_fft2_matches_numpy_and_is_unitary(make_backend, dtype, shape):
    bk = make_backend(dtype)
    x = _cplx(np.random.default_rng(1), (3, *shape))
    xb = bk.asarray(x)
    f = bk.fft2(xb)
    assert bk.to_numpy(f).dtype == bk.complex_dtype
    ref = np.fft.fft2(x.astype(bk.complex_dtype).astype(np.complex128), norm="ortho")
    assert_close(bk.to_numpy(f), ref, dtype, factor=4, err_msg="fft2")
    # unitary: Σ|ψ|² equal in both spaces (per batch entry)
    energy_r = np.sum(np.abs(bk.to_numpy(xb)) ** 2, axis=(-2, -1))
    energy_k = np.sum(np.abs(bk.to_numpy(f)) ** 2, axis=(-2, -1))
    assert_close(energy_k, energy_r, dtype, factor=20, err_msg="Parseval")
    back = bk.ifft2(f)
    assert_close(bk.to_numpy(back), bk.to_numpy(xb), dtype, factor=4, err_msg="ifft2(fft2(x))")
    assert_close(bk.to_numpy(bk.ifft2(xb)), np.fft.ifft2(x.astype(bk.complex_dtype), norm="ortho"),
                 dtype, factor=4, err_msg="ifft2")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", SHAPES)
def test_fft2c_matches_numpy_reference(make_backend, dtype, shape):
    bk = make_backend(dtype)
    x = _cplx(np.random.default_rng(2), shape).astype(bk.complex_dtype)
    shift = lambda a: np.fft.fftshift(a, axes=(-2, -1))  # noqa: E731
    ishift = lambda a: np.fft.ifftshift(a, axes=(-2, -1))  # noqa: E731
    ref = shift(np.fft.fft2(ishift(x.astype(np.complex128)), norm="ortho"))
    assert_close(bk.to_numpy(bk.fft2c(bk.asarray(x))), ref, dtype, factor=4, err_msg="fft2c")
    iref = shift(np.fft.ifft2(ishift(x.astype(np.complex128)), norm="ortho"))
    assert_close(bk.to_numpy(bk.ifft2c(bk.asarray(x))), iref, dtype, factor=4, err_msg="ifft2c")
    assert_close(bk.to_numpy(bk.ifft2c(bk.fft2c(bk.asarray(x)))), x, dtype, factor=4, err_msg="round trip")


@pytest.mark.parametrize("shape", SHAPES)
def test_fft2c_centring(backend, shape):
    """A delta at (N//2, N//2) transforms to a flat, zero-phase spectrum; a constant to a
    delta at the centre pixel; a plane wave exp(+2πi k·r) to a peak at centre + k."""
    ny, nx = shape
    n = ny * nx
    delta = np.zeros(shape, np.complex64)
    delta[ny // 2, nx // 2] = 1
    flat = backend.to_numpy(backend.fft2c(backend.asarray(delta)))
    assert_close(flat, np.full(shape, 1 / np.sqrt(n), np.complex128), "float32", err_msg="flat spectrum")
    peak = backend.to_numpy(backend.fft2c(backend.asarray(np.ones(shape, np.complex64))))
    expected = np.zeros(shape, np.complex128)
    expected[ny // 2, nx // 2] = np.sqrt(n)
    assert_close(peak, expected, "float32", factor=4, err_msg="constant -> centre delta")
    # plane wave with (ky, kx) = (1, 2) cycles across the field: forward kernel exp(-2πi k·r)
    yy, xx = np.mgrid[:ny, :nx]
    wave = np.exp(2j * np.pi * (1 * yy / ny + 2 * xx / nx)).astype(np.complex64)
    spec = np.abs(backend.to_numpy(backend.fft2c(backend.asarray(wave))))
    assert np.unravel_index(np.argmax(spec), shape) == (ny // 2 + 1, (nx // 2 + 2) % nx)
    # the inverse puts the zero frequency back at the centre too
    back = backend.to_numpy(backend.ifft2c(backend.asarray(np.full(shape, 1 / np.sqrt(n), np.complex64))))
    assert_close(back, delta, "float32", err_msg="ifft2c of flat spectrum")


def test_fftshift_roundtrip(backend):
    x = np.arange(35, dtype=np.float32).reshape(5, 7)
    xb = backend.asarray(x)
    np.testing.assert_array_equal(backend.to_numpy(backend.fftshift(xb)), np.fft.fftshift(x))
    np.testing.assert_array_equal(backend.to_numpy(backend.ifftshift(backend.fftshift(xb))), x)


# -- indexed add / set ----------------------------------------------------------------------


def _windows(corners, ny, nx):
    """Fancy-index tuple of (B, Ny, Nx) index arrays for windows with the given corners."""
    corners = np.asarray(corners)
    iy = corners[:, 0, None, None] + np.arange(ny)[None, :, None]
    ix = corners[:, 1, None, None] + np.arange(nx)[None, None, :]
    return (np.broadcast_to(iy, (len(corners), ny, nx)), np.broadcast_to(ix, (len(corners), ny, nx)))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_add_at_overlapping_windows(make_backend, dtype):
    bk = make_backend(dtype)
    rng = np.random.default_rng(3)
    ny, nx = 4, 5
    corners = [(0, 0), (1, 2), (1, 2), (3, 1), (0, 0), (2, 3)]  # overlapping and repeated
    index = _windows(corners, ny, nx)
    values = _cplx(rng, (len(corners), ny, nx)).astype(bk.complex_dtype)
    start = _cplx(rng, (8, 9)).astype(bk.complex_dtype)
    expected = start.astype(np.complex128)
    for b, (cy, cx) in enumerate(corners):
        expected[cy:cy + ny, cx:cx + nx] += values[b]
    idx = tuple(bk.asarray(i) for i in index)
    out = bk.add_at(bk.asarray(start), idx, bk.asarray(values))
    result = bk.to_numpy(out)
    assert result.dtype == bk.complex_dtype
    assert_close(result, expected, dtype, factor=4, err_msg="add_at")
    # host index arrays work too, and real targets
    real = bk.add_at(bk.asarray(np.zeros((8, 9))), index, bk.asarray(np.ones((len(corners), ny, nx))))
    counts = np.zeros((8, 9))
    for cy, cx in corners:
        counts[cy:cy + ny, cx:cx + nx] += 1
    np.testing.assert_array_equal(bk.to_numpy(real), counts)
    assert counts.max() >= 3  # the test really has repeated, overlapping windows


def test_add_at_with_leading_slice(backend):
    """Adding a window stack into every slice of a (S, H, W) object: index (slice, iy, ix)."""
    ny, nx = 3, 3
    corners = [(0, 0), (1, 1), (1, 1)]
    iy, ix = _windows(corners, ny, nx)
    vals = np.ones((2, len(corners), ny, nx), np.complex64) * np.array([1, 2j])[:, None, None, None]
    out = backend.to_numpy(backend.add_at(backend.asarray(np.zeros((2, 5, 5), np.complex64)),
                                          (slice(None), iy, ix), backend.asarray(vals)))
    expected = np.zeros((2, 5, 5), np.complex64)
    np.add.at(expected, (slice(None), iy, ix), vals)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("lead", [(), (3,)])
def test_get_and_add_windows(backend, lead):
    """Windows of (H, W) and (S, H, W) arrays: the gather cuts them out, the scatter adds
    overlapping and repeated windows (also inside jit), identical to a slice loop; and the
    index-array versions every backend inherits give the same numbers."""
    rng = np.random.default_rng(5)
    ny, nx = 4, 5
    corners = np.array([(0, 0), (1, 2), (1, 2), (3, 1), (0, 0), (4, 4)], np.int32)
    arr = _cplx(rng, lead + (8, 9)).astype(np.complex64)
    vals = _cplx(rng, (len(corners),) + lead + (ny, nx)).astype(np.complex64)
    cut = np.stack([arr[..., y:y + ny, x:x + nx] for y, x in corners])
    added = arr.copy()
    for (y, x), v in zip(corners, vals):
        added[..., y:y + ny, x:x + nx] += v
    base = BaseBackend  # the index-array versions
    for get, add in ((backend.get_windows, backend.add_windows),
                     (lambda *a: base.get_windows(backend, *a), lambda *a: base.add_windows(backend, *a)),
                     (backend.jit(backend.get_windows, static_argnums=2) if backend.name == "jax" else
                      backend.get_windows, backend.jit(backend.add_windows))):
        np.testing.assert_array_equal(backend.to_numpy(get(backend.asarray(arr), backend.asarray(corners),
                                                           (ny, nx))), cut)
        out = add(backend.asarray(arr.copy()), backend.asarray(corners), backend.asarray(vals))
        np.testing.assert_allclose(backend.to_numpy(out), added, rtol=1e-6, atol=1e-6)


def test_set_at(backend):
    index = _windows([(0, 0), (4, 4)], 3, 3)
    vals = np.arange(18, dtype=np.float32).reshape(2, 3, 3)
    out = backend.to_numpy(backend.set_at(backend.asarray(np.zeros((8, 8), np.float32)), index,
                                          backend.asarray(vals)))
    expected = np.zeros((8, 8), np.float32)
    expected[index] = vals
    np.testing.assert_array_equal(out, expected)
    sl = backend.to_numpy(backend.set_at(backend.asarray(np.zeros((4, 4), np.float32)),
                                         (slice(1, 3), 2), backend.asarray(np.float32(7))))
    assert sl[1, 2] == 7 and sl[2, 2] == 7 and sl.sum() == 14


# -- matrix products ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_matmul_keeps_full_precision(make_backend, dtype):
    """A (4, 3000) x (3000, 5) complex product to float32 rounding. TF32 (a GPU's default
    for float32 products in jax: inputs rounded to 10 mantissa bits) is off by 2.8e-4 of
    the largest entry here (emulated on the host), 7x this tolerance; float32 by 3.5e-7.
    Only a GPU computes in TF32: on a CPU this checks plain correctness, and
    ``test_jax_matmul_asks_for_highest_precision`` that jax is asked for full precision."""
    bk = make_backend(dtype)
    rng = np.random.default_rng(5)
    a = _cplx(rng, (4, 3000)).astype(bk.complex_dtype)
    b = _cplx(rng, (3000, 5)).astype(bk.complex_dtype)
    ref = a.astype(np.complex128) @ b.astype(np.complex128)
    got = bk.to_numpy(bk.matmul(bk.asarray(a), bk.asarray(b)))
    assert_close(got, ref, dtype, factor=20, err_msg="matmul")


def test_divide_real_divides_each_part_as_numpy_does(backend):
    """complex / real (an object map by its illumination): every backend gives numpy's
    result bit for bit (numpy divides each part when the divisor's imaginary part is 0;
    jax's own complex division rounds differently, and is 3x slower), with a broadcast
    scalar too; a complex divisor is an ordinary division."""
    rng = np.random.default_rng(8)
    z = _cplx(rng, (3, 17, 19)).astype(backend.complex_dtype)
    r = (rng.random((17, 19)) + 0.1).astype(backend.real_dtype)
    want = z / r
    got = backend.to_numpy(backend.divide_real(backend.asarray(z), backend.asarray(r)))
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)
    scalar = np.dtype(backend.real_dtype).type(0.37)
    np.testing.assert_array_equal(backend.to_numpy(backend.divide_real(backend.asarray(z), scalar)), z / scalar)
    w = _cplx(rng, (17, 19)).astype(backend.complex_dtype)
    assert_close(backend.to_numpy(backend.divide_real(backend.asarray(z), backend.asarray(w))), z / w,
                 backend.dtype, err_msg="complex divisor")


def test_jax_matmul_asks_for_highest_precision():
    jax = pytest.importorskip("jax")
    bk = get_registry().get("backend", "jax").obj("float32")
    jaxpr = str(jax.make_jaxpr(bk.matmul)(np.ones((2, 3), np.float32), np.ones((3, 2), np.float32)))
    assert "HIGHEST" in jaxpr, jaxpr


# -- random streams -----------------------------------------------------------------------


def test_rng_streams(backend, numpy_backend):
    a = backend.rng(42, "grouping").random(8)
    np.testing.assert_array_equal(a, numpy_backend.rng(42, "grouping").random(8))
    np.testing.assert_array_equal(a, backend.rng(42, "grouping").random(8))  # reproducible
    assert not np.allclose(a, backend.rng(42, "object-init").random(8))
    assert not np.allclose(a, backend.rng(43, "grouping").random(8))
    assert isinstance(backend.rng(0, "x"), np.random.Generator)


# -- dtype policy -------------------------------------------------------------------------


@pytest.mark.parametrize("dtype,real,cplx", [("float32", np.float32, np.complex64),
                                             ("float64", np.float64, np.complex128)])
def test_dtype_policy(make_backend, dtype, real, cplx):
    bk = make_backend(dtype)
    assert isinstance(bk, Backend)
    assert bk.dtype == dtype
    assert np.dtype(bk.real_dtype) == real and np.dtype(bk.complex_dtype) == cplx
    assert bk.to_numpy(bk.asarray(np.ones(3, np.float64))).dtype == real
    assert bk.to_numpy(bk.asarray(np.ones(3, np.float32))).dtype == real
    assert bk.to_numpy(bk.asarray(np.ones(3, np.complex128))).dtype == cplx
    assert bk.to_numpy(bk.asarray([1.5, 2.5])).dtype == real
    assert bk.to_numpy(bk.asarray(np.ones(3, np.int32))).dtype.kind == "i"
    z = bk.asarray(np.ones((4, 4), np.complex128))
    assert bk.to_numpy(bk.fft2c(z)).dtype == cplx
    assert bk.to_numpy(bk.ifft2(bk.fft2(z))).dtype == cplx
    assert bk.to_numpy(bk.xp.abs(z)).dtype == real
    assert bk.to_numpy(bk.asarray(np.ones(2), dtype=np.float32)).dtype == np.float32  # explicit wins
    with pytest.raises(ValueError, match="dtype"):
        type(bk)("float16")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_step_inputs_are_what_asarray_gives(make_backend, dtype):
    """The batched transfer of a step's per-call arrays follows :meth:`asarray`: the dtype
    policy for floats and complex values, integers keeping their kind, the same values."""
    bk = make_backend(dtype)
    host = (np.arange(6, dtype=np.int64).reshape(3, 2), np.linspace(0, 1, 4), np.ones(3, np.complex128) * 1j,
            np.float64(0.25), np.array([True, False]))
    got = bk.step_inputs(*host)
    assert len(got) == len(host)
    for h, g in zip(host, got):
        want = bk.to_numpy(bk.asarray(h))
        out = bk.to_numpy(g)
        assert out.dtype == want.dtype and out.shape == np.shape(h)
        np.testing.assert_array_equal(out, want)
    assert bk.step_inputs() == ()


def test_to_numpy_gives_numpy(backend):
    out = backend.to_numpy(backend.asarray(np.arange(6.0).reshape(2, 3)))
    assert type(out) is np.ndarray
    np.testing.assert_array_equal(out, np.arange(6.0, dtype=np.float32).reshape(2, 3))
    assert backend.synchronize(backend.asarray(np.ones(2))) is not None
    backend.synchronize()


# -- jit ----------------------------------------------------------------------------------


def test_jit_same_numbers(backend):
    bk = backend

    def step(obj, probe, scale):
        wave = bk.fft2(obj * probe) * scale
        return bk.xp.abs(wave) ** 2, bk.ifft2(wave)

    rng = np.random.default_rng(5)
    obj = bk.asarray(_cplx(rng, (2, 8, 8)))
    probe = bk.asarray(_cplx(rng, (8, 8)))
    plain = step(obj, probe, 2.0)
    fast = bk.jit(step, static_argnums=(2,))
    compiled = fast(obj, probe, 2.0)
    for a, b in zip(compiled, plain):
        assert_close(bk.to_numpy(a), bk.to_numpy(b), "float32", factor=4, err_msg="jit")
        assert bk.to_numpy(a).dtype == bk.to_numpy(b).dtype
    again = fast(obj, probe, 2.0)  # cached call
    assert_close(bk.to_numpy(again[0]), bk.to_numpy(plain[0]), "float32", factor=4)
    # and both equal a plain numpy computation (on numpy, jit is the identity)
    o, p = bk.to_numpy(obj).astype(np.complex128), bk.to_numpy(probe).astype(np.complex128)
    reference = np.abs(np.fft.fft2(o * p, norm="ortho") * 2.0) ** 2
    assert_close(bk.to_numpy(compiled[0]), reference, "float32", factor=4)


def test_add_at_inside_jit(backend):
    bk = backend
    index = _windows([(0, 0), (1, 1), (0, 0)], 3, 3)

    def accumulate(target, values):
        return bk.add_at(target, index, values)

    f = bk.jit(accumulate)
    vals = bk.asarray(np.ones((3, 3, 3), np.float32))
    out = bk.to_numpy(f(bk.asarray(np.zeros((5, 5), np.float32)), vals))
    expected = np.zeros((5, 5), np.float32)
    np.add.at(expected, index, np.ones((3, 3, 3), np.float32))
    np.testing.assert_array_equal(out, expected)


# -- registry and jax specifics -------------------------------------------------------------


def test_registry_lists_all_backends():
    reg = get_registry()
    for name in ("numpy", "jax", "cupy"):
        assert ("backend", name) in reg


def test_unavailable_backend_says_how_to_fix():
    try:
        get_registry().get("backend", "cupy").obj("float32")
    except BackendUnavailable as exc:
        msg = str(exc)
        assert "phaser-ptycho[cupy]" in msg or "GPU" in msg
    else:
        pytest.skip("cupy and a GPU are available here")


def test_jax_float32_stays_float32_with_x64_on():
    """x64 is process-global: a float32 jax backend must stay float32 after a float64 one."""
    pytest.importorskip("jax")
    import jax

    before = jax.config.read("jax_enable_x64")
    try:
        reg = get_registry().get("backend", "jax")
        bk64 = reg.obj("float64")
        assert bk64.to_numpy(bk64.asarray(np.ones(2))).dtype == np.float64
        bk32 = reg.obj("float32")
        x = bk32.asarray(np.ones((4, 4), np.complex128))
        assert x.dtype == np.complex64
        assert bk32.fft2c(x).dtype == np.complex64
        assert bk32.xp.abs(x).dtype == np.float32
        assert bk32.add_at(x, (np.array([0, 0]), np.array([1, 1])), bk32.asarray(np.ones(2, np.complex128))).dtype \
            == np.complex64
        assert bk32.jit(lambda a: bk32.fft2(a) * 2.0)(x).dtype == np.complex64
    finally:
        jax.config.update("jax_enable_x64", before)


def test_jax_float32_without_x64_has_no_warnings():
    pytest.importorskip("jax")
    import warnings

    import jax

    if jax.config.read("jax_enable_x64"):
        pytest.skip("x64 already on in this process")
    bk = get_registry().get("backend", "jax").obj("float32")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert bk.asarray(np.ones(3, np.float64)).dtype == np.float32
        assert bk.asarray(np.ones(3, np.complex128)).dtype == np.complex64
        assert bk.asarray(np.ones(3, np.int64)).dtype == np.int32


def test_tolerance_helper_can_fail():
    """The float32 tolerance rejects a 1e-4 relative error and accepts rounding error."""
    x = np.linspace(1, 2, 10)
    assert_close(x.astype(np.float32), x, "float32")
    with pytest.raises(AssertionError):
        assert_close(x * (1 + 1e-4), x, "float32")
    with pytest.raises(AssertionError):
        assert_close(x.astype(np.float32), x, "float64")
    assert tolerance(np.complex64) == tolerance("float32")


def test_interleaved_index_adds_complex_values_through_the_real_view():
    """The cupy backend's complex scatter-add (checked here with numpy's float view)."""
    from phaser_std.backends._indexing import interleaved_index

    rng = np.random.default_rng(0)
    target = (rng.normal(size=(2, 9, 10)) + 1j * rng.normal(size=(2, 9, 10))).astype(np.complex64)
    starts = np.array([[0, 0], [1, 2], [1, 2], [3, 4]])
    iy = (starts[:, 0][:, None] + np.arange(5))[:, :, None]
    ix = (starts[:, 1][:, None] + np.arange(6))[:, None, :]
    values = (rng.normal(size=(2, 4, 5, 6)) + 1j * rng.normal(size=(2, 4, 5, 6))).astype(np.complex64)
    index = (slice(None), iy, ix)
    expected = target.copy()
    np.add.at(expected, index, values)
    re_index, im_index = interleaved_index(index, target.ndim)
    flat = target.view(np.float32)
    np.add.at(flat, re_index, values.real)
    np.add.at(flat, im_index, values.imag)
    np.testing.assert_allclose(target, expected, rtol=1e-6, atol=1e-6)
    assert interleaved_index((slice(None), iy, slice(0, 6)), 3) is None


def test_jax_compiled_steps_are_cached_on_disk(tmp_path):
    """A second process finds the compiled function in $PHASER_CACHE_DIR/jax."""
    pytest.importorskip("jax", reason="jax is not installed")
    import subprocess
    import sys

    code = """
import jax
import numpy as np
from phaser_core.registry import get_registry
hits = []
jax.monitoring.register_event_listener(
    lambda name, **kw: hits.append(name) if name == "/jax/compilation_cache/cache_hits" else None)
bk = get_registry().get("backend", "jax").obj("float32")
f = bk.jit(lambda x: bk.fft2(x * 2.0).sum())
x = bk.asarray(np.ones((4, 256, 256), np.complex64))
for _ in range(3):
    x = x + f(x)
print(float(abs(bk.to_numpy(f(x)))))
print("cache hits", len(hits))
"""
    env = dict(os.environ, PHASER_CACHE_DIR=str(tmp_path), PHASER_JAX_CACHE="1", PHASER_JAX_CACHE_MIN_COMPILE_S="0")
    first = subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True, text=True)
    written = sorted(p.name for p in (tmp_path / "jax").iterdir())
    assert written, "nothing was written to the compilation cache"
    assert "cache hits 0" in first.stdout, first.stdout
    # a second process loads its programs from the cache instead of compiling them
    second = subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True, text=True)
    hits = int(second.stdout.split("cache hits")[-1])
    assert hits >= 2, second.stdout  # the jitted function and the ops around it
    assert sorted(p.name for p in (tmp_path / "jax").iterdir()) == written
    off = tmp_path / "off"
    env = dict(os.environ, PHASER_CACHE_DIR=str(off), PHASER_JAX_CACHE="0")
    subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True)
    assert not off.exists()


# -- backend: auto (the plan's default) ----------------------------------------------------


class _Device:
    def __init__(self, platform):
        self.platform = platform


class _Fake:
    def __init__(self, name, platform="cpu"):
        self.name, self.device = name, _Device(platform)


def _unavailable(dtype="float32"):
    raise BackendUnavailable("not here")


@pytest.mark.parametrize("jax_on, cupy_ok, want", [
    ("gpu", True, "jax"),     # jax on a GPU first
    ("cpu", True, "cupy"),    # a CPU-only jax does not leave a CUDA GPU idle
    ("cpu", False, "jax"),    # no GPU: jax's compiled steps on the CPU
    (None, True, "cupy"),
    (None, False, "numpy"),   # nothing else installed
])
def test_auto_picks_the_fastest_installed_backend(monkeypatch, jax_on, cupy_ok, want):
    import phaser_std.backends as backends

    monkeypatch.setattr(backends, "_jax", (lambda dtype="float32": _Fake("jax", jax_on)) if jax_on else _unavailable)
    monkeypatch.setattr(backends, "_cupy", (lambda dtype="float32": _Fake("cupy", "gpu")) if cupy_ok else _unavailable)
    monkeypatch.setattr(backends, "_numpy", lambda dtype="float32": _Fake("numpy"))
    assert backends._auto("float32").name == want


def test_auto_on_this_machine_and_the_plan_default():
    """Here: jax when it imports (the test extra installs it), else cupy on a CUDA GPU, else
    numpy; a plan without `backend` runs on it, and a registry without `auto` (a host
    application's) on numpy."""
    from phaser_core.backend import build_backend, concrete_backend_name
    from phaser_core.plan import Plan

    try:
        import jax  # noqa: F401
        want = "jax"  # on a GPU or, first of the CPU backends, on the CPU
    except ImportError:
        want = "numpy"
    registry = get_registry()
    got = build_backend("auto", "float32", registry)
    if want == "numpy" and got.name == "cupy":  # no jax, but a CUDA GPU: cupy before numpy
        want = "cupy"
    assert got.name == want
    assert concrete_backend_name("auto", "float32", registry) == got.name
    assert concrete_backend_name("numpy", "float32", registry) == "numpy"
    assert attrs_default(Plan, "backend") == "auto"

    class _NoAuto:
        def __contains__(self, key):
            return key != ("backend", "auto")

        def get(self, kind, name):
            assert (kind, name) == ("backend", "numpy")
            return type("Entry", (), {"obj": staticmethod(lambda dtype: _Fake("numpy"))})

    assert build_backend("auto", "float32", _NoAuto()).name == "numpy"
    assert concrete_backend_name("auto", "float32", _NoAuto()) == "numpy"


def attrs_default(cls, name):
    import attrs

    return next(f.default for f in attrs.fields(cls) if f.name == name)
