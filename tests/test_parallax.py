"""The bright-field parallax (phaser_std.data.parallax): the defocus, its sign and the
detector's orientation read from the data alone, and the warning a run gives when the plan
contradicts them."""

from __future__ import annotations

from pathlib import Path

import attrs
import numpy as np
import pytest
from recon import make_dataset

from phaser_core.observer import Observer
from phaser_core.plan import load_plan
from phaser_core.runner import run_plan
from phaser_std.data.inspect import load_for_inspect, summary_rows
from phaser_std.data.parallax import ParallaxFit, describe, parallax_fit, parallax_note

DATA = Path(__file__).parent / "data"
SCAN = {"shape": [24, 24], "step_A": 0.4}


@pytest.fixture(scope="module")
def sims(tmp_path_factory):
    """``phaser simulate`` data (the MoS2-like cell, 10⁴ e⁻ a pattern) at several defocus values [Å]."""
    folder = tmp_path_factory.mktemp("parallax")
    return {df: load_for_inspect(make_dataset(folder / f"df{df}.h5", defocus_A=float(df), dose=1e4, scan=SCAN))
            for df in (-200, -50, 0, 50, 120)}


@pytest.mark.parametrize("defocus", [-200, -50, 50, 120])
def test_parallax_reads_the_defocus_and_its_sign(sims, defocus):
    """Measured: −185.2 / −49.3 / +47.0 / +119.8 Å (the largest defocus reads ~7% short: its
    probe fills the 10 Å window)."""
    fit = parallax_fit(sims[defocus])
    assert fit.resolved and fit.orientation == "as recorded"
    assert fit.defocus_A == pytest.approx(defocus, rel=0.1)
    assert fit.coherence > 2 * fit.coherence_opposite


def test_in_focus_nothing_is_resolved(sims):
    """In focus the images do not move: whatever the search finds (the strong object's
    images agree about as well at ±30 Å) is not resolved, and a run is told nothing."""
    fit = parallax_fit(sims[0])
    assert not fit.resolved
    assert describe(fit).startswith("not resolved")
    assert parallax_note(fit, 0.0) is None and parallax_note(fit, -100.0) is None


@pytest.mark.parametrize("change,orientation,sign", [
    (lambda p: np.swapaxes(p, -1, -2), "transpose", 1),
    (lambda p: p[:, ::-1, :], "flip_y", 1),
    (lambda p: p[:, :, ::-1], "flip_y", -1),            # flip_x = −flip_y: the sign changes
    (lambda p: np.rot90(p, 1, axes=(1, 2)), "rotate90", -1),
    (lambda p: p[:, ::-1, ::-1], "as recorded", -1),    # turned by 180°: looks like −Δf
])
def test_parallax_finds_a_turned_or_mirrored_detector(sims, change, orientation, sign):
    data = sims[50]
    fit = parallax_fit(attrs.evolve(data, patterns=np.ascontiguousarray(change(np.asarray(data.patterns)))))
    assert fit.resolved and fit.orientation == orientation
    assert fit.defocus_A == pytest.approx(sign * 50, rel=0.1)


@pytest.mark.parametrize("name,low,high", [
    ("abtem_srtio3.h5", 40, 55),              # measured 45.2 (abTEM's 50 Å)
    ("abtem_srtio3_aberrated.h5", 40, 65),    # 59.5: C12 = 40 Å, C23 and Cs bend the parallax
    ("abtem_srtio3_focal_spread.h5", 40, 60),  # 46.4
    ("abtem_srtio3_tilted.h5", 35, 55),       # 41.9
])
def test_parallax_of_an_independent_simulation(name, low, high):
    """abTEM's SrTiO₃ at 50 Å underfocus (20x20 positions, 10⁵ e⁻): the sign and size of the
    defocus from another simulator's data, with the conventions of docs/conventions.md."""
    fit = parallax_fit(load_for_inspect(DATA / name))
    assert fit.resolved and fit.orientation == "as recorded"
    assert low < fit.defocus_A < high


def _fit(defocus: float, orientation: str = "as recorded") -> ParallaxFit:
    return ParallaxFit(defocus_A=defocus, orientation=orientation, rotation_deg=0.0, coherence=30.0,
                       coherence_unrotated=30.0, coherence_opposite=1.0,
                       coherence_other=10.0, by_orientation={}, n_bins=40, max_shift_A=abs(defocus) * 0.02,
                       step_A=0.4, resolvable_defocus_A=10.0)


