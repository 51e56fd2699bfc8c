"""The bundled observers: images, the output writer, the logger and the progress display."""

from __future__ import annotations

import io

import attrs
import numpy as np
import pytest
import tifffile
from PIL import Image as PILImage

from phaser_core.context import RunContext
from phaser_core.state import IterationCounters, ObjectState, ProbeState, ReconsState
from phaser_core.statefile import load_state
from phaser_std.backends.numpy_backend import NumpyBackend
from phaser_std.observers import images, register_all
from phaser_std.observers.logger import LoggerConfig, LogObserver
from phaser_std.observers.output import OutputConfig, OutputObserver, host_state
from phaser_std.observers.progress import ProgressConfig, ProgressObserver, format_duration


def make_state(n_slices=2, modes=2, h=20, w=28, q=16) -> ReconsState:
    rng = np.random.default_rng(1)
    obj = np.exp(1j * rng.uniform(-1, 1, (n_slices, h, w))).astype(np.complex64)
    probe = (rng.standard_normal((modes, q, q)) + 1j * rng.standard_normal((modes, q, q))).astype(np.complex64)
    scan = np.array([[2.0, 3.0], [2.0, 5.0], [4.0, 3.0], [4.0, 5.0]])
    return ReconsState(probe=ProbeState(data=probe, sampling_A=(0.25, 0.2)),
                       object=ObjectState(data=obj, sampling_A=(0.25, 0.2), corner_A=(-1.0, -2.0),
                                          thicknesses_A=np.full(n_slices, 7.5)),
                       scan_A=scan, extra={"solver": {"m": np.arange(3.0)}})


def ctx_for(tmp_path, observers=()):
    return RunContext(backend=NumpyBackend("float32"), registry=None, observers=list(observers), out_dir=tmp_path)


def read_tiff(path):
    with tifffile.TiffFile(path) as tif:
        xnum, xden = tif.pages[0].tags["XResolution"].value
        ynum, yden = tif.pages[0].tags["YResolution"].value
        return tif.asarray(), (yden / ynum, xden / xnum), tif.imagej_metadata


# -- registration ---------------------------------------------------------------------------


def test_register_all_registers_three_observers():
    got = {}
    register_all(lambda name, obj, **kw: got.setdefault(name, (obj, kw)))
    assert set(got) == {"progress", "logger", "output"}
    for obj, kw in got.values():
        assert attrs.has(kw["config"])
        assert obj(kw["config"]()) is not None


# -- images ---------------------------------------------------------------------------------


def test_object_phase_tiff_has_pixel_size_and_values(tmp_path):
    state = make_state()
    paths = images.write_images(state, ["object_phase", "object_phase_sum"], tmp_path, "final")
    assert sorted(p.name for p in paths) == ["final_object_phase.png", "final_object_phase.tif",
                                             "final_object_phase_sum.png", "final_object_phase_sum.tif"]
    data, size, meta = read_tiff(tmp_path / "final_object_phase.tif")
    assert data.dtype == np.float32 and data.shape == (2, 20, 28)
    np.testing.assert_allclose(data, np.angle(state.object.data), atol=1e-6)
    np.testing.assert_allclose(size, (0.25, 0.2), rtol=1e-6)
    assert meta["unit"] == "angstrom" and meta["spacing"] == pytest.approx(7.5)
    total, size, _ = read_tiff(tmp_path / "final_object_phase_sum.tif")
    np.testing.assert_allclose(total.reshape(20, 28), np.angle(state.object.data).sum(0), atol=1e-5)


def test_probe_images_real_and_reciprocal(tmp_path):
    state = make_state(q=16)
    images.write_images(state, ["probe", "probe_recip"], tmp_path, "engine0")
    amp, size, meta = read_tiff(tmp_path / "engine0_probe.tif")
    np.testing.assert_allclose(amp, np.abs(state.probe.data), rtol=1e-6)
    np.testing.assert_allclose(size, (0.25, 0.2), rtol=1e-6)
    assert meta["unit"] == "angstrom"
    recip, size, meta = read_tiff(tmp_path / "engine0_probe_recip.tif")
    assert meta["unit"] == "1/angstrom"
    np.testing.assert_allclose(size, (1 / (16 * 0.25), 1 / (16 * 0.2)), rtol=1e-6)
    # unitary transform: each mode's total intensity is the same in both spaces
    np.testing.assert_allclose((recip.astype(np.float64) ** 2).sum((-2, -1)),
                               (np.abs(state.probe.data.astype(np.complex128)) ** 2).sum((-2, -1)), rtol=1e-5)
    # zero frequency at the centre: a flat probe has all its power in pixel (8, 8)
    flat = attrs.evolve(state, probe=attrs.evolve(state.probe, data=np.ones((1, 16, 16), np.complex64)))
    f = images.probe_recip(flat).data[0]
    assert np.unravel_index(np.argmax(f), f.shape) == (8, 8)


