"""The run flow: lifecycle order, outputs, Ctrl-C, and exact resume after a kill.

Everything runs on tiny fake components registered in a private registry, so these tests
check the runner against the engine contract, not any real engine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import attrs
import numpy as np
import pytest

from phaser_core.config import (
    EngineSpec,
    LoaderSpec,
    ObjectInitSpec,
    ObserverSpec,
    PreprocessorSpec,
    ProbeInitSpec,
    ScanInitSpec,
)
from phaser_core.data import RawData
from phaser_core.errors import PhaserError
from phaser_core.observer import Observer, notify
from phaser_core.registry import Owner, Registry
from phaser_core.runner import RunInterrupted, run_plan
from phaser_core.state import IterationCounters, ObjectState, ProbeState
from phaser_core.statefile import load_state

TESTS = Path(__file__).resolve().parent
OWNER = Owner("test_runner")
HANG_ENV = "PHASER_TEST_FAKE_HANG_AT"

# -- a plan stand-in with the fields of phaser_core.plan.Plan that the runner reads --------


@attrs.frozen
class Slices:
    n: int = 1
    thicknesses_A: tuple[float, ...] | None = None

    def resolve(self) -> np.ndarray:
        if self.thicknesses_A is not None:
            return np.asarray(self.thicknesses_A, dtype=np.float64)
        return np.zeros(self.n) if self.n == 1 else np.full(self.n, 10.0)


@attrs.frozen
class Init:
    probe: ProbeInitSpec = ProbeInitSpec("fake_probe")
    object: ObjectInitSpec = ObjectInitSpec("fake_object")
    scan: ScanInitSpec = ScanInitSpec("fake_scan")
    state: str | None = None


@attrs.frozen
class Output:
    checkpoint_every: int = 10
    images: tuple[str, ...] = ("object_phase", "object_phase_sum", "probe", "probe_recip")
    image_every: int | None = None


@attrs.frozen
class FakePlan:
    raw_data: LoaderSpec
    engines: tuple
    name: str = "fake"
    backend: str = "numpy"
    dtype: str = "float32"
    seed: int = 0
    post_load: tuple = ()
    init: Init = Init()
    slices: Slices = Slices()
    observers: tuple = ()
    output: Output = Output()


# -- fake components --------------------------------------------------------------------


@attrs.frozen
class LoaderConfig:
    n: int = 4
    q: int = 16


def fake_load(config, ctx):
    pats = np.ones((config.n, config.q, config.q), np.float32)
    return RawData(patterns=pats, reciprocal_sampling_invA=(0.05, 0.05), energy_eV=200e3, source="fake")


@attrs.frozen
class ScaleConfig:
    factor: float = 2.0


def fake_scale(config, data, ctx):
    return data.replace(patterns=data.patterns * config.factor)


def fake_scan(config, ctx):
    yy, xx = np.meshgrid(np.arange(2), np.arange(2), indexing="ij")
    return np.stack([yy.ravel(), xx.ravel()], axis=1).astype(np.float64) * 1.5


def fake_probe(config, ctx):
    q = ctx.data.pattern_shape[0]
    yy, xx = np.mgrid[:q, :q] - q // 2
    p = np.exp(-(yy**2 + xx**2) / 8.0).astype(np.complex64)[None]
    return ProbeState(data=p, sampling_A=ctx.data.real_space_sampling_A())


def fake_object(config, ctx):
    assert ctx.probe is not None and ctx.scan_A is not None
    s = ctx.probe.sampling_A
    data = np.ones((ctx.n_slices, 24, 24), np.complex64)
    return ObjectState(data=data, sampling_A=s, corner_A=(-5 * s[0], -5 * s[1]),
                       thicknesses_A=np.asarray(ctx.thicknesses_A, dtype=np.float64))


@attrs.frozen
class EngineConfig:
    niter: int = 3
    step: float = 0.1
    sigint_at: tuple[int, ...] = ()  # engine iterations after which to send SIGINT to ourselves


class FakeEngine:
    """Deterministic engine: a seeded random phase step per iteration, a running sum in extra."""

    def __init__(self, config):
        self.config = config

    def run(self, state, data, ctx):
        bk = ctx.backend
        num = ctx.engine_num
        assert state.iteration.engine_num == num
        hang_at = int(os.environ.get(HANG_ENV, "-1"))
        obj = bk.asarray(np.array(state.object.data))
        acc = np.array(state.extra.get("fake", {}).get("acc", np.zeros(1)), dtype=np.float64)
        for i in range(int(state.iteration.engine_iter), self.config.niter):
            if state.iteration.total_iter == hang_at:
                (ctx.out_dir / "hanging").write_text("x")
                time.sleep(120)
            t0 = time.perf_counter()
            rng = np.random.default_rng([ctx.seed, num, i])
            step = (rng.standard_normal(obj.shape) * self.config.step).astype(np.float32)
            obj = obj * bk.xp.exp(1j * step).astype(bk.complex_dtype)
            acc = acc + float(step.sum())
            it = IterationCounters(engine_num=num, engine_iter=i + 1, total_iter=state.iteration.total_iter + 1)
            state = attrs.evolve(state, object=attrs.evolve(state.object, data=obj), iteration=it,
                                 extra={**state.extra, "fake": {"acc": acc.copy()}})
            dt = time.perf_counter() - t0
            loss = float(np.abs(acc[0]))
            state.progress.append(it.total_iter, loss, dt, num)
            notify(ctx.observers, "after_iteration", state,
                   {"loss": loss, "time_s": dt, "engine_iter": i + 1, "niter": self.config.niter,
                    "total_iter": it.total_iter}, ctx)
            if i in self.config.sigint_at:
                os.kill(os.getpid(), signal.SIGINT)
            if ctx.stop_requested:
                break
        return attrs.evolve(state, object=attrs.evolve(state.object, data=bk.to_numpy(obj)))


class Recorder(Observer):
    """Records every lifecycle call as a tuple."""

    def __init__(self, config=None):
        self.calls: list[tuple] = []

    def before_run(self, plan, ctx):
        self.calls.append(("before_run",))

    def after_run(self, state, ctx):
        self.calls.append(("after_run", state.iteration.total_iter))

    def on_run_error(self, error, state, ctx):
        self.calls.append(("on_run_error", type(error).__name__))

    def before_engine(self, engine, state, ctx):
        self.calls.append(("before_engine", ctx.engine_num, state.iteration.engine_iter))

    def after_engine(self, engine, state, ctx):
        self.calls.append(("after_engine", ctx.engine_num, state.iteration.engine_iter))

    def after_iteration(self, state, metrics, ctx):
        it = state.iteration
        self.calls.append(("after_iteration", it.engine_num, it.engine_iter, it.total_iter))


class RaiseAfter(Observer):
    """Simulates a crash right after iteration ``total`` (and after its checkpoint)."""

    def __init__(self, total):
        self.total = total

    def after_iteration(self, state, metrics, ctx):
        if state.iteration.total_iter == self.total:
            raise RuntimeError(f"simulated crash after iteration {self.total}")


def make_registry() -> Registry:
    from phaser_std.backends import register_all as register_backends
    from phaser_std.observers import register_all as register_observers

    reg = Registry()

    def register(kind):
        return lambda name, obj, **kw: reg.add(kind, name, obj, OWNER, **kw)

    register_backends(register("backend"))
    register_observers(register("observer"))
    reg.add("loader", "fake_loader", fake_load, OWNER, config=LoaderConfig)
    reg.add("preprocessor", "fake_scale", fake_scale, OWNER, config=ScaleConfig)
    reg.add("scan_initializer", "fake_scan", fake_scan, OWNER)
    reg.add("probe_initializer", "fake_probe", fake_probe, OWNER)
    reg.add("object_initializer", "fake_object", fake_object, OWNER)
    reg.add("engine", "fake", FakeEngine, OWNER, config=EngineConfig)
    reg.add("observer", "recorder", Recorder, OWNER)
    return reg


def make_plan(niters=(3, 3), checkpoint_every=1, n_slices=1, sigint_at=(), **kw) -> FakePlan:
    engines = tuple(EngineSpec("fake", EngineConfig(niter=n, sigint_at=sigint_at if k == 0 else ()))
                    for k, n in enumerate(niters))
    return FakePlan(raw_data=LoaderSpec("fake_loader", LoaderConfig()), engines=engines,
                    slices=Slices(n=n_slices), output=Output(checkpoint_every=checkpoint_every), **kw)


def lifecycle(niters) -> list[tuple]:
    """The observer calls of a run whose engines iterate ``niters`` times each: (hook,
    engine, engine iteration, total iteration) as the recorders note them."""
    calls: list[tuple] = [("before_run",)]
    total = 0
    for engine, n in enumerate(niters):
        calls.append(("before_engine", engine, 0))
        for it in range(1, n + 1):
            total += 1
            calls.append(("after_iteration", engine, it, total))
        calls.append(("after_engine", engine, n))
    return calls + [("after_run", total)]


def assert_states_equal(a, b):
    np.testing.assert_array_equal(a.object.data, b.object.data)
    np.testing.assert_array_equal(a.probe.data, b.probe.data)
    np.testing.assert_array_equal(a.scan_A, b.scan_A)
    np.testing.assert_array_equal(a.extra["fake"]["acc"], b.extra["fake"]["acc"])
    assert attrs.astuple(a.iteration) == attrs.astuple(b.iteration)
    assert a.progress.iters == b.progress.iters
    assert a.progress.loss == b.progress.loss


# -- tests ------------------------------------------------------------------------------


def test_lifecycle_order_two_engines():
    rec = Recorder()
    state = run_plan(make_plan(niters=(2, 3)), registry=make_registry(), observers=[rec], quiet=True)
    assert rec.calls == [
        ("before_run",),
        ("before_engine", 0, 0),
        ("after_iteration", 0, 1, 1),
        ("after_iteration", 0, 2, 2),
        ("after_engine", 0, 2),
        ("before_engine", 1, 0),
        ("after_iteration", 1, 1, 3),
        ("after_iteration", 1, 2, 4),
        ("after_iteration", 1, 3, 5),
        ("after_engine", 1, 3),
        ("after_run", 5),
    ] == lifecycle((2, 3))
    assert state.iteration.total_iter == 5
    assert state.progress.iters == [1, 2, 3, 4, 5]


@attrs.frozen
class TagConfig:
    tag: str = "default"


class TaggedRecorder(Recorder):
    """A Recorder built from a plan entry: remembers its config and logs into a shared list."""

    built: list = []  # every instance the registry built (reset by the test)

    def __init__(self, config=None, log=None):
        super().__init__(config)
        self.config = config
        self.log = log
        self.plan_seen = None
        self.metrics: list[dict] = []
        TaggedRecorder.built.append(self)

    def before_run(self, plan, ctx):
        self.plan_seen = plan
        super().before_run(plan, ctx)

    def after_iteration(self, state, metrics, ctx):
        super().after_iteration(state, metrics, ctx)
        self.metrics.append(dict(metrics))
        if self.log is not None:
            self.log.append((self.config.tag, state.iteration.total_iter))


def test_plan_observers_and_post_load_are_used():
    reg = make_registry()
    seen = []

    def spy_step(config, data, ctx):
        seen.append(float(data.patterns.max()))
        return data

    shared: list = []
    TaggedRecorder.built = []
    reg.add("preprocessor", "spy", spy_step, OWNER)
    reg.add("observer", "tagged", lambda config: TaggedRecorder(config, log=shared), OWNER, config=TagConfig)
    plan = make_plan(niters=(2, 1), post_load=(PreprocessorSpec("fake_scale", ScaleConfig(3.0)),
                                               PreprocessorSpec("spy")),
                     observers=(ObserverSpec("tagged", TagConfig(tag="from-plan")),))
    extra = TaggedRecorder(TagConfig(tag="extra"), log=shared)
    state = run_plan(plan, registry=reg, observers=[extra], quiet=True)

    assert seen == [3.0]  # the steps ran once, in plan order (the loader's patterns are 1)
    # the plan's observer was built once from its entry (with the plan's config) ...
    built = [obs for obs in TaggedRecorder.built if obs is not extra]
    assert len(built) == 1
    obs = built[0]
    assert obs.config == TagConfig(tag="from-plan")
    assert obs.plan_seen is plan
    # ... and told about every lifecycle step, with the counters of each iteration
    assert obs.calls == lifecycle((2, 1))
    assert [(m["total_iter"], m["engine_iter"], m["niter"]) for m in obs.metrics] == [(1, 1, 2), (2, 2, 2),
                                                                                     (3, 1, 1)]
    assert [m["loss"] for m in obs.metrics] == state.progress.loss
    # the extra observer saw the same calls, each after the plan's observer
    assert extra.calls == obs.calls
    assert shared == [("from-plan", 1), ("extra", 1), ("from-plan", 2), ("extra", 2), ("from-plan", 3),
                      ("extra", 3)]


def test_error_calls_on_run_error_and_writes_checkpoint(tmp_path):
    rec = Recorder()
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_plan(make_plan(niters=(3, 3), checkpoint_every=100), out_dir=tmp_path, registry=make_registry(),
                 observers=[rec, RaiseAfter(4)], quiet=True)
    assert rec.calls[-1] == ("on_run_error", "RuntimeError")
    assert ("after_run", 6) not in rec.calls
    ck = load_state(tmp_path / "checkpoint.h5")
    # checkpoint_every=100, so this one is the on-error checkpoint of the last completed iteration
    assert attrs.astuple(ck.iteration) == (1, 1, 4)
    assert not (tmp_path / "final.h5").exists()


def test_outputs_written(tmp_path):
    import tifffile

    plan = make_plan(niters=(2, 2), checkpoint_every=3, n_slices=2)
    state = run_plan(plan, out_dir=tmp_path, registry=make_registry(), quiet=True)
    final = load_state(tmp_path / "final.h5")
    assert_states_equal(final, state)
    assert (tmp_path / "checkpoint.h5").is_file()
    log = (tmp_path / "log.txt").read_text()
    assert "engine 0 (fake) start" in log and "engine 1 (fake) done" in log
    assert log.count(" loss ") >= 4 and "s/iter" in log and "run finished after 4 iterations" in log
    images = tmp_path / "images"
    for prefix in ("engine0", "engine1", "final"):
        for kind in ("object_phase", "object_phase_sum", "probe", "probe_recip"):
            assert (images / f"{prefix}_{kind}.tif").is_file()
            assert (images / f"{prefix}_{kind}.png").is_file()
    with tifffile.TiffFile(images / "final_object_phase.tif") as tif:
        data = tif.asarray()
        num, den = tif.pages[0].tags["XResolution"].value
        meta = tif.imagej_metadata
    assert data.shape == (2, 24, 24)
    np.testing.assert_allclose(data, np.angle(state.object.data), atol=1e-6)
    assert meta["unit"] == "angstrom"
    np.testing.assert_allclose(den / num, state.object.sampling_A[1], rtol=1e-6)
    np.testing.assert_allclose(meta["spacing"], 10.0, rtol=1e-9)


def test_checkpoint_every(tmp_path):
    class CheckpointSpy(Observer):
        def __init__(self):
            self.seen = []

        def after_iteration(self, state, metrics, ctx):
            p = ctx.out_dir / "checkpoint.h5"
            self.seen.append(load_state(p).iteration.total_iter if p.exists() else None)

    spy = CheckpointSpy()
    run_plan(make_plan(niters=(5,), checkpoint_every=2), out_dir=tmp_path, registry=make_registry(),
             observers=[spy], quiet=True)
    assert spy.seen == [None, 2, 2, 4, 4]


def test_sigint_stops_cleanly_with_checkpoint(tmp_path):
    previous = signal.getsignal(signal.SIGINT)
    rec = Recorder()
    plan = make_plan(niters=(5, 3), checkpoint_every=100, sigint_at=(1,))
    with pytest.raises(RunInterrupted, match=r"phaser run --resume") as info:
        run_plan(plan, out_dir=tmp_path, registry=make_registry(), observers=[rec], quiet=True)
    assert signal.getsignal(signal.SIGINT) is previous
    # stopped after the iteration during which Ctrl-C came; engine 1 never started
    assert rec.calls[-2:] == [("after_iteration", 0, 2, 2), ("on_run_error", "RunInterrupted")]
    ck = load_state(tmp_path / "checkpoint.h5")
    assert attrs.astuple(ck.iteration) == (0, 2, 2)
    assert_states_equal(ck, info.value.state)
    # resuming finishes the run exactly like an uninterrupted one
    resumed = run_plan(make_plan(niters=(5, 3)), out_dir=tmp_path, registry=make_registry(), resume=True,
                       quiet=True)
    full = run_plan(make_plan(niters=(5, 3)), registry=make_registry(), quiet=True)
    assert_states_equal(resumed, full)


def test_second_sigint_raises_keyboard_interrupt(tmp_path):
    previous = signal.getsignal(signal.SIGINT)
    plan = make_plan(niters=(5,), checkpoint_every=100, sigint_at=(0, 1))

    class NoStop(FakeEngine):  # ignores stop_requested so the second Ctrl-C is needed
        def run(self, state, data, ctx):
            return super().run(state, data, _IgnoreStop(ctx))

    reg = make_registry()
    reg.add("engine", "nostop", NoStop, OWNER, config=EngineConfig)
    plan = attrs.evolve(plan, engines=(EngineSpec("nostop", EngineConfig(niter=5, sigint_at=(0, 1))),))
    with pytest.raises(KeyboardInterrupt):
        run_plan(plan, out_dir=tmp_path, registry=reg, quiet=True)
    assert signal.getsignal(signal.SIGINT) is previous
    assert load_state(tmp_path / "checkpoint.h5").iteration.total_iter == 2


class _IgnoreStop:
    """A RunContext view whose stop_requested always reads False."""

    def __init__(self, ctx):
        self._ctx = ctx

    stop_requested = False

    def __getattr__(self, name):
        return getattr(self._ctx, name)


def test_resume_after_crash_is_exact(tmp_path):
    full = run_plan(make_plan(niters=(4, 2)), registry=make_registry(), quiet=True)
    with pytest.raises(RuntimeError):
        run_plan(make_plan(niters=(4, 2)), out_dir=tmp_path, registry=make_registry(),
                 observers=[RaiseAfter(3)], quiet=True)
    rec = Recorder()
    resumed = run_plan(make_plan(niters=(4, 2)), out_dir=tmp_path, registry=make_registry(), resume=True,
                       observers=[rec], quiet=True)
    assert rec.calls[:3] == [("before_run",), ("before_engine", 0, 3), ("after_iteration", 0, 4, 4)]
    assert_states_equal(resumed, full)
    assert_states_equal(load_state(tmp_path / "final.h5"), full)


def test_resume_after_engine_boundary_skips_finished_engine(tmp_path):
    full = run_plan(make_plan(niters=(3, 2)), registry=make_registry(), quiet=True)
    with pytest.raises(RuntimeError):
        run_plan(make_plan(niters=(3, 2), checkpoint_every=100), out_dir=tmp_path, registry=make_registry(),
                 observers=[RaiseAfter(4)], quiet=True)
    rec = Recorder()
    # crash was in engine 1 after its first iteration: engine 0 must not run again
    resumed = run_plan(make_plan(niters=(3, 2)), out_dir=tmp_path, registry=make_registry(), resume=True,
                       observers=[rec], quiet=True)
    assert rec.calls[1] == ("before_engine", 1, 1)
    assert_states_equal(resumed, full)


def test_resume_finished_run_runs_nothing(tmp_path):
    full = run_plan(make_plan(niters=(2, 2)), out_dir=tmp_path, registry=make_registry(), quiet=True)
    rec = Recorder()
    again = run_plan(make_plan(niters=(2, 2)), out_dir=tmp_path, registry=make_registry(), resume=True,
                     observers=[rec], quiet=True)
    assert rec.calls == [("before_run",), ("after_run", 4)]
    assert_states_equal(again, full)


def test_resume_without_state_file_is_a_clear_error(tmp_path):
    with pytest.raises(PhaserError, match="neither checkpoint.h5 nor final.h5"):
        run_plan(make_plan(), out_dir=tmp_path, registry=make_registry(), resume=True, quiet=True)


def test_init_from_state_file(tmp_path):
    first = run_plan(make_plan(niters=(2,)), out_dir=tmp_path / "a", registry=make_registry(), quiet=True)
    plan = make_plan(niters=(1,), init=Init(state="a/final.h5"))
    rec = Recorder()
    second = run_plan(plan, registry=make_registry(), plan_dir=tmp_path, observers=[rec], quiet=True)
    assert rec.calls[1] == ("before_engine", 0, 0)
    assert second.iteration.total_iter == 1  # counters restart for a new run
    rng = np.random.default_rng([0, 0, 0])
    step = (rng.standard_normal(first.object.data.shape) * 0.1).astype(np.float32)
    expected = first.object.data * np.exp(1j * step).astype(np.complex64)
    np.testing.assert_array_equal(second.object.data, expected)


# -- SIGKILL: a real killed process --------------------------------------------------------

_CHILD = """
import sys
sys.path.insert(0, {tests!r})
from pathlib import Path
import test_runner as t
from phaser_core.runner import run_plan
run_plan(t.make_plan(niters=(4, 3), checkpoint_every=1), out_dir=Path({out!r}), registry=t.make_registry(),
         quiet=True)