def test_parallax_note_rules():
    assert parallax_note(_fit(48.0), 50.0) is None
    assert "wrong sign" in parallax_note(_fit(48.0), -50.0)
    assert "wrong sign" in parallax_note(_fit(-95.0), 100.0)
    assert "set init.probe.defocus_A" in parallax_note(_fit(60.0), 0.0)
    assert "+200 Å" in parallax_note(_fit(60.0), 200.0)          # same sign, 3x off: told
    assert "set init.probe.defocus_A" in parallax_note(_fit(-40.0), 5.0)  # about in focus, it is not
    assert parallax_note(_fit(-15.0), 5.0) is None                # both about in focus
    # a thick object shows the defocus at some depth in it: entrance +50 to exit −150 Å
    assert parallax_note(_fit(-93.0), 50.0, thickness_A=200.0) is None
    assert "wrong sign" in parallax_note(_fit(-93.0), 50.0)       # as one slice: told, thickness named
    assert "thicker" in parallax_note(_fit(-93.0), 50.0)
    assert "wrong sign" in parallax_note(_fit(90.0), -50.0, thickness_A=20.0)
    assert "transposed" in parallax_note(_fit(50.0, "transpose"), 50.0)
    # a two-fold astigmatism as large as the defocus mirrors the parallax: not judged
    assert parallax_note(_fit(50.0, "transpose"), 50.0, astigmatism_A=40.0) is None
    assert parallax_note(_fit(-50.0, "transpose"), 50.0, astigmatism_A=40.0) is None  # nor its sign
    turned = attrs.evolve(_fit(48.0), rotation_deg=12.0, coherence_unrotated=20.0)
    assert "add +12° to init.scan.rotation_deg" in parallax_note(turned, 50.0)
    assert parallax_note(attrs.evolve(turned, coherence_unrotated=29.5), 50.0) is None  # hardly better
    assert parallax_note(attrs.evolve(turned, rotation_deg=3.0), 50.0) is None          # within 5°
    # images that move 0.3 Å at the edge cannot show a 12° turn of a 0.4 Å raster (19° can)
    assert parallax_note(attrs.evolve(turned, max_shift_A=0.3), 50.0) is None
    assert attrs.evolve(turned, max_shift_A=0.3).resolvable_rotation_deg == pytest.approx(19.47, abs=0.01)
    unresolved = attrs.evolve(_fit(48.0), coherence_opposite=20.0)
    assert not unresolved.resolved and parallax_note(unresolved, -50.0) is None


class _Notes(Observer):
    def __init__(self):
        self.texts = []

    def on_note(self, text, ctx):
        self.texts.append(text)


def _run(path: Path, probe: dict, scan: dict | None = None, **raw) -> list[str]:
    notes = _Notes()
    plan = {"file_type": "phaser_plan", "version": 1, "raw_data": {"type": "hdf5", "path": str(path), **raw},
            "init": {"probe": probe, **({"scan": scan} if scan else {})},
            "engines": [{"type": "conventional", "niter": 1}]}
    run_plan(load_plan(plan), quiet=True, observers=[notes])
    return [t for t in notes.texts if t.startswith("warning:")]


def test_a_run_warns_of_a_defocus_of_the_wrong_sign_or_a_transposed_detector():
    data = DATA / "abtem_srtio3.h5"
    assert _run(data, {}) == []                                   # the file's +50 Å: no warning
    wrong = _run(data, {"defocus_A": -50.0})
    assert len(wrong) == 1 and "-50 Å" in wrong[0] and "+45 Å" in wrong[0] and "twin" in wrong[0]
    assert _run(data, {"defocus_A": -50.0, "check_parallax": False}) == []
    turned = _run(data, {}, transpose=True)
    assert len(turned) == 1 and "transposed" in turned[0]


def test_inspect_shows_the_parallax():
    rows = {q: v for q, v, _ in summary_rows(load_for_inspect(DATA / "abtem_srtio3.h5"))}
    assert rows["bright-field parallax"] == "defocus ≈ +45 Å, detector as recorded, scan rotation ≈ +0° ± 7°"


