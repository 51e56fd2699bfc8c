"""Patterns on the backend: counted data is stored exactly as uint8 (up to 255 counts) or
uint16 (a quarter or half of float32's memory), other data in the real dtype; either way the
engines see the same numbers."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest
from recon import make_dataset, run

from phaser_core.data import RawData, count_dtype
from phaser_std.engines.common import group_patterns, patterns_to_device


def test_count_dtype_takes_only_whole_numbers_and_the_smallest_dtype_that_holds_them():
    counts = np.array([[0.0, 3.0], [255.0, 12.0]], np.float32)
    assert count_dtype(counts) == np.uint8
    assert count_dtype(counts.astype(np.uint32)) == np.uint8
    assert count_dtype(counts + 256.0) == np.uint16
    assert count_dtype(np.array([65535.0])) == np.uint16
    assert count_dtype(counts + 0.5) is None
    assert count_dtype(np.array([-1.0, 2.0])) is None
    assert count_dtype(np.array([65536.0])) is None
    assert count_dtype(np.array([np.nan, 1.0])) is None
    # checked block by block: a fraction, or a count above 255, in a later block is found
    big = np.zeros(100, np.float32)
    big[97] = 0.25
    assert count_dtype(big, block=10) is None
    big[97] = 300.0
    assert count_dtype(big, block=10) == np.uint16


def test_a_run_keeps_counted_patterns_as_integers_from_the_load_on(tmp_path):
    """Float patterns holding whole electrons are stored as uint8/uint16 once ``post_load``
    is done (a quarter or half of float32's host memory for the whole run), with the same
    values and the dtype found by the one pass; other patterns pass through as they are."""
    from phaser_core.data import compact_counts, read_only_map
    from phaser_core.plan import load_plan
    from phaser_core.registry import get_registry
    from phaser_core.runner import load_data

    rng = np.random.default_rng(0)
    for offset, want in ((0.0, np.uint8), (1000.0, np.uint16)):
        host = rng.poisson(40.0, size=(5, 6, 8)).astype(np.float64) + offset
        compact = compact_counts(RawData(patterns=host, energy_eV=2e5), block=7)  # blocks that split patterns
        assert compact.patterns.dtype == want and compact.counted_dtype == want and compact.energy_eV == 2e5
        np.testing.assert_array_equal(compact.patterns, host)
    for patterns in (np.full((2, 4, 4), 0.5, np.float32), np.full((2, 4, 4), 300, np.uint16),
                     np.ones((2, 4, 4), np.uint8), np.full((2, 4, 4), 70000, np.uint32)):
        data = RawData(patterns=patterns)
        assert compact_counts(data) is data
    narrowed = compact_counts(RawData(patterns=np.full((2, 4, 4), 255, np.uint16)))  # uint16 counts up to 255
    assert narrowed.patterns.dtype == np.uint8 and np.all(narrowed.patterns == 255)

    path = make_dataset(tmp_path / "counted.h5", scan={"shape": [6, 6]}, dose=1e5)
    with h5py.File(path, "r") as f:
        stored = f["patterns"][...]
    for mmap in (False, True):
        plan = load_plan({"file_type": "phaser_plan", "version": 1,
                          "raw_data": {"type": "hdf5", "path": str(path), "mmap": mmap},
                          "engines": [{"type": "conventional", "niter": 1}]})
        data = load_data(plan, get_registry(), tmp_path)
        assert data.counted_dtype == np.uint8
        # a memory-mapped file stays mapped (its pages are given back as read: a copy would
        # only add memory); the engines cast it into their own uint8 copy
        assert data.patterns.dtype == (stored.dtype if mmap else np.uint8)
        assert (read_only_map(data.patterns) is not None) == mmap
        np.testing.assert_array_equal(data.patterns, stored.reshape(data.patterns.shape))


@pytest.mark.parametrize("offset,stored", [(0.0, np.uint8), (1000.0, np.uint16), (0.5, np.float32)])
def test_patterns_on_the_backend_are_exact_and_corner_centred(backend, offset, stored):
    rng = np.random.default_rng(0)
    host = rng.poisson(40.0, size=(5, 6, 8)).astype(np.float32) + offset
    dev = patterns_to_device(backend, host)
    assert backend.to_numpy(dev).dtype == stored
    idx = backend.asarray(np.array([3, 0, 3]))
    got = backend.to_numpy(group_patterns(backend, dev, idx))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, np.fft.ifftshift(host[[3, 0, 3]], axes=(-2, -1)))


@pytest.mark.parametrize("backend_name", ["jax", "numpy"])
def test_counted_and_float_storage_reconstruct_identically(tmp_path, monkeypatch, backend_name):
    """The same counted data through integer storage and through float32 storage: the same
    reconstruction to the last bit (whole numbers convert exactly, and the probe scaling's
    total is the same: numpy sums counted data in uint64 and float data in float64)."""
    if backend_name == "jax":
        pytest.importorskip("jax")
    data = make_dataset(tmp_path / "counted.h5", scan={"shape": [8, 8]}, dose=1e5)
    with h5py.File(data, "r") as f:
        assert count_dtype(f["patterns"][...]) is not None  # so the first run stores integers
    engines = [{"type": "conventional", "niter": 2, "grouping": {"size": 16}, "solver": {"type": "lsqml"}},
               {"type": "gradient", "niter": 2, "grouping": {"size": 16}}]
    stored = run(data, engines, backend=backend_name)
    monkeypatch.setattr(RawData, "counted_dtype", property(lambda self: None))
    as_float = run(data, engines, backend=backend_name)
    np.testing.assert_array_equal(stored.object.data, as_float.object.data)
    np.testing.assert_array_equal(stored.probe.data, as_float.probe.data)
    assert stored.progress.loss == as_float.progress.loss


def test_a_run_reads_the_patterns_once_to_tell_counted_data(tmp_path, monkeypatch):
    # the memory check and each engine need the storage dtype: one pass over the patterns
    import phaser_core.data as data_module

    data = make_dataset(tmp_path / "counted.h5", scan={"shape": [6, 6]}, dose=1e5)
    calls = []
    original = data_module.count_dtype
    monkeypatch.setattr(data_module, "count_dtype", lambda patterns, block=1 << 24: calls.append(1)
                        or original(patterns, block))
    engines = [{"type": "conventional", "niter": 1, "grouping": {"size": 12}, "solver": {"type": "epie"}},
               {"type": "gradient", "niter": 1, "grouping": {"size": 12}}]
    run(data, engines, backend="numpy", out_dir=tmp_path / "run")
    assert len(calls) == 1


# the iteration constraints: at the end of the iteration program when the patterns are
# kept, a program of their own after the last block when streamed
STREAMED_ENGINES = [
    {"type": "conventional", "niter": 2, "grouping": {"size": 12}, "solver": {"type": "epie"},
     "slices": {"n": 2, "total_thickness_A": 20.0}, "iter_constraints": [{"type": "remove_phase_ramp"}]},
    {"type": "conventional", "niter": 2, "grouping": {"size": 12}, "solver": {"type": "lsqml"},
     "position_solver": {"type": "momentum"}, "update_positions": {"after": 0},
     "iter_constraints": [{"type": "limit_probe_support", "max_angle_mrad": 30}]},
    {"type": "gradient", "niter": 2, "grouping": {"size": 12}, "slices": {"n": 2, "total_thickness_A": 20.0},
     "tilt": "per_position", "update_tilt": {"after": 0},
     "solvers": {"positions": {"type": "sgd", "learning_rate": 0.1}, "tilt": {"type": "sgd", "learning_rate": 0.1}},
     "iter_constraints": [{"type": "clamp_object_amplitude", "max_amplitude": 1.0},
                          {"type": "limit_probe_support", "max_angle_mrad": 30}]},
]


@pytest.mark.parametrize("backend_name", ["numpy", "jax"])
@pytest.mark.parametrize("key", ["patterns", "patterns_noiseless"])
def test_streamed_patterns_reconstruct_identically(tmp_path, monkeypatch, backend_name, key):
    """The patterns sent to the device a block of groups at a time give the reconstruction
    of patterns kept on the device, to the last bit: the same group steps in the same order,
    the positions' sums and per-position tilt still indexed by scan position, the probe
    scaled by the same total (summed on the host either way). 64 positions and blocks of at
    most 4 groups: with counted (uint8) storage groups of 13 (5 groups, the last ragged: a
    block of 4 and a last one of 1, its own compiled program), with float storage groups of
    12 (6 groups: two equal blocks of 3)."""
    if backend_name == "jax":
        pytest.importorskip("jax")
    import phaser_std.engines.pattern_feed as feed

    data = make_dataset(tmp_path / "data.h5", scan={"shape": [8, 8]}, dose=1e5)
    calls = []
    blocks = feed.PatternFeed.blocks

    def counting(self, indices):
        for block in blocks(self, indices):
            calls.append((self.stream, block[1].dtype, block[0].stop - block[0].start))
            yield block

    monkeypatch.setattr(feed.PatternFeed, "blocks", counting)
    with h5py.File(data, "r") as f:
        *scan, qy, qx = f["patterns"].shape  # (Sy, Sx, Qy, Qx)
        assert np.prod(scan) == 64 and count_dtype(f["patterns"][...]) == np.uint8
    itemsize, size, sizes = (1, 13, [4, 1]) if key == "patterns" else (4, 12, [3, 3])
    monkeypatch.setattr(feed, "STREAM_BLOCK_BYTES", 4 * size * qy * qx * itemsize)  # at most four groups a block

    def engines(stream):
        return [{**e, "grouping": {**e["grouping"], "size": size, "stream_patterns": stream}}
                for e in STREAMED_ENGINES]

    kept = run(data, engines(False), backend=backend_name, key=key)
    assert calls and not any(stream for stream, _, _ in calls)
    calls.clear()
    streamed = run(data, engines(True), backend=backend_name, key=key)
    assert [stream for stream, _, _ in calls] == [True] * (3 * 2 * 2)  # engines x iterations x blocks
    assert [n for _, _, n in calls] == sizes * (3 * 2)
    assert {np.dtype(dt) for _, dt, _ in calls} == {np.dtype(np.uint8 if key == "patterns" else np.float32)}
    np.testing.assert_array_equal(streamed.object.data, kept.object.data)
    np.testing.assert_array_equal(streamed.probe.data, kept.probe.data)
    np.testing.assert_array_equal(streamed.scan_A, kept.scan_A)
    np.testing.assert_array_equal(streamed.tilt_mrad, kept.tilt_mrad)
    assert streamed.progress.loss == kept.progress.loss
    # the positions and the per-position tilt did move (what the indices are checked by)
    first = run(data, engines(True)[:1], backend=backend_name, key=key)
    assert not np.array_equal(streamed.scan_A, first.scan_A)
    assert np.ptp(streamed.tilt_mrad, axis=0).max() > 0


def test_stream_blocks_hold_whole_groups_that_fit():
    from phaser_std.engines.pattern_feed import block_groups

    assert block_groups(100, 1 << 20, 16 << 20) == 10   # ten blocks of 10 (one program), not 6 x 16 + 4
    assert block_groups(96, 1 << 20, 16 << 20) == 16    # six blocks of 16
    assert block_groups(101, 1 << 20, 16 << 20) == 16   # a prime count: six blocks of 16 and one of 5
    assert block_groups(8, 1 << 20, 64 << 20) == 8      # everything fits: one block
    assert block_groups(8, 32 << 20, 16 << 20) == 1     # a group larger than the budget still goes


def test_streaming_waits_so_that_two_blocks_at_most_are_on_the_device(monkeypatch):
    """Before sending a block the feed waits for every call but the newest: a backend that
    runs asynchronously (jax) would otherwise take all blocks of the iteration at once."""
    import phaser_std.engines.pattern_feed as feed
    from phaser_core.backend import BaseBackend

    class Recording(BaseBackend):
        name = "numpy"
        waited: list = []

        def synchronize(self, x=None):
            self.waited.append(x)
            return x

    bk = Recording("float32")
    monkeypatch.setattr(feed, "STREAM_BLOCK_BYTES", 2 * 4 * 8 * 8 * 4)  # two groups of 4 a block
    pf = feed.PatternFeed(bk, np.random.default_rng(0).random((32, 8, 8)).astype(np.float32), stream=True)
    indices = np.arange(32).reshape(8, 4)
    expected = np.fft.ifftshift(np.random.default_rng(0).random((32, 8, 8)).astype(np.float32), axes=(-2, -1))

    def call(groups, patterns, rows):
        k = groups.start // 2
        # block k is sent once the calls up to k - 2 are done: the device holds k - 1 and k
        assert bk.waited == [f"call {j}" for j in range(k - 1)], (k, bk.waited)
        np.testing.assert_array_equal(patterns[rows], expected[indices[groups]])
        return f"call {k}"

    assert pf.run_blocks(indices, call) == [f"call {k}" for k in range(4)]


def test_streaming_is_the_gpu_default(backend):
    from phaser_std.engines.chunking import backend_on_cpu
    from phaser_std.engines.pattern_feed import PatternFeed

    feed = PatternFeed(backend, np.ones((4, 8, 8), np.float32))
    assert feed.stream == (not backend_on_cpu(backend))  # cupy, and jax on a GPU
    if backend.name == "numpy":
        assert not feed.stream and feed.device is not None
    assert PatternFeed(backend, np.ones((4, 8, 8), np.float32), stream=True).device is None


@pytest.mark.parametrize("shape", [(5, 8, 8), (3, 7, 9), (2, 4, 5, 6), (4, 1, 3)])
def test_ifftshift_cast_is_the_shift_then_the_cast(shape):
    """The patterns are corner-centred and cast a few at a time (benchmarks/NOTES.md 83): the
    same values as the whole-array shift and cast, for odd and even sizes, blocks that do not
    divide the patterns, and every stored dtype."""
    from phaser_std.engines.pattern_feed import ifftshift_cast

    x = (np.random.default_rng(0).random(shape) * 300).astype(np.float32)
    for dtype in (np.uint8, np.uint16, np.float32, np.float64):
        want = np.fft.ifftshift(x.astype(dtype), axes=(-2, -1))
        for block_bytes in (64, 1 << 20):
            got = ifftshift_cast(x, np.dtype(dtype), block_bytes=block_bytes)
            assert got.dtype == dtype and np.array_equal(got, want)


def test_the_pattern_checks_read_a_view_a_block_at_a_time():
    """A non-contiguous view of the patterns (a post_load step's slice) is checked and
    compacted a block at a time: no whole-array copy, which ``reshape(-1)`` of a view made
    (3.75 MiB of float32 here; the checks now allocate under 1 MiB beyond their output)."""
    import tracemalloc

    from phaser_core.data import check_finite, compact_counts

    base = np.random.default_rng(0).poisson(30.0, size=(256, 64, 128)).astype(np.float32)
    view = base[:, 2:62, 3:67]  # a crop: 3.75 MiB of float32 that no reshape(-1) can view
    assert not view.flags.c_contiguous and np.shares_memory(view.reshape(-1), view) is False
    counted, fractional = RawData(patterns=view), RawData(patterns=(base + np.float32(0.5))[:, 2:62, 3:67])
    assert counted.counted_dtype == np.uint8 and fractional.counted_dtype is None  # found before tracing
    tracemalloc.start()
    try:
        assert count_dtype(view, block=1 << 14) == np.uint8
        check_finite(fractional, block=1 << 14)  # not counted: the NaN/inf pass runs
        assert tracemalloc.get_traced_memory()[1] < 1 << 20
        tracemalloc.reset_peak()
        compact = compact_counts(counted, block=1 << 14)
        assert tracemalloc.get_traced_memory()[1] < view.size + (1 << 20)  # the uint8 output and a block
    finally:
        tracemalloc.stop()
    assert compact.patterns.dtype == np.uint8
    np.testing.assert_array_equal(compact.patterns, view)


def _resident_file_kib() -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("RssFile:"))


@pytest.mark.skipif(not hasattr(__import__("mmap"), "MADV_DONTNEED") or not os.path.exists("/proc/self/status"),
                    reason="needs madvise(MADV_DONTNEED) and /proc/self/status (Linux)")
def test_passes_over_a_memory_mapped_file_give_its_pages_back(tmp_path):
    """Each pass over memory-mapped patterns drops the pages it has read from the process
    (they stay in the page cache): before, a pass left the whole file resident beside the
    copy it wrote (a 1 GiB float32 file: 1.5 GiB peak RSS, benchmarks/NOTES.md 94). The
    values are read as they are, and read again after a release."""
    from phaser_core.data import PageRelease, check_finite, compact_counts, read_blocks, read_only_map
    from phaser_std.data.inspect import _pixel_sums
    from phaser_std.data.preprocess import nanmean_patterns
    from phaser_std.engines.pattern_feed import ifftshift_cast

    rng = np.random.default_rng(0)
    counts = rng.poisson(3.0, size=(512, 128, 128)).astype(np.float32)  # 32 MiB
    path = tmp_path / "p.npy"
    np.save(path, counts)
    mapped = np.load(path, mmap_mode="r")
    assert read_only_map(mapped) is not None and read_only_map(np.asarray(mapped)[3:]) is not None
    assert read_only_map(counts) is None and read_only_map(np.load(path, mmap_mode="c")) is None
    limit_kib = 8 << 10  # well under the file's 32 MiB

    def resident_after(pass_over) -> int:
        before = _resident_file_kib()
        result = pass_over()
        grown = _resident_file_kib() - before
        assert grown < limit_kib, f"{pass_over}: {grown} KiB of the file stayed resident"
        return result

    data = RawData(patterns=mapped)
    assert resident_after(lambda: data.counted_dtype) == np.uint8
    compact = resident_after(lambda: compact_counts(data))
    np.testing.assert_array_equal(compact.patterns, counts)  # read again after the release
    fractional = tmp_path / "f.npy"
    np.save(fractional, counts + 0.5)
    frac = np.load(fractional, mmap_mode="r")
    assert resident_after(lambda: check_finite(RawData(patterns=frac))) is None
    shifted = resident_after(lambda: ifftshift_cast(frac, np.float32))
    np.testing.assert_array_equal(shifted, np.fft.ifftshift(counts + 0.5, axes=(-2, -1)))
    np.testing.assert_allclose(resident_after(lambda: _pixel_sums(frac, None)), (counts + 0.5).sum(axis=(1, 2)))
    np.testing.assert_allclose(resident_after(lambda: nanmean_patterns(frac)), (counts + 0.5).mean(axis=0), rtol=1e-6)
    PageRelease(counts)(counts[:4])  # not a mapping: nothing happens

    PageRelease(mapped)(np.asarray(mapped))  # the comparisons above read it all: none resident

    def first_block_only():  # a loop that stops early gives its last block back too
        for _, b in read_blocks(mapped, block=1 << 22):  # 16 MiB blocks
            return float(b.sum())

    assert resident_after(first_block_only) == float(counts[:256].sum())
    assert [r for r, _ in read_blocks(np.zeros((10, 3, 3)), 20)] == [slice(i, i + 2) for i in range(0, 10, 2)]

    class Refusing:  # a file system whose madvise fails: the pages are kept, the pass goes on
        def __len__(self):
            return 1 << 30

        def madvise(self, *args):
            raise OSError(22, "Invalid argument")

    refused = PageRelease(mapped)
    refused._map = Refusing()
    refused(np.asarray(mapped)[:8])
    assert refused._map is None


@pytest.mark.skipif(not hasattr(__import__("mmap"), "MADV_DONTNEED") or not os.path.exists("/proc/self/status"),
                    reason="needs madvise(MADV_DONTNEED) and /proc/self/status (Linux)")
def test_the_parallax_fit_gives_its_window_of_a_mapped_file_back(tmp_path):
    """The initial probe's parallax fit reads a central window of the scan (32 x 32
    positions, 16 MiB of 64² float32 patterns here); on a memory-mapped file those pages are
    given back afterwards instead of staying resident for the whole run."""
    from phaser_core.data import PageRelease
    from phaser_core.plan import load_plan
    from phaser_core.registry import get_registry
    from phaser_core.runner import load_data
    from phaser_std.data.parallax import parallax_fit

    path = make_dataset(tmp_path / "p.h5", scan={"shape": [40, 40]}, dose=1e5)
    plan = load_plan({"file_type": "phaser_plan", "version": 1, "raw_data": {"type": "hdf5", "path": str(path)},
                      "engines": [{"type": "conventional", "niter": 1}]})
    data = load_data(plan, get_registry(), tmp_path)
    PageRelease(data.patterns)(np.asarray(data.patterns))  # none of the file resident to start with
    before = _resident_file_kib()
    peak_reset = _reset_peak_rss()
    assert parallax_fit(data) is not None
    assert _resident_file_kib() - before < 4 << 10  # KiB: 16 MiB without the release
    if peak_reset:  # and a scan row of the window at a time: never the whole window at once
        assert _peak_rss_kib() - peak_reset < 8 << 10  # KiB: 16 MiB and more read whole (NOTES.md 106)


def _reset_peak_rss() -> int | None:
    """Reset this process's peak RSS (``/proc/self/clear_refs``, Linux) and return the
    resident memory [KiB] it starts from; None where it cannot be reset."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
    except OSError:
        return None
    with open("/proc/self/status", encoding="ascii") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))