"""


def test_resume_after_sigkill_matches_uninterrupted(tmp_path):
    """Kill the process with SIGKILL during iteration 5 (engine 1), resume, compare exactly."""
    out = tmp_path / "run"
    out.mkdir()
    env = {**os.environ, HANG_ENV: "5"}
    child = subprocess.Popen([sys.executable, "-c", _CHILD.format(tests=str(TESTS), out=str(out))], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not (out / "hanging").exists():
            if child.poll() is not None:
                raise AssertionError(f"child exited early: {child.stdout.read().decode()}")
            if time.monotonic() > deadline:
                raise AssertionError("child never reached the kill point")
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL
    assert not (out / "final.h5").exists()
    assert load_state(out / "checkpoint.h5").iteration.total_iter == 5
    resumed = run_plan(make_plan(niters=(4, 3), checkpoint_every=1), out_dir=out, registry=make_registry(),
                       resume=True, quiet=True)
    full = run_plan(make_plan(niters=(4, 3)), registry=make_registry(), quiet=True)
    assert_states_equal(resumed, full)
    assert "engine 1 (fake) start at iteration 1" in (out / "log.txt").read_text()


def test_real_plan_from_yaml_runs(tmp_path):
    """The runner reads a phaser_core.plan.Plan built by load_plan the same way as the stand-in."""
    from phaser_core.plan import load_plan

    reg = make_registry()
    plan = load_plan("""