def test_png_preview_tiles_modes(tmp_path):
    state = make_state(modes=3, q=16)
    images.write_images(state, ["probe"], tmp_path, "x")
    with PILImage.open(tmp_path / "x_probe.png") as im:
        zoom = images.PREVIEW_MIN_PX // 16  # small panels are enlarged by whole pixels
        assert im.mode == "L" and im.size == ((3 * 16 + 2 * 2) * zoom, 16 * zoom)
        px = np.asarray(im)
    for i in range(3):  # each panel is stretched on its own
        panel = px[:, i * 18 * zoom: (i * 18 + 16) * zoom]
        assert panel.max() == 255 and panel.min() == 0


def test_unknown_image_kind_is_rejected():
    with pytest.raises(ValueError, match="unknown image kind.*'phase'.*valid kinds are"):
        OutputConfig(images=("phase",))
    with pytest.raises(ValueError, match="image_every"):
        OutputConfig(image_every=0)


# -- output observer --------------------------------------------------------------------------


def test_host_state_is_a_copy():
    state = make_state()
    snap = host_state(state, NumpyBackend())
    state.object.data[0, 0, 0] = 5.0
    state.extra["solver"]["m"][0] = 9.0
    state.iteration.total_iter = 7
    assert snap.object.data[0, 0, 0] != 5.0
    assert snap.extra["solver"]["m"][0] == 0.0
    assert snap.iteration.total_iter == 0


def test_output_observer_files(tmp_path):
    obs = OutputObserver(OutputConfig(checkpoint_every=2, images=("probe",), image_every=3))
    ctx = ctx_for(tmp_path, [obs])
    state = make_state()
    obs.before_run(None, ctx)
    for k in range(1, 4):
        state = attrs.evolve(state, iteration=IterationCounters(engine_iter=k, total_iter=k))
        obs.after_iteration(state, {"loss": 1.0}, ctx)
        if k == 1:
            assert not (tmp_path / "checkpoint.h5").exists()
    assert load_state(tmp_path / "checkpoint.h5").iteration.total_iter == 2
    assert (tmp_path / "images" / "iter00003_probe.tif").is_file()
    obs.after_engine(None, state, ctx)
    assert load_state(tmp_path / "checkpoint.h5").iteration.total_iter == 3
    assert (tmp_path / "images" / "engine0_probe.png").is_file()
    obs.after_run(state, ctx)
    final = load_state(tmp_path / "final.h5")
    np.testing.assert_array_equal(final.object.data, state.object.data)
    np.testing.assert_array_equal(final.extra["solver"]["m"], state.extra["solver"]["m"])
    assert (tmp_path / "images" / "final_probe.tif").is_file()


def test_state_every_keeps_a_history_and_each_engines_end(tmp_path):
    obs = OutputObserver(OutputConfig(checkpoint_every=0, images=(), state_every=2))
    ctx = ctx_for(tmp_path, [obs])
    obs.before_run(None, ctx)
    kept = {}
    for k in range(1, 6):
        state = make_state()
        state.object.data[...] = k  # each iteration's own object
        state = attrs.evolve(state, iteration=IterationCounters(engine_iter=k, total_iter=k))
        obs.after_iteration(state, {"loss": 1.0}, ctx)
        kept[k] = state
    obs.after_engine(None, kept[5], ctx)
    assert sorted(p.name for p in (tmp_path / "states").iterdir()) == ["engine0.h5", "iter00002.h5", "iter00004.h5"]
    for k in (2, 4):
        back = load_state(tmp_path / "states" / f"iter{k:05d}.h5")
        assert back.iteration.total_iter == k
        np.testing.assert_array_equal(back.object.data, kept[k].object.data)
    assert load_state(tmp_path / "states" / "engine0.h5").iteration.total_iter == 5
    with pytest.raises(ValueError, match="state_every"):
        OutputConfig(state_every=0)


def test_output_observer_error_writes_last_completed_iteration(tmp_path):
    obs = OutputObserver(OutputConfig(checkpoint_every=0))
    ctx = ctx_for(tmp_path, [obs])
    state = make_state()
    obs.before_run(None, ctx)
    state.iteration.total_iter = 1
    obs.after_iteration(state, {}, ctx)
    expected = state.object.data.copy()
    assert not (tmp_path / "checkpoint.h5").exists()
    state.object.data[...] = 0  # an in-place update of the next iteration, then a crash
    obs.on_run_error(RuntimeError("boom"), state, ctx)
    ck = load_state(tmp_path / "checkpoint.h5")
    np.testing.assert_array_equal(ck.object.data, expected)


def test_output_observer_without_out_dir_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    obs = OutputObserver()
    ctx = RunContext(backend=NumpyBackend(), registry=None, out_dir=None)
    state = make_state()
    obs.before_run(None, ctx)
    obs.after_iteration(state, {}, ctx)
    obs.after_engine(None, state, ctx)
    obs.after_run(state, ctx)
    assert list(tmp_path.iterdir()) == []


