"""The ``phaser`` command line: validate, plugins, describe, run (on a registry of fakes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import attrs
import pytest

from phaser_core import cli
from phaser_core.plan import load_plan
from phaser_core.registry import set_registry

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))
from plan_fakes import MINIMAL_PLAN, make_registry  # noqa: E402

ROOT = TESTS.parent
INVALID = ROOT / "examples" / "invalid_plan.yaml"


def run_cli_subprocess(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """``phaser ARGS`` in a fresh interpreter whose registry holds the fakes."""
    env = dict(os.environ, COLUMNS="200")
    return subprocess.run([sys.executable, str(TESTS / "plan_fakes.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def fake_registry():
    registry = make_registry()
    set_registry(registry)
    yield registry
    set_registry(None)


# -- validate ---------------------------------------------------------------------------


def test_validate_invalid_example_four_errors_no_traceback():
    """Done-when: misspelled solver, string niter, unknown key -> three located errors, exit 1;
    and its missing data file, named although the plan's structure is invalid."""
    proc = run_cli_subprocess("validate", str(INVALID))
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 4, proc.stdout
    name = str(INVALID)
    assert lines[0] == (f"{name}:10:13: engines[0].solver.type: unknown solver 'epei'; did you mean 'epie'? "
                        "available: epie, lsqml (phaser-ptycho 0.1.0)")
    assert lines[1] == f"{name}:11:12: engines[0].niter: expected an integer, got 'ten'"
    assert lines[2].startswith(f"{name}:13:5: engines[0]: unknown key 'probe_modess'")
    assert lines[3].startswith(f"{name}:6:30: raw_data.path: no such file: no_such_data.h5")
    assert "4 errors" in proc.stderr