file_type: phaser_plan
version: 1
name: fake
raw_data: {type: fake_loader, n: 4}
post_load: [{type: fake_scale, factor: 2.0}]
init: {probe: {type: fake_probe}, object: {type: fake_object}, scan: {type: fake_scan}}
slices: {n: 2, total_thickness_A: 20}
engines: [{type: fake, niter: 2}, {type: fake, niter: 1}]
output: {checkpoint_every: 1, images: [probe, object_phase]}
""", registry=reg)
    state = run_plan(plan, registry=reg, out_dir=tmp_path, quiet=True)
    assert attrs.astuple(state.iteration) == (1, 1, 3)
    assert state.object.n_slices == 2
    names = sorted(p.name for p in (tmp_path / "images").iterdir())
    assert names == sorted(f"{pre}_{kind}.{ext}" for pre in ("engine0", "engine1", "final")
                           for kind in ("probe", "object_phase") for ext in ("tif", "png"))


def test_run_plan_refuses_a_folder_with_a_previous_run(tmp_path, monkeypatch):
    """The API keeps a previous run as the CLI does: refused unless resumed or overwritten."""
    run_plan(make_plan(niters=(3,)), out_dir=tmp_path, registry=make_registry(), quiet=True)
    with pytest.raises(PhaserError, match="holds a previous run.*resume=True.*overwrite=True"):
        run_plan(make_plan(niters=(2,)), out_dir=tmp_path, registry=make_registry(), quiet=True)
    # overwriting starts afresh (not a resume of the 3 iterations) and removes the old
    # state files, so that a resume after a crash cannot pick up the old final.h5
    state = run_plan(make_plan(niters=(2,)), out_dir=tmp_path, registry=make_registry(), quiet=True,
                     overwrite=True)
    assert list(state.progress.iters) == [1, 2]
    # and the states an earlier run kept (output.state_every)
    (tmp_path / "states").mkdir()
    (tmp_path / "states" / "iter00003.h5").write_bytes(b"old")
    run_plan(make_plan(niters=(2,)), out_dir=tmp_path, registry=make_registry(), quiet=True, overwrite=True)
    assert not (tmp_path / "states" / "iter00003.h5").exists()
    run_plan(make_plan(niters=(3,)), out_dir=tmp_path / "b", registry=make_registry(), quiet=True)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_plan(make_plan(niters=(2,)), out_dir=tmp_path / "b", registry=make_registry(), quiet=True,
                 overwrite=True, observers=[RaiseAfter(1)])
    assert not (tmp_path / "b" / "final.h5").exists()
    # a run that cannot start (its data fail to load) leaves the previous run as it was
    run_plan(make_plan(niters=(3,)), out_dir=tmp_path / "c", registry=make_registry(), quiet=True)
    import phaser_core.runner as runner

    def no_data(*args, **kwargs):
        raise PhaserError("the data file is gone")

    monkeypatch.setattr(runner, "load_data", no_data)
    with pytest.raises(PhaserError, match="the data file is gone"):
        run_plan(make_plan(niters=(2,)), out_dir=tmp_path / "c", registry=make_registry(), quiet=True,
                 overwrite=True)
    assert (tmp_path / "c" / "final.h5").exists()


def test_a_stop_asked_for_before_the_run_starts_stops_it_cleanly_before_the_first_iteration(tmp_path):
    """Ctrl-C while `phaser run` imports and loads (seconds) raised KeyboardInterrupt
    wherever the import was (a traceback), or inside a library callback that swallowed it
    (the run then went on): now the run starts, stops before its first iteration with a
    checkpoint, and resumes from it; a second Ctrl-C still aborts at once."""
    from phaser_core.interrupts import early_stop_requests

    out = tmp_path / "out"
    with early_stop_requests():
        os.kill(os.getpid(), signal.SIGINT)  # no KeyboardInterrupt: only recorded
        with pytest.raises(RunInterrupted, match="after iteration 0"):
            run_plan(make_plan(niters=(2,)), out_dir=out, registry=make_registry(), quiet=True)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert load_state(out / "checkpoint.h5").iteration.total_iter == 0
    state = run_plan(make_plan(niters=(2,)), out_dir=out, registry=make_registry(), resume=True, quiet=True)
    assert state.iteration.total_iter == 2
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the previous handler is back


def test_a_second_stop_before_the_run_aborts_at_once():
    from phaser_core.interrupts import early_stop_requests, stop_requested_early

    with early_stop_requests():
        os.kill(os.getpid(), signal.SIGINT)  # recorded
        assert stop_requested_early()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)


def test_once_the_run_has_had_its_handler_a_signal_acts_at_once_again():
    """After run_plan returns (the early handler back in place), a first Ctrl-C must not be
    recorded for a run that never reads it (a dry run: tests/test_memory.py)."""
    from phaser_core.interrupts import early_stop_requests, run_started

    with early_stop_requests():
        run_started()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