def _peak_rss_kib() -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))


def test_the_mean_count_reads_its_sample_a_pattern_at_a_time(tmp_path):
    """The few-counts check and the noise model's sparse-count rule read 256 patterns: one
    at a time, each given back once read, with a float64 copy of one pattern at most. The
    whole sample with its float64 copies held 228 MiB more at once for a 1 GiB file
    (benchmarks/NOTES.md 106); here 512 patterns of 128² (the sample 16 MiB, 48 MiB as
    float64 copies)."""
    import tracemalloc

    from phaser_core.data import mean_counts

    rng = np.random.default_rng(0)
    counts = rng.poisson(3.0, size=(512, 128, 128)).astype(np.float32)
    counts[7, 3, 3] = np.inf  # left out
    path = tmp_path / "p.npy"
    np.save(path, counts)
    data = RawData(patterns=np.load(path, mmap_mode="r"))
    rows = np.unique(np.linspace(0, 511, 256).astype(int))
    sample = counts[rows].astype(np.float64)
    expected = float(np.sum(np.where(np.isfinite(sample), sample, 0.0))) / rows.size
    tracemalloc.start()
    try:
        assert mean_counts(data) == pytest.approx(expected, rel=1e-12)
        assert tracemalloc.get_traced_memory()[1] < 1 << 20  # a pattern's float64 copy is 128 KiB
    finally:
        tracemalloc.stop()