def test_without_a_defocus_the_probe_takes_the_parallaxs(tmp_path):
    """Neither the plan nor the data gives a defocus: the probe takes the parallax's, and the
    run says so (before, 0 Å: on abTEM's +200 Å data LSQML then reached Pearson −0.12 in 30
    iterations, with the parallax's +191 Å 0.988, with the true +200 Å 0.988)."""
    import shutil

    import h5py

    from phaser_core.runner import initial_state, load_data
    from phaser_core.registry import get_registry

    path = tmp_path / "no_defocus.h5"
    shutil.copy(DATA / "abtem_srtio3.h5", path)
    with h5py.File(path, "a") as f:
        del f.attrs["defocus_A"]
    plan = load_plan({"file_type": "phaser_plan", "version": 1, "raw_data": {"type": "hdf5", "path": str(path)},
                      "engines": [{"type": "conventional", "niter": 1}]})
    reg = get_registry()
    notes = []
    state = initial_state(plan, load_data(plan, reg, tmp_path), reg, tmp_path, notes=notes)
    assert len(notes) == 1 and notes[0].startswith("the probe's defocus is +45.2 Å, from the data's bright-field")
    # the probe is the one of that defocus: its phase curvature against the +50 Å probe's
    from phaser_std.physics.probe import make_probe

    data = load_data(plan, reg, tmp_path)
    probe = np.asarray(state.probe.data)[0]
    overlap = {df: abs(np.vdot(make_probe(data.pattern_shape, data.real_space_sampling_A(), data.wavelength_A(),
                                          data.convergence_angle_mrad, defocus_A=df), probe)) for df in (0.0, 45.2)}
    assert overlap[45.2] > 1.5 * overlap[0.0]
    # the plan's defocus wins (no note but the check's: none here)
    notes.clear()
    plan = load_plan({"file_type": "phaser_plan", "version": 1, "raw_data": {"type": "hdf5", "path": str(path)},
                      "init": {"probe": {"defocus_A": 50.0}}, "engines": [{"type": "conventional", "niter": 1}]})
    initial_state(plan, load_data(plan, reg, tmp_path), reg, tmp_path, notes=notes)
    assert notes == []


@pytest.mark.parametrize("rotation", [12.0, -20.0, 35.0])
def test_parallax_finds_a_scan_rotation(tmp_path, rotation):
    """Data simulated with a rotated raster, read as the plain raster (its positions and
    recorded rotation dropped): the rotation that lines the images up is the raster's
    (measured 11.0 / −20.3 / 35.1°), and the note says to add it. With the positions, or
    with only the file's `scan_rotation_deg` (the raster the run builds, and the one
    `phaser inspect` judges), the data are consistent (±1.5°)."""
    path = make_dataset(tmp_path / "rot.h5", defocus_A=80.0, dose=1e4, scan={**SCAN, "rotation_deg": rotation})
    data = load_for_inspect(path)
    extra = {k: v for k, v in data.extra.items() if k != "scan_rotation_deg"}
    plain = parallax_fit(attrs.evolve(data, scan_positions_A=None, extra=extra))
    assert plain.resolved and plain.rotation_deg == pytest.approx(rotation, abs=2.0)
    note = parallax_note(plain, 80.0)
    assert float(note.split("add ")[1].split("°")[0]) == pytest.approx(rotation, abs=2.0)
    for consistent in (data, attrs.evolve(data, scan_positions_A=None)):
        fit = parallax_fit(consistent)
        assert abs(fit.rotation_deg) < 1.5 and parallax_note(fit, 80.0) is None


