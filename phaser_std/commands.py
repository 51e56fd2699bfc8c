"""Extra CLI sub-commands of the bundled plugin: ``phaser simulate``, ``phaser score``,
``phaser inspect`` and ``phaser import-plan``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _cmd_simulate(args: argparse.Namespace) -> int:
    from phaser_core.cli import console
    from phaser_std.data.inspect import _fmt  # one number when square, else the (y, x) pair
    from phaser_std.data.simulate import simulate_to_file

    sim = simulate_to_file(args.spec, args.out, seed=args.seed)
    n = sim.patterns.shape[0] * sim.patterns.shape[1]
    console().print(f"wrote {args.out}: {n} patterns of {sim.patterns.shape[-2]}x{sim.patterns.shape[-1]}, "
                    f"{sim.phases.shape[0]} slice(s), {sim.probe.shape[0]} probe mode(s), "
                    f"pixel {_fmt(tuple(float(v) for v in sim.sampling_A), 'Å')}", highlight=False)
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from phaser_core.cli import console
    from phaser_std.data.inspect import load_for_inspect, print_summary, write_png

    data = load_for_inspect(args.data, key=args.key, overrides=args.set or ())
    out = console()
    print_summary(data, out)
    if args.png:
        write_png(data, args.png)
        out.print(f"wrote {args.png}", highlight=False)
    return 0


#: the order in which the keys of a converted plan are written (others after them)
_PLAN_KEY_ORDER = ("file_type", "version", "name", "backend", "dtype", "seed", "raw_data", "post_load", "init",
                   "slices", "engines", "observers", "output")


def _ordered(obj):
    """``obj`` with ``type`` first in every mapping (block style; lists of scalars on one line)."""
    if isinstance(obj, dict):
        keys = list(obj)
        if "type" in keys:
            keys.remove("type")
            keys.insert(0, "type")
        return {k: _ordered(obj[k]) for k in keys}
    if isinstance(obj, (list, tuple)):
        from ruamel.yaml.comments import CommentedSeq

        seq = CommentedSeq(_ordered(v) for v in obj)
        if obj and all(isinstance(v, (int, float, str, bool)) for v in obj):
            seq.fa.set_flow_style()  # short lists of numbers or names on one line: [8, -8, 8, -8]
        return seq
    return obj


def _cmd_import_plan(args: argparse.Namespace) -> int:
    import copy
    import io
    import sys

    from ruamel.yaml import YAML

    from phaser_core.errors import PlanError
    from phaser_core.plan import load_plan, missing_input_files, plan_yaml
    from phaser_std.plan_import import import_phaserem_plan, rebase_paths

    src = Path(args.plan)
    try:
        text = src.read_text()
    except OSError as exc:
        print(f"phaser import-plan: cannot read {src}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    yaml = YAML(typ="safe")
    try:
        docs = [d for d in yaml.load_all(text) if d is not None]
    except Exception as exc:  # noqa: BLE001 - a YAML syntax error is reported, not raised
        print(f"phaser import-plan: {src} is not valid YAML: {exc}", file=sys.stderr)
        return 1
    if len(docs) != 1 or not isinstance(docs[0], dict):
        print(f"phaser import-plan: {src} must hold exactly one plan (a mapping), found {len(docs)} document(s)",
              file=sys.stderr)
        return 1
    plan, notes = import_phaserem_plan(docs[0])
    if args.out:
        notes += rebase_paths(plan, str(src.resolve().parent), str(Path(args.out).resolve().parent))
    top = {k: plan[k] for k in _PLAN_KEY_ORDER if k in plan}
    top.update({k: v for k, v in plan.items() if k not in top})
    out_yaml = plan_yaml()
    buf = io.StringIO()
    buf.write(f"# converted from the phaserEM plan {src.name} by `phaser import-plan`; see the notes it printed\n")
    out_yaml.dump(_ordered(top), buf)
    if args.out:
        try:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(buf.getvalue())
        except OSError as exc:
            print(f"phaser import-plan: cannot write {args.out}: {exc.strerror or exc}", file=sys.stderr)
            return 1
    else:
        sys.stdout.write(buf.getvalue())
        sys.stdout.flush()
    problems: list[str] = []
    try:
        loaded = load_plan(copy.deepcopy(plan))
        # the files it reads, from where its relative paths start (as `phaser validate`)
        new_file = Path(args.out) if args.out else src
        missing = missing_input_files(loaded, new_file, new_file.resolve().parent)
        if missing:
            raise PlanError(missing, source=str(new_file))
    except PlanError as exc:
        problems = [f"does not validate: {e.path_str + ': ' if e.path_str else ''}{e.message}" for e in exc.errors]
    for n in notes + problems:
        print(f"note: {n}", file=sys.stderr)
    where = args.out or "stdout"
    if problems:
        print(f"phaser import-plan: wrote {where}; {len(problems)} validation problem(s), fix them before "
              "`phaser run`", file=sys.stderr)
        return 1
    print(f"phaser import-plan: wrote {where}; {len(notes)} note(s); the plan validates", file=sys.stderr)
    return 0


def _score_inputs(result: Path, truth: str | None) -> tuple[Path, Path]:
    """The state file to score (a run folder's final.h5, else its checkpoint.h5) and the
    data file holding the ground truth (``truth``, else the run's hdf5 raw data)."""
    from phaser_core.errors import DataError
    from phaser_core.files import CHECKPOINT_NAME, FINAL_NAME, read_plan_dir

    if not result.exists():
        raise DataError(f"{result} does not exist")
    state = result
    if result.is_dir():
        found = [result / n for n in (FINAL_NAME, CHECKPOINT_NAME) if (result / n).is_file()]
        if not found:
            raise DataError(f"{result} holds neither {FINAL_NAME} nor {CHECKPOINT_NAME}: give a run folder or a "
                            "state file")
        state = found[0]
    if truth is not None:
        return state, Path(truth)
    plan_file = result / "plan.yaml" if result.is_dir() else None
    if plan_file is not None and plan_file.is_file():
        from phaser_core.plan import load_plan

        raw = load_plan(plan_file).raw_data
        path = getattr(raw.config, "path", None)
        if raw.type == "hdf5" and path:
            base = read_plan_dir(plan_file) or result
            data = Path(path).expanduser()
            return state, data if data.is_absolute() else base / data
    raise DataError(f"{result}: give the data file holding the ground truth with --truth DATA.h5")


def _cmd_score(args: argparse.Namespace) -> int:
    import h5py
    from rich.markup import escape
    from rich.table import Table

    from phaser_core.cli import console
    from phaser_core.errors import DataError
    from phaser_core.statefile import load_state
    from phaser_std.analysis import score_state
    from phaser_std.data.loaders.hdf5 import read_ground_truth

    state_file, data_file = _score_inputs(Path(args.result), args.truth)
    state = load_state(state_file)
    try:
        with h5py.File(data_file, "r") as f:
            if "ground_truth" not in f:
                raise DataError(f"{data_file} holds no /ground_truth (a simulated data file does)")
            truth = read_ground_truth(f["ground_truth"])
    except OSError as exc:
        raise DataError(f"{data_file}: cannot open it as HDF5 ({exc})") from None
    rows = [("sum of slices", score_state(state, truth, margin_A=args.margin_A, with_frc=True))]
    potential = truth.get("potential")
    if state.object.n_slices > 1 and potential is not None and np.shape(potential)[0] == state.object.n_slices:
        rows += [(f"slice {i}", score_state(state, truth, slice_index=i, margin_A=args.margin_A, with_frc=True))
                 for i in range(state.object.n_slices)]
    if args.json:
        print(json.dumps({"state": str(state_file), "truth": str(data_file),
                          "scores": {name: {k: v for k, v in r.items() if k != "frc"}
                                     | {"frc_resolution_A": r["frc"]["resolution_A"]} for name, r in rows}}))
        return 0
    table = Table(title=f"{state_file} against {data_file}",
                  caption="FRC 0.5: the period [Å] at which the Fourier ring correlation with the truth first "
                          "falls below 0.5; - : it never does, up to the grid's Nyquist frequency")
    for col in ("phase", "Pearson", "RMS [rad]", "slope", "FRC 0.5 [Å]", "pixels"):
        table.add_column(escape(col), justify="left" if col == "phase" else "right")
    for name, r in rows:
        res = r["frc"]["resolution_A"]
        table.add_row(name, f"{r['pearson']:.4f}", f"{r['rms_rad']:.4f}", f"{r['slope']:.3f}",
                      "-" if res is None else f"{res:.3g}", str(r["n_pixels"]))
    console().print(table)
    return 0


def register_all(cli) -> None:
    p = cli.command("simulate", help="Simulate 4D-STEM data with ground truth from a YAML spec (hdf5 raw format).")
    p.add_argument("spec", help="simulation spec (YAML), e.g. examples/sim_small.yaml")
    p.add_argument("--out", required=True, help="output .h5 file")
    p.add_argument("--seed", type=_non_negative_int, default=None, help="random seed, 0 or more (overrides the "
                   "spec's seed)")
    p.set_defaults(handler=_cmd_simulate)

    p = cli.command("score", help="Score a reconstruction against the ground truth of simulated data: Pearson, "
                    "RMS error, contrast slope and FRC resolution of the phase (summed, and per slice).")
    p.add_argument("result", help="a run folder (its final.h5, else checkpoint.h5) or a state file")
    p.add_argument("--truth", default=None, help="data file with /ground_truth (default: the run's hdf5 raw data)")
    p.add_argument("--margin-A", dest="margin_A", type=float, default=0.0,
                   help="leave this much [Å] of the scanned area's edge out")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=_cmd_score)

    p = cli.command("inspect", help="Print acquisition parameters and sampling figures of an hdf5 raw-data "
                    "file, or of a plan's data (any loader, after post_load); optionally write an overview PNG.")
    p.add_argument("data", help="raw-data file in the hdf5 format, or a plan (.yaml, .yml, .json)")
    p.add_argument("--png", default=None, help="write PACBED, virtual BF/ADF and probe overlap to this PNG")
    p.add_argument("--key", default="patterns", help="dataset holding the patterns (default: patterns)")
    p.add_argument("--set", action="append", metavar="PATH=VALUE",
                   help="override a value of the plan, as phaser run does, e.g. raw_data.transpose=true")
    p.set_defaults(handler=_cmd_inspect)

    p = cli.command("import-plan", help="Convert a plan of the published phaser (phaserEM 0.3) into a plan of "
                    "ours: print it (or write --out), the notes on what changed or was not carried, and "
                    "validate it (exit 1 if it does not validate).")
    p.add_argument("plan", metavar="OLD", help="phaserEM plan file (YAML)")
    p.add_argument("--out", default=None, help="write the new plan here (relative paths are rewritten to "
                   "stay valid from its folder) instead of stdout (then its paths stay relative to OLD's folder)")
    p.set_defaults(handler=_cmd_import_plan)
