"""The memory planner: estimates, the CLI, the pre-run check and one calibration check."""

from __future__ import annotations

import json
from pathlib import Path
from unittest import mock

import attrs
import numpy as np
import pytest

from phaser_core.cli import main as cli_main
from phaser_core.data import RawData
from phaser_core.errors import PhaserError
from phaser_core.memory import (DataShape, data_shape, estimate_plan, format_bytes, format_report, measure_in_subprocess,
                                 pool_checks, shortfall_message)
from phaser_core.plan import SlicesPlan, load_plan
from phaser_core.runner import run_plan
from phaser_std.engines.common import GroupingConfig
from phaser_std.engines.conventional import ConventionalConfig, ConventionalEngine
from phaser_std.engines.gradient import GradientConfig, GradientEngine
from recon import make_dataset

DATA = DataShape(n_patterns=4096, pattern_shape=(128, 128), host_itemsize=4, mapped=True)
SHAPES = {"probe": (1, 128, 128), "object": (1, 600, 600), "scan": (4096, 2)}


def _terms(engine, backend="numpy", dtype="float32") -> dict:
    return {t[0].split(" (")[0]: t[1] for t in engine.estimate_memory(DATA, SHAPES, dtype, backend=backend)}


def _group_step_as_transient():
    """The planner's transient term always the group step's: the placing of the patterns
    (their host copy, 256 MiB for ``DATA`` on jax), which it is compared with, left out."""
    import phaser_std.engines.memory as planner

    return mock.patch.object(planner, "_transient", lambda group, _others, hint: (group[1], group[0], hint, "device"))


def _group_term(engine, backend="numpy", dtype="float32") -> int:
    """The group-step term (probe scaling off, the placing of the patterns left out)."""
    with _group_step_as_transient():
        terms = engine.estimate_memory(DATA, SHAPES, dtype, backend=backend)
    (value,) = [t[1] for t in terms if t[0].startswith("group step")]
    return value


def _conv(size=64, modes=None, slices=None, chunk="group", **kw):
    """A conventional engine computing whole groups at once unless ``chunk`` says otherwise."""
    sl = SlicesPlan(n=slices, total_thickness_A=10.0 * slices) if slices else None
    chunk = size if chunk == "group" else chunk
    return ConventionalEngine(ConventionalConfig(grouping=GroupingConfig(size=size, chunk=chunk), probe_modes=modes,
                                                 slices=sl, scale_probe=False, **kw))


def _grad(size=64, modes=None, slices=None, chunk="group"):
    """A gradient engine computing whole groups at once unless ``chunk`` says otherwise."""
    sl = SlicesPlan(n=slices, total_thickness_A=10.0 * slices) if slices else None
    chunk = size if chunk == "group" else chunk
    return GradientEngine(GradientConfig(grouping=GroupingConfig(size=size, chunk=chunk), probe_modes=modes,
                                         slices=sl, scale_probe=False))


@pytest.mark.parametrize("backend", ["numpy", "jax"])
@pytest.mark.parametrize("make", [_conv, _grad])
def test_group_term_scales_with_group_size_slices_and_modes(make, backend):
    base = _group_term(make(size=16), backend)
    # linear in the group size (every array of the group step has B rows)
    assert _group_term(make(size=64), backend) == pytest.approx(4 * base, rel=1e-6)
    # modes multiply the wave arrays (not the views or per-pixel maps): between 1.5x and 4x
    m4 = _group_term(make(size=16, modes=4), backend)
    assert 1.5 * base < m4 < 4 * base
    # slices add views and one kept wave per slice: grows, but less than 3x for 3 slices
    s3 = _group_term(make(size=16, slices=3), backend)
    assert 1.2 * base < s3 < 3 * base
    # float64 doubles every array
    assert _group_term(make(size=16), backend, "float64") == pytest.approx(2 * base, rel=1e-6)