def test_validate_json(fake_registry, capsys):
    assert cli.main(["validate", str(INVALID), "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["valid"] is False and len(out["errors"]) == 4  # three plan errors and the missing data file
    first = out["errors"][0]
    assert (first["line"], first["col"], first["path"]) == (10, 13, "engines[0].solver.type")
    assert "did you mean 'epie'?" in first["message"]


def test_validate_valid_plan(fake_registry, tmp_path, capsys):
    path = tmp_path / "plan.yaml"
    path.write_text(MINIMAL_PLAN)
    assert cli.main(["validate", str(path)]) == 1  # validate looks for the data file
    assert "plan.yaml:3:" in capsys.readouterr().out
    (tmp_path / "data.h5").touch()
    assert cli.main(["validate", str(path)]) == 0
    assert "valid" in capsys.readouterr().out
    assert cli.main(["validate", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"valid": True, "file": str(path), "errors": []}
    assert cli.main(["validate", str(path), "--set", "engines[0].niter=x"]) == 1
    assert "engines[0].niter: expected an integer, got 'x'" in capsys.readouterr().out


def test_validate_names_the_missing_input_files(tmp_path, capsys):
    path = tmp_path / "plan.yaml"
    path.write_text(MINIMAL_PLAN + "init:\n  state: old/final.h5\n")
    assert cli.main(["validate", str(path)]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert f"plan.yaml:3:30: raw_data.path: no such file: data.h5 (looked for {tmp_path / 'data.h5'}" in out
    assert "plan.yaml:8:10: init.state: no such file: old/final.h5" in out


def test_validate_judges_the_files_the_overrides_name(tmp_path, capsys):
    """With another error in the plan, the missing files are read from the document with
    the `--set` overrides applied: a `raw_data` replaced as a whole took the file's path
    (reported missing though the run would read another)."""
    path = tmp_path / "plan.yaml"
    path.write_text(MINIMAL_PLAN)  # raw_data.path data.h5 does not exist
    (tmp_path / "real.h5").touch()
    bad = ["--set", "engines[0].niter=x"]
    assert cli.main(["validate", str(path), *bad, "--set", "raw_data={type: hdf5, path: real.h5}"]) == 1
    out = capsys.readouterr().out
    assert "engines[0].niter" in out and "no such file" not in out
    assert cli.main(["validate", str(path), *bad, "--set", "raw_data.path=gone.h5"]) == 1
    assert "no such file: gone.h5" in capsys.readouterr().out


def test_validate_no_local(fake_registry, tmp_path, capsys):
    path = tmp_path / "plan.yaml"
    path.write_text(MINIMAL_PLAN + "    solver: {type: 'os:getcwd'}\n")
    assert cli.main(["validate", str(path), "--no-local"]) == 1
    assert "not allowed" in capsys.readouterr().out


@pytest.mark.parametrize("content", [None, "file_type: phaser_plan\nengines: [1\n", "\tfoo: : :\n", "[1, 2]\n", ""])
def test_validate_never_tracebacks(tmp_path, content):
    path = tmp_path / "plan.yaml"
    if content is not None:
        path.write_text(content)
    proc = run_cli_subprocess("validate", str(path))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stdout.startswith(str(path)), proc.stdout


# -- plugins and describe ---------------------------------------------------------------


def test_plugins_json_and_table(fake_registry, capsys):
    assert cli.main(["plugins", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    epie = next(r for r in rows if r["name"] == "epie")
    assert epie["kind"] == "solver" and epie["owner"] == "phaser-ptycho 0.1.0" and epie["version"] == "0.1.0"
    assert {r["kind"] for r in rows} >= {"engine", "solver", "noise_model", "loader", "backend"}
    assert cli.main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "conventional" in out and "lsqml" in out


@pytest.mark.parametrize("kind", ["solver", "solvers", "Solver"])
def test_describe_fields(fake_registry, capsys, kind):
    assert cli.main(["describe", kind, "epie", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "solver" and info["owner"] == "phaser-ptycho 0.1.0"
    field = {f["name"]: f for f in info["fields"]}["beta_object"]
    assert field == {"name": "beta_object", "type": "float | schedule spec", "default": 1.0, "unit": None,
                     "doc": "object step size"}


def test_describe_units_plural_kinds_and_table(fake_registry, capsys):
    assert cli.main(["describe", "noise_models", "amplitude", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["fields"][0]["default"] == 0.01
    assert cli.main(["describe", "initializer", "focused", "--json"]) == 0
    fields = {f["name"]: f for f in json.loads(capsys.readouterr().out)["fields"]}
    assert fields["conv_angle_mrad"]["unit"] == "mrad" and fields["defocus_A"]["unit"] == "Å"
    assert cli.main(["describe", "engine", "conventional", "--json"]) == 0
    fields = {f["name"]: f for f in json.loads(capsys.readouterr().out)["fields"]}
    assert fields["niter"]["type"] == "int" and fields["niter"]["default"] == 100
    assert fields["solver"]["default"] == "{type: lsqml}" and fields["update_probe"]["default"] == "true"
    assert fields["grouping"]["default"] == "{size: 64, kind: sparse}"
    assert cli.main(["describe", "engines", "conventional"]) == 0
    assert "niter" in capsys.readouterr().out


@pytest.mark.parametrize("name, place", [("obj_l2", "role: cost (in a plan: the gradient engine's regularizers)"),
                                         ("limit_probe_support", "role: constraint (in a plan: an engine's "
                                                                 "group_constraints or iter_constraints)")])
def test_describe_says_where_a_plan_puts_a_regularizer(capsys, name, place):
    assert cli.main(["describe", "regularizer", name]) == 0
    assert place in " ".join(capsys.readouterr().out.split())


def test_describe_unknown(fake_registry, capsys):
    assert cli.main(["describe", "solver", "epei"]) == 1
    err = capsys.readouterr().err
    assert "did you mean 'epie'?" in err and "Traceback" not in err
    assert cli.main(["describe", "solvr", "epie"]) == 1
    assert "did you mean 'solver'?" in capsys.readouterr().err


# -- run --------------------------------------------------------------------------------


@pytest.fixture
def fake_runner(monkeypatch):
    calls = []
    module = types.ModuleType("phaser_core.runner")

    def run_plan(plan, **kwargs):
        calls.append((plan, kwargs))
        return None

    module.run_plan = run_plan
    module.check_resumable = lambda plan, out_dir, registry: None  # the fake run writes no state
    module.RunInterrupted = type("RunInterrupted", (Exception,), {})
    monkeypatch.setitem(sys.modules, "phaser_core.runner", module)
    return calls


def test_run_writes_resolved_plan_and_calls_runner(fake_registry, fake_runner, tmp_path, capsys):
    plan_path = tmp_path / "in" / "plan.yaml"
    plan_path.parent.mkdir()
    plan_path.write_text(MINIMAL_PLAN)
    out = tmp_path / "out"
    rc = cli.main(["run", str(plan_path), "--out", str(out), "--set", "engines[0].niter=5", "--set", "seed=3",
                   "--quiet"])
    assert rc == 0
    (plan, kwargs), = fake_runner
    assert plan.engines[0].config.niter == 5 and plan.seed == 3
    assert kwargs["out_dir"] == out and kwargs["resume"] is False and kwargs["quiet"] is True
    assert kwargs["plan_dir"] == plan_path.parent.resolve() and kwargs["registry"] is fake_registry
    written = load_plan(out / "plan.yaml", registry=fake_registry)
    assert written == plan
    assert plan.backend == "numpy"  # no `backend`: auto, which a registry without it runs on numpy
    # resume: reads DIR/plan.yaml, keeps the original plan directory, --backend overrides
    rc = cli.main(["run", "--resume", str(out), "--backend", "other", "--quiet"])
    assert rc == 0
    plan2, kwargs2 = fake_runner[1]
    assert plan.backend != "other" and plan2.backend == "other"
    assert attrs.evolve(plan2, backend=plan.backend) == plan
    assert kwargs2["resume"] is True and kwargs2["out_dir"] == out
    assert kwargs2["plan_dir"] == plan_path.parent.resolve()


def test_run_records_the_backend_auto_picks(fake_runner, tmp_path, capsys):
    """A plan without `backend` (auto) runs on the fastest installed backend, and the run's
    plan.yaml names it, so a resume on this machine runs the same."""
    from phaser_core.backend import build_backend
    from phaser_core.registry import get_registry

    set_registry(None)
    want = build_backend("auto", "float32", get_registry()).name
    plan_path = tmp_path / "plan.yaml"
    plan_path.write_text(MINIMAL_PLAN)
    assert cli.main(["run", str(plan_path), "--out", str(tmp_path / "out")]) == 0
    (plan, _), = fake_runner
    assert plan.backend == want
    assert load_plan(tmp_path / "out" / "plan.yaml").backend == want
    assert f"backend auto: {want}" in capsys.readouterr().err


def test_auto_on_numpy_without_jax_says_what_to_install(monkeypatch):
    """`backend: auto` that found only numpy because jax is missing names the extra that
    makes a CPU run 3-6x faster; nothing is added when jax is there or another backend
    was picked."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "jax" else real(name, *a))
    assert 'pip install "phaser-ptycho[jax]"' in cli._faster_backend_hint("numpy")
    assert cli._faster_backend_hint("cupy") == ""
    monkeypatch.setattr(importlib.util, "find_spec", real)
    if real("jax") is not None:
        assert cli._faster_backend_hint("numpy") == ""


def test_run_invalid_plan_no_traceback(fake_registry, fake_runner, tmp_path, capsys):
    assert cli.main(["run", str(INVALID), "--out", str(tmp_path / "o")]) == 1
    captured = capsys.readouterr()
    assert "unknown solver 'epei'" in captured.out and "Traceback" not in captured.err
    assert fake_runner == [] and not (tmp_path / "o").exists()
    assert cli.main(["run", str(INVALID), "--backend", "nmupy", "--out", str(tmp_path / "o")]) == 1
    assert "backend: unknown backend 'nmupy'" in capsys.readouterr().out
    assert cli.main(["run", "--resume", str(tmp_path / "missing")]) == 1
    assert "cannot resume" in capsys.readouterr().err


def test_validate_invalid_example_with_the_real_registry():
    """The done-when check against the installed plugins (skips until the real engine exists)."""
    from phaser_core.registry import get_registry

    real = get_registry()
    if ("engine", "conventional") not in real or ("solver", "epie") not in real:
        pytest.skip("the real 'conventional' engine / 'epie' solver are not registered yet")
    env = dict(os.environ, COLUMNS="200")
    proc = subprocess.run([sys.executable, "-m", "phaser_core.cli", "validate", str(INVALID)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 4, proc.stdout
    assert lines[0].startswith(f"{INVALID}:10:13: engines[0].solver.type: unknown solver 'epei'; "
                               "did you mean 'epie'? available: ")
    assert "epie" in lines[0].split("available:")[1] and "lsqml" in lines[0].split("available:")[1]
    assert lines[1] == f"{INVALID}:11:12: engines[0].niter: expected an integer, got 'ten'"
    assert lines[2].startswith(f"{INVALID}:13:5: engines[0]: unknown key 'probe_modess'")


def test_version_names_the_distribution(capsys):
    import importlib.metadata

    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"phaser-ptycho {importlib.metadata.version('phaser-ptycho')} ")


def test_a_local_components_failure_is_named(tmp_path, capsys):
    """A run that fails in a plan's local component (or a plugin's code) prints Python's
    traceback and then one line naming who raised, and its log says the same; exit 1."""
    from recon import make_dataset

    data = make_dataset(tmp_path / "d.h5", scan={"shape": [4, 4], "step_A": 0.6}, detector_shape=[32, 32])
    (tmp_path / "labfail.py").write_text(
        "class Boom:\n"
        "    def __init__(self, config):\n        pass\n\n"
        "    def apply(self, bk, probe, obj, info):\n"
        "        raise ValueError('lab constraint bug')\n")
    plan = tmp_path / "plan.yaml"
    plan.write_text("file_type: phaser_plan\nversion: 1\nbackend: numpy\n"
                    f"raw_data: {{type: hdf5, path: {data}}}\n"
                    "engines:\n  - type: conventional\n    niter: 2\n"
                    "    iter_constraints: [{type: 'labfail:Boom'}]\n")
    out = tmp_path / "run"
    assert cli.main(["run", str(plan), "--out", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "lab constraint bug" in err
    assert "raised in the plan's local component module 'labfail' at " in err and "labfail.py:6 in apply" in err
    log = (out / "log.txt").read_text()
    assert "run failed: ValueError: lab constraint bug (raised in the plan's local component module 'labfail'" in log


def test_a_local_constraint_branching_on_a_traced_value_is_told_the_rule(tmp_path, capsys):
    """On jax, a component that branches on an array's value fails inside the compiled
    step with jax's TracerBoolConversionError: the line naming it also says the rule."""
    from recon import make_dataset

    pytest.importorskip("jax")
    data = make_dataset(tmp_path / "d.h5", scan={"shape": [4, 4], "step_A": 0.6}, detector_shape=[32, 32])
    (tmp_path / "labbranch.py").write_text(
        "class Branchy:\n"
        "    def __init__(self, config):\n        pass\n\n"
        "    def apply(self, bk, probe, obj, info):\n"
        "        if bk.xp.max(bk.xp.abs(obj)) > 1.0:\n            obj = obj / 2\n"
        "        return probe, obj\n")
    plan = tmp_path / "plan.yaml"
    plan.write_text("file_type: phaser_plan\nversion: 1\nbackend: jax\n"
                    f"raw_data: {{type: hdf5, path: {data}}}\n"
                    "engines:\n  - type: conventional\n    niter: 1\n"
                    "    iter_constraints: [{type: 'labbranch:Branchy'}]\n")
    assert cli.main(["run", str(plan), "--out", str(tmp_path / "run"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "raised in the plan's local component module 'labbranch'" in err
    assert "must be pure array code (docs/hooks.md)" in err