@pytest.mark.skipif(not hasattr(__import__("mmap"), "MADV_DONTNEED") or not os.path.exists("/proc/self/status"),
                    reason="needs madvise(MADV_DONTNEED) and /proc/self/status (Linux)")
def test_a_sampled_mean_pattern_gives_the_sampled_pages_back(tmp_path):
    """The probe initializer's mean pattern (``pacbed`` of 256 patterns) reads them one at a
    time (``read_rows``) and gives each back: half of this 32 MiB file was sampled, and
    stayed resident before (benchmarks/NOTES.md 106)."""
    from phaser_core.data import PageRelease
    from phaser_std.data.preprocess import pacbed

    counts = np.random.default_rng(0).poisson(3.0, size=(512, 128, 128)).astype(np.float32)
    path = tmp_path / "p.npy"
    np.save(path, counts)
    mapped = np.load(path, mmap_mode="r")
    PageRelease(mapped)(np.asarray(mapped))
    before = _resident_file_kib()
    mean = pacbed(RawData(patterns=mapped), n_sample=256)
    assert _resident_file_kib() - before < 4 << 10
    rows = np.linspace(0, 511, 256).astype(int)
    np.testing.assert_allclose(mean, counts[rows].astype(np.float64).mean(axis=0), rtol=1e-12)