@pytest.mark.parametrize("seed", [1, 2])
def test_a_jittered_scan_near_focus_is_not_called_turned(tmp_path, seed):
    """examples/sim_multislice.yaml on a 12x12 raster: +30 Å, 0.2 Å of jitter, no rotation.
    The parallax lines the images up best turned by +9° (seed 1) and −6° (seed 2), which
    warned "add +9° to init.scan.rotation_deg"; images moving ≤ 1 Å at the disc's edge
    resolve no turn under 14-17° there."""
    from ruamel.yaml import YAML

    from phaser_std.data.simulate import simulate, spec_from_dict, write_hdf5

    spec = YAML(typ="safe").load(Path(__file__).parents[1] / "examples" / "sim_multislice.yaml")
    spec["scan"]["shape"], spec["seed"] = [12, 12], seed
    write_hdf5(simulate(spec_from_dict(spec)), tmp_path / "jitter.h5")
    fit = parallax_fit(load_for_inspect(tmp_path / "jitter.h5"))
    assert fit.resolved and 5.0 <= abs(fit.rotation_deg) < fit.resolvable_rotation_deg
    assert parallax_note(fit, 30.0, thickness_A=75.0) is None


def test_a_small_turn_is_told_where_the_window_resolves_it(tmp_path):
    """8° at +100 Å with 1 Å steps on 24x24 positions (recorded positions dropped): the
    images move 1.7 Å at the outermost bin, so a quarter step is 8.6° of turn, but 576
    positions average the fit's errors and it reads 7.8°: told (the unscaled rule hid it)."""
    path = make_dataset(tmp_path / "rot8.h5", defocus_A=100.0, dose=1e4, scan={"shape": [24, 24], "step_A": 1.0,
                                                                              "rotation_deg": 8.0})
    data = load_for_inspect(path)
    extra = {k: v for k, v in data.extra.items() if k != "scan_rotation_deg"}
    fit = parallax_fit(attrs.evolve(data, scan_positions_A=None, extra=extra))
    assert fit.n_positions == 576 and fit.resolvable_rotation_deg < 5.0 < fit.rotation_deg
    assert "to init.scan.rotation_deg" in parallax_note(fit, 100.0)


def test_a_run_judges_the_scan_it_will_use(tmp_path):
    """The check fits the run's own scan positions (``init.scan.rotation_deg`` applied): a
    raster rotated by +20° and stored without its positions or its recorded rotation warns
    with no rotation set, is quiet with the right one, and asks for +40° more with the
    wrong sign."""
    import h5py

    path = make_dataset(tmp_path / "rot20.h5", defocus_A=80.0, dose=1e4, scan={**SCAN, "rotation_deg": 20.0})
    with h5py.File(path, "a") as f:
        del f["scan_positions"]

    def added(rotation: float) -> float | None:
        notes = _run(path, {}, scan={"rotation_deg": rotation})
        assert len(notes) <= 1
        return float(notes[0].split("add ")[1].split("°")[0]) if notes else None

    # the file still records its rotation (scan_rotation_deg): the raster takes it, and
    # the plan's rotation adds to it
    assert added(0.0) is None
    assert added(-20.0) == pytest.approx(20.0, abs=2.0)
    with h5py.File(path, "a") as f:
        del f.attrs["scan_rotation_deg"]
    assert added(0.0) == pytest.approx(20.0, abs=2.0)
    assert added(20.0) is None
    assert added(-20.0) == pytest.approx(40.0, abs=3.0)


@pytest.mark.parametrize("turned,fix", [
    ({"rotate90": 1}, {"rotate90": 3}),
    ({"rotate90": 3}, {"rotate90": 1}),
    ({"transpose": True}, {"transpose": True}),
    ({"transpose": True, "rotate90": 2}, {"transpose": True, "rotate90": 2}),
    ({"flip_y": True}, {"flip_y": True}),
    ({"flip_x": True}, {"flip_x": True}),
])
def test_the_warning_names_the_loader_setting_that_turns_the_detector_back(sims, turned, fix):
    """Data turned by a loader setting: with the probe's defocus (+50 Å) trusted for its
    sign the note names the one setting that undoes it, and that setting, applied after,
    gives the data back as recorded with the right sign."""
    import types

    from phaser_std.data.loaders._common import orient_patterns

    def cfg(keys: dict):
        return types.SimpleNamespace(**{"transpose": False, "flip_y": False, "flip_x": False, "rotate90": 0, **keys})

    data = sims[50]
    bad = attrs.evolve(data, patterns=np.ascontiguousarray(orient_patterns(np.asarray(data.patterns), cfg(turned))))
    note = parallax_note(parallax_fit(bad), 50.0)
    named = {"rotate90: 1": {"rotate90": 1}, "rotate90: 3": {"rotate90": 3}, "flip_y: true": {"flip_y": True},
             "flip_x: true": {"flip_x": True}, "transpose: true with rotate90: 2": {"transpose": True, "rotate90": 2},
             "transpose: true": {"transpose": True}}
    said = next(v for k, v in named.items() if f"with {k} (" in note)
    assert said == fix
    back = parallax_fit(attrs.evolve(bad, patterns=np.ascontiguousarray(orient_patterns(np.asarray(bad.patterns),
                                                                                        cfg(fix)))))
    assert back.resolved and back.orientation == "as recorded" and back.defocus_A > 0