# -- logger -----------------------------------------------------------------------------------


def _drive(obs, ctx, state, niter=2):
    plan = type("P", (), {"name": "p", "dtype": "float32", "seed": 0, "engines": ()})()
    obs.before_run(plan, ctx)
    obs.before_engine(None, state, ctx)
    for k in range(1, niter + 1):
        state.iteration.engine_iter = state.iteration.total_iter = k
        state.progress.append(k, 0.5 / k, 0.01, 0)
        obs.after_iteration(state, {"loss": 0.5 / k, "time_s": 0.01, "niter": niter}, ctx)
    obs.after_engine(None, state, ctx)
    obs.after_run(state, ctx)


def test_logger_writes_timestamped_lines_and_appends(tmp_path):
    stream = io.StringIO()
    obs = LogObserver(LoggerConfig(echo="never"), stream=stream)
    ctx = ctx_for(tmp_path, [obs])
    _drive(obs, ctx, make_state())
    _drive(obs, ctx, make_state())
    lines = (tmp_path / "log.txt").read_text().splitlines()
    assert len(lines) == 2 * 6
    assert all(line[:4].isdigit() and line[10] == "T" and line.split()[0].endswith("Z") for line in lines)
    assert "engine 0 iter 1/2 (total 1) loss 5.000000e-01 0.01 s/iter" in lines[2]
    assert lines[-1].endswith("run finished after 2 iterations")
    assert stream.getvalue() == ""


def test_logger_echo_auto(tmp_path):
    stream = io.StringIO()  # not a terminal
    obs = LogObserver(LoggerConfig(), stream=stream)
    _drive(obs, ctx_for(tmp_path, [obs]), make_state())
    assert "loss" in stream.getvalue()
    # a plain-mode progress observer already prints iterations: no echo
    stream2 = io.StringIO()
    obs2 = LogObserver(LoggerConfig(), stream=stream2)
    prog = ProgressObserver(ProgressConfig(mode="plain"), stream=io.StringIO())
    _drive(obs2, ctx_for(tmp_path, [prog, obs2]), make_state())
    assert stream2.getvalue() == ""


def test_logger_records_errors(tmp_path):
    obs = LogObserver(LoggerConfig(echo="never"))
    ctx = ctx_for(tmp_path, [obs])
    obs.before_run(None, ctx)
    obs.on_run_error(ValueError("bad pattern"), make_state(), ctx)
    assert "run failed: ValueError: bad pattern" in (tmp_path / "log.txt").read_text()


# -- progress ---------------------------------------------------------------------------------


def test_progress_plain_lines_with_eta():
    stream = io.StringIO()
    obs = ProgressObserver(ProgressConfig(), stream=stream)  # StringIO is not a terminal
    assert obs.mode == "plain" and obs.prints_plain_lines
    _drive(obs, ctx_for(None, [obs]), make_state(), niter=4)
    lines = stream.getvalue().splitlines()
    iters = [line for line in lines if " iter " in line]
    assert len(iters) == 4
    assert iters[0] == "engine 0 iter 1/4 loss 5.0000e-01 0.01 s/iter ETA 0:00"
    assert lines[0] == "engine 0 start" and lines[-1] == "engine 0 done"


def test_progress_rate_leaves_out_the_compiling_first_iteration():
    # iteration 1 took 2 s (compilation), the others 0.1 s: the rate and the ETA after
    # iteration 2 are the later iterations' (0.1 s/iter, 3 left: 0:00), not the mean
    # with the first (1.05 s/iter, ETA 0:03)
    stream = io.StringIO()
    obs = ProgressObserver(ProgressConfig(), stream=stream)
    ctx = ctx_for(None, [obs])
    state = make_state()
    obs.before_engine(None, state, ctx)
    lines = []
    for k, t in enumerate([2.0, 0.1, 0.1], start=1):
        state.iteration.engine_iter = state.iteration.total_iter = k
        obs.after_iteration(state, {"loss": 1.0, "time_s": t, "niter": 5}, ctx)
        lines.append(stream.getvalue().splitlines()[-1])
    assert lines[0].endswith("2 s/iter ETA 0:08")  # only the first: it is all there is
    assert lines[1].endswith("0.1 s/iter ETA 0:00")
    assert lines[2].endswith("0.1 s/iter ETA 0:00")


def test_progress_rich_mode_renders_columns():
    stream = io.StringIO()
    obs = ProgressObserver(ProgressConfig(mode="rich"), stream=stream)
    assert not obs.prints_plain_lines
    _drive(obs, ctx_for(None, [obs]), make_state(), niter=3)
    out = stream.getvalue()
    assert "engine 0" in out and "3/3" in out and "loss 1.6667e-01" in out and "s/iter" in out and "ETA" in out


def test_format_duration():
    assert format_duration(None) == "-:--"
    assert format_duration(65.4) == "1:05"
    assert format_duration(3725) == "1:02:05"