@pytest.mark.parametrize("backend", ["numpy", "jax"])
def test_gradient_group_term_counts_the_chunk_not_the_group(backend, monkeypatch):
    # 128² px, 1 mode, 1 slice: 128 KiB of waves per position, so the automatic chunk on a
    # CPU is 16 positions (2 MiB); a group of 256 then costs a chunk of 16 plus its patterns
    import phaser_std.engines.memory as planner

    monkeypatch.setattr(planner, "named_backend_on_cpu", lambda name: True)  # also on a GPU machine
    monkeypatch.setattr(planner, "named_backend_lanes", lambda name: 1)  # lanes: the next test
    auto_256 = _group_term(_grad(size=256, chunk=None), backend)
    whole_16 = _group_term(_grad(size=16), backend)
    patterns = (256 - 16) * 128 * 128 * 4
    assert auto_256 == whole_16 + patterns
    assert _group_term(_grad(size=256, chunk=64), backend) == _group_term(_grad(size=64), backend) + \
        (256 - 64) * 128 * 128 * 4
    # on a GPU the automatic chunk is the whole group
    monkeypatch.setattr(planner, "named_backend_on_cpu", lambda name: False)
    assert _group_term(_grad(size=256, chunk=None), backend) == _group_term(_grad(size=256, chunk=256), backend)


def test_chunked_lsqml_group_term_is_the_chunk_plus_what_is_kept():
    """Single-slice LSQML in chunks (128² px, 4 modes: 512 KiB of waves per position, so
    chunks of 4) holds a chunk's working set plus the group's χ and shifted probes."""
    whole_4 = _group_term(_conv(size=4, modes=4))
    chunked = _group_term(_conv(size=256, modes=4, chunk=None))
    wave = 256 * 4 * 128 * 128 * 8
    assert chunked == whole_4 + 2 * wave + 2 * 256 * 128 * 128 * 4
    assert chunked < 0.6 * _group_term(_conv(size=256, modes=4))


@pytest.mark.parametrize("solver", ["epie", "lsqml"])
def test_chunked_multislice_group_term_counts_the_kept_slice_waves(solver):
    """The multislice steps in chunks (3 slices of 128², 4 modes: 1.5 MiB of waves per
    position, so chunks of 8 under the 16 MiB budget) hold a chunk's working set plus what
    they keep of the group between passes: ePIE the waves entering the 3 slices and χ into
    and out of a pass (5 waves); LSQML χ, χ at the entrance and the 3 slices' waves (5
    waves) and the slices' illumination."""
    from phaser_core.config import ConventionalSolverSpec

    spec = ConventionalSolverSpec(solver)
    whole_8 = _group_term(_conv(size=8, modes=4, slices=3, solver=spec))
    chunked = _group_term(_conv(size=256, modes=4, slices=3, chunk=None, solver=spec))
    wave, pixels = 256 * 4 * 128 * 128 * 8, 256 * 128 * 128 * 4
    illumination = 3 * pixels if solver == "lsqml" else 0
    assert chunked == whole_8 + 5 * wave + illumination + pixels


def test_object_and_optimizer_terms_scale_with_slices():
    one, three = _terms(_grad(slices=1)), _terms(_grad(slices=3))
    assert three["object"] == 3 * one["object"]
    assert one["object"] == 600 * 600 * 8
    # adam: complex first moment + real second moment of the object, plus the probe's
    assert one["optimizer state"] == int(1.5 * 600 * 600 * 8) + int(1.5 * 128 * 128 * 8)
    assert _terms(_conv())["patterns on the device"] == 4096 * 128 * 128 * 4