def test_a_correction_is_named_as_the_loaders_whole_setting(tmp_path):
    """A loader that already applies detector keys: the note names the whole setting that
    gives the data back, not one more key to stack on it. Data recorded as they should be,
    read with ``transpose: true``, are told to drop it; data transposed in the file, read
    with ``flip_y: true``, are told ``transpose: true`` in its place, and with that the run
    has nothing to warn of."""
    import shutil

    import h5py

    data = DATA / "abtem_srtio3.h5"
    undo = _run(data, {}, transpose=True)
    assert len(undo) == 1 and "corrects it, without its transpose: true (" in undo[0], undo
    quarter = _run(data, {}, rotate90=1)
    assert len(quarter) == 1 and "without its rotate90: 1 (" in quarter[0], quarter

    path = tmp_path / "transposed.h5"
    shutil.copy(data, path)
    with h5py.File(path, "a") as f:
        p = f["patterns"][()]
        del f["patterns"]
        f["patterns"] = np.ascontiguousarray(np.swapaxes(p, -1, -2))
    told = _run(path, {}, flip_y=True)
    assert len(told) == 1 and "with transpose: true in place of its flip_y: true" in told[0], told
    assert _run(path, {}, transpose=True) == []
    # a file's own attribute of the record's name (the hdf5 loader keeps unknown attributes
    # in extra) is not taken for the loader's keys
    with h5py.File(path, "a") as f:
        f.attrs["phaser_detector_keys"] = "camera turned by hand"
    plain = _run(path, {})
    assert len(plain) == 1 and "corrects it, with transpose: true (" in plain[0], plain


def test_a_turned_detector_is_told_even_without_a_defocus(tmp_path):
    """No defocus anywhere and a transposed loader: the probe stays at 0 Å (the parallax's
    sign is not the orientation's to decide) and the run is told both candidate settings."""
    import shutil

    import h5py

    path = tmp_path / "no_defocus.h5"
    shutil.copy(DATA / "abtem_srtio3.h5", path)
    with h5py.File(path, "a") as f:
        del f.attrs["defocus_A"]
    notes = _run(path, {}, transpose=True)
    assert len(notes) == 1 and "transposed" in notes[0] and "if the defocus is positive" in notes[0]


def test_a_masked_nan_pixel_or_odd_data_do_not_stop_anything(sims, monkeypatch):
    data = sims[50]
    p = np.asarray(data.patterns).astype(np.float32)
    qy, qx = data.pattern_shape
    p[:, qy // 2, qx // 2] = np.nan                            # in the bright-field disc, masked
    mask = np.ones((qy, qx), bool)
    mask[qy // 2, qx // 2] = False
    fit = parallax_fit(attrs.evolve(data, patterns=p, mask=mask))
    assert fit.resolved and fit.defocus_A == pytest.approx(50, rel=0.1)
    assert parallax_fit(attrs.evolve(data, reciprocal_sampling_invA=(0.0, 0.0))) is None
    same = np.zeros((data.n_patterns, 2))                      # positions that span nothing
    assert parallax_fit(data, positions=same) is None
    # whatever the fit raises, a run goes on without the check
    import phaser_std.data.parallax as px

    def broken(*args, **kwargs):
        raise RuntimeError("unforeseen")

    monkeypatch.setattr(px, "parallax_fit", broken)
    assert _run(DATA / "abtem_srtio3.h5", {"defocus_A": -50.0}) == []
    rows = {q: v for q, v, _ in summary_rows(load_for_inspect(DATA / "abtem_srtio3.h5"))}
    assert rows["bright-field parallax"].startswith("not measured (RuntimeError")


def test_a_disc_off_the_zero_angle_pixel_is_told(tmp_path):
    """abTEM's patterns moved by 2 px along x: the run says where the disc is and how to
    centre it (LSQML 30 iterations scored Pearson 0.788 so, 0.983 with center_diffraction,
    0.979-0.985 on the original), inspect shows the offset; centred data are not told."""
    import shutil

    import h5py

    from phaser_std.data.parallax import centre_note
    from phaser_std.data.preprocess import pacbed

    path = tmp_path / "shifted.h5"
    shutil.copy(DATA / "abtem_srtio3.h5", path)
    with h5py.File(path, "a") as f:
        for key in ("patterns", "patterns_noiseless"):
            if key in f:
                f[key][...] = np.roll(f[key][()], 2, axis=-1)
    notes = _run(path, {"defocus_A": 50.0, "check_parallax": False})
    assert len(notes) == 1 and "(+0.00, +2.00) px off the zero-angle pixel" in notes[0]
    assert "center_diffraction" in notes[0]
    assert _run(path, {"defocus_A": 50.0, "check_centre": False, "check_parallax": False}) == []
    rows = {q: v for q, v, _ in summary_rows(load_for_inspect(path))}
    assert rows["bright-field disc centre"] == "(+0.00, +2.00) px"
    centred = load_for_inspect(DATA / "abtem_srtio3.h5")
    assert centre_note(pacbed(centred)) is None
    mean = pacbed(centred)
    assert centre_note(np.roll(mean, 1, axis=0)) is not None and centre_note(mean, tolerance_px=0.01) is None


def test_centred_again_the_run_is_quiet(tmp_path):
    import shutil

    import h5py

    path = tmp_path / "shifted.h5"
    shutil.copy(DATA / "abtem_srtio3.h5", path)
    with h5py.File(path, "a") as f:
        f["patterns"][...] = np.roll(f["patterns"][()], 2, axis=-1)
    notes = _Notes()
    plan = {"file_type": "phaser_plan", "version": 1, "raw_data": {"type": "hdf5", "path": str(path)},
            "post_load": [{"type": "center_diffraction"}], "engines": [{"type": "conventional", "niter": 1}]}
    run_plan(load_plan(plan), quiet=True, observers=[notes])
    assert [t for t in notes.texts if t.startswith("warning:")] == []


def test_a_dry_run_tells_what_a_run_would(tmp_path, capsys):
    """``phaser run --dry-run`` (and ``plan-memory``) build the initial state too: the
    initialisers' warnings come with the memory estimate, before any long run."""
    import json

    from phaser_core.cli import main as cli_main

    plan = tmp_path / "plan.yaml"
    plan.write_text(f"""file_type: phaser_plan
version: 1
raw_data: {{type: hdf5, path: {DATA / 'abtem_srtio3.h5'}}}
init:
  probe: {{defocus_A: -50}}
engines:
  - {{type: conventional, niter: 1}}
""")
    assert cli_main(["run", str(plan), "--dry-run"]) == 0
    captured = capsys.readouterr()
    assert "peak:" in captured.out and "warning: the probe's defocus is -50 Å" in captured.err
    assert cli_main(["plan-memory", str(plan), "--json"]) == 0
    assert "wrong sign" in json.loads(capsys.readouterr().out)["notes"][0]


def test_no_defocus_anywhere_and_none_in_the_data_is_said(tmp_path):
    import h5py

    from phaser_core.registry import get_registry
    from phaser_core.runner import initial_state, load_data

    path = make_dataset(tmp_path / "focus.h5", defocus_A=0.0, dose=1e4, scan=SCAN)
    with h5py.File(path, "a") as f:
        del f.attrs["defocus_A"]
    plan = load_plan({"file_type": "phaser_plan", "version": 1, "raw_data": {"type": "hdf5", "path": str(path)},
                      "engines": [{"type": "conventional", "niter": 1}]})
    reg, notes = get_registry(), []
    initial_state(plan, load_data(plan, reg, tmp_path), reg, tmp_path, notes=notes)
    assert notes == ["the probe's defocus is 0 Å: neither the plan nor the data gave one, and the data's "
                     "bright-field parallax shows none (near focus, too noisy, or not a raster scan); set "
                     "init.probe.defocus_A if it is not"]