@pytest.mark.parametrize("make", [_conv, _grad])
def test_counted_patterns_take_one_or_two_bytes_a_value_on_the_device(make):
    # engines keep counted data exactly as uint8 or uint16 (engines.common.patterns_to_device)
    floats = _terms(make())["patterns on the device"]
    assert floats == 4096 * 128 * 128 * 4
    for itemsize in (1, 2):
        counted = attrs.evolve(DATA, count_itemsize=itemsize)
        terms = {t[0].split(" (")[0]: t[1]
                 for t in make().estimate_memory(counted, SHAPES, "float32", backend="numpy")}
        assert terms["patterns on the device"] == floats * itemsize // 4
    counts = np.random.default_rng(0).poisson(3.0, size=(4, 8, 8)).astype(np.float32)
    assert data_shape(RawData(patterns=counts)).count_itemsize == 1
    assert data_shape(RawData(patterns=counts + 300.0)).count_itemsize == 2
    assert data_shape(RawData(patterns=counts + 0.5)).count_itemsize == 0


@pytest.mark.parametrize("make", [_conv, _grad])
def test_streamed_patterns_are_counted_on_the_host_and_two_blocks_on_the_device(make):
    """On a GPU (cupy here; jax too when its platform is a GPU) the engines stream the
    patterns by default (engines.pattern_feed): the host holds them all, the device two
    blocks of whole groups (16 MiB: 4 groups of 64 x 128² float32); grouping.stream_patterns
    sets it either way."""
    kept = _terms(make(), backend="numpy")
    assert kept["patterns on the device"] == 4096 * 128 * 128 * 4 and "streamed pattern blocks on the device" not in kept
    gpu = {t[0].split(" (")[0]: (t[1], t[3]) for t in make().estimate_memory(DATA, SHAPES, "float32", backend="cupy")}
    assert "patterns on the device" not in gpu
    assert gpu["patterns kept on the host for streaming"] == (4096 * 128 * 128 * 4, "host")
    assert gpu["streamed pattern blocks on the device"] == (2 * 4 * 64 * 128 * 128 * 4, "device")
    engine = make()
    engine.config = attrs.evolve(engine.config, grouping=attrs.evolve(engine.config.grouping, stream_patterns=False))
    assert _terms(engine, backend="cupy")["patterns on the device"] == 4096 * 128 * 128 * 4
    engine.config = attrs.evolve(engine.config, grouping=attrs.evolve(engine.config.grouping, stream_patterns=True))
    forced = _terms(engine, backend="numpy")
    assert "patterns on the device" not in forced
    assert forced["streamed pattern blocks on the device"] == 2 * 4 * 64 * 128 * 128 * 4


def test_probe_scaling_pass_is_the_transient_when_groups_are_small():
    eng = ConventionalEngine(ConventionalConfig(grouping=GroupingConfig(size=16), probe_modes=4))
    terms = eng.estimate_memory(DATA, SHAPES, "float32", backend="numpy")
    names = [t[0] for t in terms]
    assert any(n.startswith("probe-scaling pass") for n in names)
    assert not any(n.startswith("group step") for n in names)


# ---------------------------------------------------------------------------------------
# On a real (tiny) plan: the CLI, the pre-run check
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("memory")
    data = make_dataset(d / "tiny.h5", detector_shape=[32, 32], reciprocal_sampling_invA=0.2,
                        scan={"shape": [8, 8], "step_A": 0.6})
    # a random-phase start: split among 2 slices it takes the probe-scaling pass (a vacuum
    # would not, test_probe_scaling_pass_is_left_out_on_a_vacuum_of_any_slices)
    plan = {"file_type": "phaser_plan", "version": 1, "backend": "numpy", "raw_data": {"type": "hdf5", "path": data.name},
            "init": {"object": {"type": "random"}},
            "engines": [{"type": "conventional", "niter": 1, "grouping": {"size": 16}, "solver": {"type": "lsqml"},
                         "probe_modes": 2, "slices": {"n": 2, "total_thickness_A": 20.0}}]}
    path = d / "plan.json"
    path.write_text(json.dumps(plan))
    return path


def test_estimate_of_a_plan(tiny):
    est = estimate_plan(load_plan(tiny), plan_dir=tiny.parent)
    assert est.data.n_patterns == 64 and est.data.pattern_shape == (32, 32)
    assert est.data.mapped  # the hdf5 loader memory-maps
    assert est.peak == sum(t.bytes for t in est.peak_terms) > 64 * 32 * 32 * 4
    d = est.to_dict()
    assert d["peak_bytes"] == est.peak and d["engines"][0]["type"] == "conventional"


def test_plan_memory_prints_the_terms(tiny, capsys):
    assert cli_main(["plan-memory", str(tiny)]) == 0
    out = capsys.readouterr().out
    for words in ("patterns on the device", "object (S·H·W complex)", "probe-scaling pass", "peak:"):
        assert words in out
    assert cli_main(["plan-memory", str(tiny), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["peak_bytes"] > 0 and d["largest"]["name"]
    # over a budget: exit 1 and name the largest term
    assert cli_main(["plan-memory", str(tiny), "--budget-GiB", "0.0001"]) == 1
    assert "largest term" in capsys.readouterr().err


def test_run_dry_run_prints_the_estimate_and_runs_nothing(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli_main(["run", str(tiny), "--out", str(out), "--dry-run"]) == 0
    assert "peak:" in capsys.readouterr().out
    assert not out.exists()


def test_a_run_over_the_budget_stops_naming_the_largest_term(tiny, monkeypatch):
    monkeypatch.setenv("PHASER_MEMORY_BUDGET_GIB", "0.001")
    plan = load_plan(tiny)
    with pytest.raises(PhaserError) as err:
        run_plan(plan, plan_dir=tiny.parent, quiet=True)
    msg = str(err.value)
    est = estimate_plan(plan, plan_dir=tiny.parent)
    big = est.largest()
    assert big.name in msg and big.hint in msg and "PHASER_MEMORY_BUDGET_GIB=0.001" in msg
    # with the group step the largest term, the message says which setting to lower
    plan2 = load_plan(tiny, overrides=["engines[0].scale_probe=false", "engines[0].grouping.size=64"])
    with pytest.raises(PhaserError, match=r"lower grouping.size \(now 64\)"):
        run_plan(plan2, plan_dir=tiny.parent, quiet=True)
    # a generous budget runs
    monkeypatch.setenv("PHASER_MEMORY_BUDGET_GIB", "50")
    state = run_plan(plan, plan_dir=tiny.parent, quiet=True)
    assert state.iteration.total_iter == 1
    # the check can be turned off
    monkeypatch.setenv("PHASER_MEMORY_BUDGET_GIB", "0.001")
    monkeypatch.setenv("PHASER_MEMORY_CHECK", "0")
    assert run_plan(plan, plan_dir=tiny.parent, quiet=True).iteration.total_iter == 1


def test_calibration_small_case_within_25_percent(tmp_path):
    """One calibration case of docs/memory.md, measured in a fresh process (peak RSS growth;
    about 2 s)."""
    data = make_dataset(tmp_path / "cal.h5", scan={"shape": [16, 16], "step_A": 0.6})
    plan = {"file_type": "phaser_plan", "version": 1, "backend": "numpy", "raw_data": {"type": "hdf5", "path": data.name},
            "engines": [{"type": "conventional", "niter": 1, "grouping": {"size": 64}, "solver": {"type": "lsqml"},
                         "probe_modes": 4, "slices": {"n": 3, "total_thickness_A": 30.0}}]}
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    est = estimate_plan(load_plan(path), plan_dir=tmp_path).peak
    measured = measure_in_subprocess(path)["growth"]
    assert 0.75 <= est / measured <= 1.25, (est / 2**20, measured / 2**20)


def test_probe_scaling_pass_is_left_out_on_one_slice_of_unit_amplitude(tiny):
    """One slice of the random-phase start scales the probe without a forward pass
    (common.scale_probe_to_data), so there is no such term; two slices keep it."""
    d = json.loads(tiny.read_text())
    del d["engines"][0]["slices"]
    path = tiny.parent / "one_slice.json"
    path.write_text(json.dumps(d))
    names = [t.name for t in estimate_plan(load_plan(path), plan_dir=tiny.parent).engines[0].terms]
    assert not any(n.startswith("probe-scaling pass") for n in names)
    names = [t.name for t in estimate_plan(load_plan(tiny), plan_dir=tiny.parent).engines[0].terms]
    assert any(n.startswith("probe-scaling pass") for n in names)


def test_probe_scaling_pass_is_left_out_on_a_vacuum_of_any_slices(tiny):
    """A vacuum start stays a vacuum on every slice, whose probe scaling needs no forward
    pass either (what the band limit keeps of the probe, common.scale_probe_to_data)."""
    d = json.loads(tiny.read_text())
    d["init"]["object"] = {"type": "vacuum"}
    path = tiny.parent / "vacuum.json"
    path.write_text(json.dumps(d))
    names = [t.name for t in estimate_plan(load_plan(path), plan_dir=tiny.parent).engines[0].terms]
    assert not any(n.startswith("probe-scaling pass") for n in names)


def test_probe_scaling_pass_counts_only_for_the_first_engine(tiny):
    d = json.loads(tiny.read_text())
    d["engines"].append({"type": "gradient", "niter": 1, "grouping": {"size": 16}})
    path = tiny.parent / "two.json"
    path.write_text(json.dumps(d))
    est = estimate_plan(load_plan(path), plan_dir=tiny.parent)
    first, second = ([t.name for t in e.terms] for e in est.engines)
    assert any(n.startswith("probe-scaling pass") for n in first)
    assert not any(n.startswith("probe-scaling pass") for n in second)
    assert any(n.startswith("optimizer state") for n in second)


def test_report_and_check_judge_the_same_pools(tiny):
    """On an accelerator the device terms go against the device and the host terms against
    the host, in the run's check and in the report alike: a host that is too small fails
    both, although the device has room."""
    est = estimate_plan(load_plan(tiny), plan_dir=tiny.parent)
    device, host = est.peak_where("device"), est.peak_where("host")
    assert device > 0 and host > 0
    # the device has room for its terms but not for the whole peak: a rule that compared the
    # whole peak with the device would call the device short too
    tight_host = {"device": device + host // 2, "source": "test"}
    tight_host["host"] = host // 2
    assert device < tight_host["device"] < est.peak
    checks = pool_checks(est, tight_host)
    assert [(c.label, c.need, c.fits) for c in checks] == [("device", device, True), ("host", host, False)]
    report = format_report(est, tight_host).splitlines()
    device_line = [ln for ln in report if ln.startswith("available device")]
    host_line = [ln for ln in report if ln.startswith("available host")]
    assert device_line == [f"available device: {format_bytes(device + host // 2)} (test), needs "
                           f"{format_bytes(device)} -> fits"]
    assert host_line == [f"available host: {format_bytes(host // 2)} (test), needs {format_bytes(host)} -> DOES NOT FIT"]
    # a CPU backend: one pool, every term
    (cpu,) = pool_checks(est, {"device": None, "host": est.peak - 1, "source": "test"})
    assert cpu.label == "memory" and cpu.need == est.peak and not cpu.fits
    assert "host" in shortfall_message(est, checks[1])
    # a budget set for the device is not the host's limit: the host line says where its figure is from
    budgeted = pool_checks(est, {"device": device, "host": host, "source": "PHASER_MEMORY_BUDGET_GIB=1",
                                 "host_source": "MemAvailable (host)"})
    assert [c.source for c in budgeted] == ["PHASER_MEMORY_BUDGET_GIB=1", "MemAvailable (host)"]


def test_iterations_without_object_update_of_multislice_lsqml_stay_in_chunks():
    """LSQML's multislice step has a chunked probe-only step too: with ``update_object:
    {after: 2}`` the estimate is the chunked one, as with the object always updated."""
    from phaser_core.config import Flag

    chunked = _group_term(_conv(size=256, modes=4, slices=3, chunk=None))
    whole = _group_term(_conv(size=256, modes=4, slices=3))
    assert chunked < whole
    assert _group_term(_conv(size=256, modes=4, slices=3, chunk=None, update_object=Flag(after=2))) == chunked


def test_cpu_lanes_hold_a_chunk_each_and_their_own_copy_of_the_shared_arrays(monkeypatch):
    # jax with two CPU lanes: the group of 256 runs as chunks on each lane at once, and
    # each lane holds the patterns, object and probe; one lane where the step cannot split
    import phaser_std.engines.memory as planner
    import phaser_std.engines.pattern_feed as feed

    monkeypatch.setattr(planner, "named_backend_on_cpu", lambda name: True)
    monkeypatch.setattr(feed, "LANE_SPLIT_MIN_SAVING", 1 << 60)  # patterns a copy a lane (the next tests: split)

    def terms(lanes, **kw):
        monkeypatch.setattr(planner, "named_backend_lanes", lambda name: lanes)
        with _group_step_as_transient():
            return {t[0].split(",")[0].split(" (")[0]: t[1]
                    for t in _grad(**kw).estimate_memory(DATA, SHAPES, "float32", backend="jax")}

    # on lanes the chunk follows the lanes' 256 KiB budget: 2 positions of 128 KiB each
    one, two = terms(1, size=256, chunk=2), terms(2, size=256, chunk=None)
    group = next(k for k in one if k.startswith("group"))
    assert two[group] == pytest.approx(2 * one[group])  # each lane also gathers the group's patterns
    for shared in ("patterns on the device", "object", "probe modes"):
        assert two[shared] == 2 * one[shared], shared
    # a chunk as large as the group cannot split: one lane, as without lanes
    assert terms(2, size=256, chunk=256) == terms(1, size=256, chunk=256)


def test_patterns_on_lanes_name_fewer_lanes_among_the_remedies(monkeypatch):
    import phaser_std.engines.memory as planner
    import phaser_std.engines.pattern_feed as feed

    monkeypatch.setattr(planner, "named_backend_on_cpu", lambda name: True)
    monkeypatch.setattr(feed, "LANE_SPLIT_MIN_SAVING", 1 << 60)  # a copy a lane
    for lanes, named in ((1, False), (2, True)):
        monkeypatch.setattr(planner, "named_backend_lanes", lambda name: lanes)
        hint = next(t[2] for t in _grad(size=256, chunk=None).estimate_memory(DATA, SHAPES, "float32", backend="jax")
                    if t[0].startswith("patterns on the device"))
        assert "grouping.stream_patterns: true" in hint
        assert ("PHASER_JAX_CPU_DEVICES" in hint) == named


def test_patterns_split_over_lanes_count_once(monkeypatch):
    """Large patterns kept on CPU lanes are split over them (engines.pattern_feed): the
    planner counts one copy (its rows padded to a multiple of the lanes), not one a lane."""
    import phaser_std.engines.memory as planner
    import phaser_std.engines.pattern_feed as feed

    monkeypatch.setattr(planner, "named_backend_on_cpu", lambda name: True)
    monkeypatch.setattr(planner, "named_backend_lanes", lambda name: 2)

    def patterns_term():
        return next((t[0], t[1]) for t in _grad(size=256, chunk=None).estimate_memory(DATA, SHAPES, "float32",
                                                                                       backend="jax")
                    if t[0].startswith("patterns on the device"))

    monkeypatch.setattr(feed, "LANE_SPLIT_MIN_SAVING", 1 << 60)
    name, copies = patterns_term()
    assert "on each of 2 CPU lanes" in name
    monkeypatch.setattr(feed, "LANE_SPLIT_MIN_SAVING", 1)
    name, split = patterns_term()
    assert "split over 2 CPU lanes" in name
    n = DATA.n_patterns
    assert split == copies // 2 * (-(-n // 2) * 2) // n


def test_placing_the_patterns_is_a_transient_beside_the_group_step(monkeypatch):
    """Before the first group the patterns are shifted and cast on the host and sent to the
    device: jax holds their host copy while it sends it (one lane's rows where they are
    split over the lanes, sent a lane at a time); numpy's host copy is the kept one, and a
    streamed run keeps it (already a term). The planner counts the largest of these and the
    group step, once."""
    import phaser_std.engines.memory as planner
    import phaser_std.engines.pattern_feed as feed

    monkeypatch.setattr(planner, "named_backend_on_cpu", lambda name: True)
    nbytes = 4096 * 128 * 128 * 4

    def transient(backend, lanes, **grouping):
        monkeypatch.setattr(planner, "named_backend_lanes", lambda name: lanes)
        engine = GradientEngine(GradientConfig(grouping=GroupingConfig(size=16, **grouping), scale_probe=False))
        terms = engine.estimate_memory(DATA, SHAPES, "float32", backend=backend)
        (term,) = [t for t in terms if t[0].startswith(("group step", "placing"))]
        # placed before anything compiles: the compilations' memory (the overhead) comes later
        (overhead,) = [t[1] for t in terms if t[0].startswith("backend runtime")]
        return term[0].split(",")[0], term[1] + overhead, term[3]

    assert transient("jax", 1) == ("placing the patterns: their corner-centred host copy", nbytes, "host")
    monkeypatch.setattr(feed, "LANE_SPLIT_MIN_SAVING", 1)
    assert transient("jax", 2) == ("placing the patterns: one lane's rows on the host", nbytes // 2, "host")
    assert transient("numpy", 1)[0].startswith("group step")
    assert transient("jax", 1, stream_patterns=True)[0].startswith("group step")
    # on a GPU the host copy is not in the device's pool: the group step stays the transient
    monkeypatch.setattr(planner, "named_backend_on_cpu", lambda name: False)
    assert transient("jax", 1, stream_patterns=False)[0].startswith("group step")


def test_a_memory_mapped_file_counts_no_resident_pages(tiny):
    """Every pass over memory-mapped patterns gives their pages back as it reads them
    (``phaser_core.data.PageRelease``), so the file's size is not part of the peak."""
    est = estimate_plan(load_plan(tiny), plan_dir=tiny.parent)
    (raw,) = [t for t in est.shared if t.name.startswith("raw patterns")]
    assert est.data.mapped and raw.bytes == 0 and "given back" in raw.name


def test_an_engine_that_keeps_slices_and_modes_is_sized_with_the_earlier_engines_ones(tiny):
    """``slices``/``probe_modes`` null keep the previous engine's: the second engine holds 2
    slices and 2 modes, not the initial state's 1 and 1."""
    d = json.loads(tiny.read_text())
    d["engines"].append({"type": "gradient", "niter": 1, "grouping": {"size": 16}})
    path = tiny.parent / "kept.json"
    path.write_text(json.dumps(d))
    est = estimate_plan(load_plan(path), plan_dir=tiny.parent)
    first, second = ({t.name: t for t in e.terms} for e in est.engines)
    assert est.shapes["object"][0] == 1 and est.shapes["probe"][0] == 1  # the initial state
    assert second["object (S·H·W complex)"].bytes == first["object (S·H·W complex)"].bytes
    assert second["probe modes"].bytes == first["probe modes"].bytes
    assert "slices.n = 2" in second["object (S·H·W complex)"].hint


def test_the_device_check_takes_the_engine_that_needs_the_most_device_memory(tiny):
    """A host-heavy engine (the largest total) must not hide a later one that needs more of
    the GPU: each pool is judged on its own largest engine, and the message names that one."""
    from phaser_core.memory import EngineEstimate, Term

    est = estimate_plan(load_plan(tiny), plan_dir=tiny.parent)
    host_heavy = EngineEstimate(0, "conventional", (Term("streamed patterns", 70, "x", "host"),
                                                     Term("group step", 30, "lower grouping.size", "device")))
    device_heavy = EngineEstimate(1, "gradient", (Term("streamed patterns", 10, "x", "host"),
                                                   Term("group step", 45, "lower grouping.size", "device")))
    two = attrs.evolve(est, shared=(), engines=(host_heavy, device_heavy))
    assert two.peak_engine.index == 0 and two.peak_engine_for("device").index == 1
    device, host = pool_checks(two, {"device": 40, "host": 1000, "source": "test"})
    assert (device.need, device.fits, host.need) == (45, False, 70)
    assert "(engine 1: gradient)" in shortfall_message(two, device)


def test_a_resume_is_judged_on_the_engines_it_will_run(tiny, tmp_path, monkeypatch):
    """Stopped when a heavy first engine had finished, the resume needs only the light
    second one: under a budget between the two estimates it was refused (the finished
    engine's estimate), and it runs now."""
    from phaser_core.memory import GiB, estimate_run
    from phaser_core.observer import Observer
    from phaser_core.registry import get_registry
    from phaser_core.runner import RunInterrupted, load_data, resumed_engine
    from phaser_core.statefile import load_state

    class StopAfterTheFirstEngine(Observer):
        def after_engine(self, engine, state, ctx):
            ctx.stop_requested = True

    d = json.loads(tiny.read_text())
    d["engines"].append({"type": "conventional", "niter": 1, "grouping": {"size": 4}, "solver": "epie",
                         "probe_modes": 1, "slices": {"n": 1}})
    path = tiny.parent / "resume.json"
    path.write_text(json.dumps(d))
    plan = load_plan(path)
    out = tmp_path / "run"
    with pytest.raises(RunInterrupted):
        run_plan(plan, out_dir=out, plan_dir=tiny.parent, quiet=True, observers=[StopAfterTheFirstEngine()])
    state = load_state(out / "checkpoint.h5")
    assert (state.iteration.engine_num, state.iteration.engine_iter) == (0, 1)
    assert resumed_engine(plan, state, get_registry()) == 1
    data = load_data(plan, get_registry(), tiny.parent)
    whole = estimate_run(plan, data, state, get_registry())
    resumed = estimate_run(plan, data, state, get_registry(), first_engine=1)
    assert [e.index for e in resumed.engines] == [1] and resumed.peak < whole.peak
    monkeypatch.setenv("PHASER_MEMORY_BUDGET_GIB", str((resumed.peak + whole.peak) / 2 / GiB))
    final = run_plan(plan, out_dir=out, plan_dir=tiny.parent, quiet=True, resume=True)
    assert final.iteration.total_iter == 2 and final.probe.n_modes == 1


@pytest.mark.parametrize("flag", ["--dry-run", "--dry"])
def test_a_dry_run_leaves_ctrl_c_alone(tiny, tmp_path, monkeypatch, capsys, flag):
    """A dry run reaches no run to read an early stop: Ctrl-C during its estimate acts at
    once (a first SIGINT or SIGTERM was swallowed there with "stopping before the first
    iteration"; with the abbreviation argparse accepts, `--dry`, until the rule was taken
    from the parsed arguments, not the raw ones)."""
    import os
    import signal

    import phaser_core.cli as cli

    assert cli_main(["run", str(tiny), "--out", str(tmp_path / "out"), flag]) == 0
    assert "peak:" in capsys.readouterr().out
    estimate = cli._print_memory_estimate

    def pressed(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return estimate(*args, **kwargs)

    monkeypatch.setattr(cli, "_print_memory_estimate", pressed)
    assert cli_main(["run", str(tiny), "--out", str(tmp_path / "out"), flag]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "stopping before the first iteration" not in err


def test_a_stop_the_command_never_reached_a_run_for_ends_it(tiny, tmp_path, monkeypatch, capsys):
    """Ctrl-C while `phaser run` loads a plan that then fails: the stop was recorded and
    promised a checkpoint no run would write; the command now ends as interrupted (130)."""
    import os
    import signal

    import phaser_core.plan as plan_module

    real = plan_module.load_plan

    def pressed_then_bad(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(plan_module, "load_plan", pressed_then_bad)
    assert cli_main(["run", str(tiny), "--out", str(tmp_path / "out"), "--set", "engines[0].niter=ten"]) == 130
    assert "interrupted" in capsys.readouterr().err
