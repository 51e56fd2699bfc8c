"""The ``phaser`` command line (argparse + rich).

Commands: ``validate``, ``plugins``, ``describe``, ``run`` (``--dry-run``: the memory estimate),
``plan-memory``, plus whatever plugins add through
the ``register_commands`` hook. A plan error or any :class:`PhaserError` is printed as a
message, never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import sys
import typing
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Sequence

import attrs
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import PhaserError, PlanError, did_you_mean
from .files import PLAN_DIR_HEADER, read_plan_dir
from .registry import KINDS, get_registry


class CommandRegistry:
    """Holds the ``phaser`` sub-parsers; plugins add commands through ``register_commands``."""

    def __init__(self, subparsers: argparse._SubParsersAction):
        self._subparsers = subparsers
        self.names: list[str] = []

    def command(self, name: str, help: str = "", **kwargs) -> argparse.ArgumentParser:
        if name in self.names:
            raise PhaserError(f"CLI command {name!r} is registered twice")
        self.names.append(name)
        return self._subparsers.add_parser(name, help=help, description=help, **kwargs)


#: the width [columns] of tables written to a file or a pipe (rich's own default there is 80,
#: which cut paths and folded every description); ``COLUMNS`` still wins
PIPE_WIDTH = 160


def console(stderr: bool = False) -> Console:
    """The console the commands print with (plugin commands too): no wrapping of plain
    lines, no highlighting, and :data:`PIPE_WIDTH` columns when not a terminal."""
    c = Console(stderr=stderr, soft_wrap=True, highlight=False)
    if not c.is_terminal and not os.environ.get("COLUMNS"):
        c.width = PIPE_WIDTH
    return c


def _out() -> Console:
    return console()


def _err() -> Console:
    return console(stderr=True)


def _print_plan_error(exc: PlanError, *, as_json: bool = False, source: str | None = None) -> None:
    if as_json:
        print(json.dumps({"valid": False, "file": source or exc.source,
                          "errors": [_issue_dict(e) for e in exc.errors]}, indent=2))
        return
    for issue in exc.errors:
        print(str(issue))
    sys.stdout.flush()
    n = len(exc.errors)
    _err().print(f"[red]{n} error{'s' if n != 1 else ''}[/red] in {escape(str(source or exc.source or 'the plan'))}")


def _issue_dict(issue: Any) -> dict:
    to_dict = getattr(issue, "to_dict", None)
    return to_dict() if to_dict is not None else {"text": str(issue)}


# ---------------------------------------------------------------------------------------
# phaser validate
# ---------------------------------------------------------------------------------------


def _cmd_validate(args: argparse.Namespace) -> int:
    from .plan import load_plan, missing_input_files, missing_input_files_of_document

    try:
        plan = load_plan(Path(args.plan), registry=get_registry(), overrides=args.set or (),
                         allow_local=False if args.no_local else None)
        missing = missing_input_files(plan, Path(args.plan), read_plan_dir(Path(args.plan)))
        if missing:
            raise PlanError(missing, source=args.plan)
    except PlanError as exc:
        reported = {(e.line, e.col) for e in exc.errors}
        # a plan with other errors still gets its missing files named (all problems at once)
        exc.errors.extend(e for e in missing_input_files_of_document(Path(args.plan), read_plan_dir(Path(args.plan)),
                                                                     args.set or ())
                          if (e.line, e.col) not in reported)
        _print_plan_error(exc, as_json=args.json, source=args.plan)
        return 1
    if args.json:
        print(json.dumps({"valid": True, "file": args.plan, "errors": []}, indent=2))
    else:
        engines = ", ".join(e.type for e in plan.engines)
        _out().print(f"[green]{escape(args.plan)}: valid[/green] (plan {escape(plan.name)!r}, "
                     f"engines: {escape(engines)})")
    return 0


# ---------------------------------------------------------------------------------------
# phaser plugins
# ---------------------------------------------------------------------------------------


def _cmd_plugins(args: argparse.Namespace) -> int:
    registry = get_registry()
    comps = registry.components()
    if getattr(args, "json", False):
        print(json.dumps([
            {"kind": c.kind, "name": c.name, "aliases": list(c.aliases), "owner": str(c.owner),
             "plugin": c.owner.plugin, "distribution": c.owner.distribution, "version": c.owner.version,
             "doc": c.doc, "meta": {k: v for k, v in c.meta.items() if isinstance(v, (str, int, float, bool))}}
            for c in comps], indent=2))
        return 0
    console = _out()
    table = Table(title="phaser components")
    for col in ("kind", "name", "aliases", "owner", "description"):
        table.add_column(col, overflow="fold")
    for comp in comps:
        table.add_row(comp.kind, comp.name, ", ".join(comp.aliases), escape(str(comp.owner)), escape(comp.doc))
    console.print(table)
    return 0


# ---------------------------------------------------------------------------------------
# phaser describe
# ---------------------------------------------------------------------------------------


def normalize_kind(text: str) -> list[str]:
    """Registry kinds meant by ``text``: ``solver``, ``solvers``, ``noise-model``, ``initializer`` ..."""
    k = re.sub(r"[\s-]+", "_", text.strip().lower())
    candidates = [k]
    if k.endswith("s"):
        candidates.append(k[:-1])
    for c in candidates:
        if c in KINDS:
            return [c]
        if c in ("initializer", "initialiser", "init"):
            return ["probe_initializer", "object_initializer", "scan_initializer"]
        if c.replace("initialiser", "initializer") in KINDS:
            return [c.replace("initialiser", "initializer")]
        if c + "_initializer" in KINDS:
            return [c + "_initializer"]
    raise PhaserError(f"unknown component kind {text!r}{did_you_mean(k, KINDS)} kinds: {', '.join(KINDS)}")


def _type_name(t: Any) -> str:
    if isinstance(t, str):
        return t
    from .config import ComponentSpec, Flag

    if t is type(None):
        return "null"
    if isinstance(t, type) and issubclass(t, ComponentSpec):
        return f"{t.role + ' ' if t.role else ''}{t.kind} spec"
    if t is Flag:
        return "flag"
    origin = typing.get_origin(t)
    if origin is not None:
        args = typing.get_args(t)
        if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
            return " | ".join(_type_name(a) for a in args)
        if origin is typing.Literal:
            return " | ".join(repr(a) for a in args)
        inner = ", ".join("..." if a is Ellipsis else _type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    return getattr(t, "__name__", str(t))


def _default_repr(f: attrs.Attribute) -> Any:
    default = f.default
    if default is attrs.NOTHING:
        return "(required)"
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        default = default.factory() if not default.takes_self else "(computed)"
    return _compact(default)


def _compact(value: Any) -> Any:
    """A default as short plan-like text: ``{type: lsqml}``, ``{size: 64, kind: sparse}``, ``true``."""
    from .config import ComponentSpec, Flag

    if isinstance(value, ComponentSpec):
        return f"{{type: {value.type}}}"
    if isinstance(value, Flag):
        extras = {k: getattr(value, k) for k in ("after", "every", "before") if getattr(value, k) is not None}
        if not extras or not value.enabled:
            return "true" if value.enabled else "false"
        return "{" + ", ".join(f"{k}: {v}" for k, v in extras.items()) + "}"
    if attrs.has(type(value)):
        return "{" + ", ".join(f"{f.name}: {_yamlish(_compact(getattr(value, f.name)))}"
                               for f in attrs.fields(type(value))) + "}"
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_yamlish(_compact(v)) for v in value) + "]"
    return value


def _yamlish(value: Any) -> str:
    """A scalar as a plan would write it: ``null``, ``true``, ``0.01``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def describe_component(comp: Any) -> dict:
    """Config fields of a component: name, type, default, unit, doc."""
    fields = []
    if comp.config is not None:
        try:
            hints = typing.get_type_hints(comp.config)
        except Exception:  # noqa: BLE001 - fall back to the annotation strings
            hints = {}
        for f in attrs.fields(comp.config):
            default = _default_repr(f)
            fields.append({
                "name": f.alias or f.name,
                "type": _type_name(hints.get(f.name, f.type)),
                "default": default if isinstance(default, (str, int, float, bool, type(None))) else repr(default),
                "unit": f.metadata.get("unit"),
                "doc": f.metadata.get("doc", ""),
            })
    return {"kind": comp.kind, "name": comp.name, "aliases": list(comp.aliases), "owner": str(comp.owner),
            "doc": comp.doc, "meta": {k: v for k, v in comp.meta.items() if isinstance(v, (str, int, float, bool))},
            "fields": fields}


#: where a plan lists a component of each (kind, role)
_ROLE_PLACES = {
    ("regularizer", "constraint"): "an engine's group_constraints or iter_constraints",
    ("regularizer", "cost"): "the gradient engine's regularizers",
    ("solver", "conventional"): "the conventional engine's solver",
    ("solver", "gradient"): "the gradient engine's solvers.object / solvers.probe",
    ("solver", "position"): "an engine's position_solver",
}


def _cmd_describe(args: argparse.Namespace) -> int:
    registry = get_registry()
    kinds = normalize_kind(args.kind)
    comp = None
    for kind in kinds:
        if (kind, args.name) in registry:
            comp = registry.get(kind, args.name)
            break
    if comp is None:
        registry.get(kinds[0], args.name)  # raises with a suggestion and the inventory
    info = describe_component(comp)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    console = _out()
    console.print(f"[bold]{escape(info['name'])}[/bold] ({info['kind'].replace('_', ' ')}, from {escape(info['owner'])})")
    if info["aliases"]:
        console.print(f"aliases: {escape(', '.join(info['aliases']))}")
    role = info["meta"].get("role")
    if role:
        where = _ROLE_PLACES.get((info["kind"], role))
        console.print(f"role: {escape(str(role))}" + (f" (in a plan: {where})" if where else ""))
    if info["doc"]:
        console.print(escape(info["doc"]))
    if not info["fields"]:
        console.print("no settings")
        return 0
    table = Table(title=f"{info['name']} settings")
    for col in ("key", "type", "default", "unit", "description"):
        table.add_column(col, overflow="fold")
    for f in info["fields"]:
        table.add_row(f["name"], escape(f["type"]), escape(_yamlish(f["default"])), escape(f["unit"] or ""),
                      escape(f["doc"]))
    console.print(table)
    return 0


# ---------------------------------------------------------------------------------------
# phaser run
# ---------------------------------------------------------------------------------------

def _default_out_dir(name: str) -> Path:
    base = Path(re.sub(r"[^\w.-]+|^\.+$", "_", name) or "phaser")
    out, i = base, 1
    while out.exists() and any(out.iterdir()):
        out = base.with_name(f"{base.name}_{i}")
        i += 1
    return out


def _faster_backend_hint(backend: str) -> str:
    """What to install when ``backend: auto`` found nothing faster than numpy."""
    import importlib.util

    if backend != "numpy" or importlib.util.find_spec("jax") is not None:
        return ""
    return (' (jax is not installed; with it iterations run 3-6x faster on a CPU: '
            'pip install "phaser-ptycho[jax]")')


def _cmd_run(args: argparse.Namespace) -> int:
    from .backend import concrete_backend_name
    from .plan import dump_plan, load_plan

    registry = get_registry()
    overrides = list(args.set or ())
    if args.backend:
        overrides.append(f"backend={args.backend}")
    if args.resume:
        if args.plan or args.out:
            raise PhaserError("--resume DIR continues the run in DIR with its own plan.yaml: "
                              "give no PLAN and no --out with it")
        out_dir = Path(args.resume)
        plan_file = out_dir / "plan.yaml"
        if not plan_file.exists():
            raise PhaserError(f"cannot resume: {plan_file} does not exist (give the output folder of a run)")
        source = str(plan_file)
        plan_dir = read_plan_dir(plan_file) or out_dir
        resume = True
    else:
        if not args.plan:
            raise PhaserError("give a PLAN file, or --resume DIR to continue a run")
        source = args.plan
        plan_dir = Path(args.plan).resolve().parent
        resume = False
        out_dir = None
    try:
        plan = load_plan(Path(source), registry=registry, overrides=overrides,
                         allow_local=False if args.no_local else None)
    except PlanError as exc:
        _print_plan_error(exc, source=source)
        return 1
    if getattr(args, "dry_run", False):
        from .interrupts import release

        release()  # a dry run reaches no run to read a stop: a signal acts at once
        return _print_memory_estimate(plan, plan_dir, resume_dir=out_dir if resume else None)
    if out_dir is None:
        out_dir = Path(args.out) if args.out else _default_out_dir(plan.name)
        from .files import holds_previous_run

        if holds_previous_run(out_dir):
            raise PhaserError(f"{out_dir} holds a previous run: continue it with `phaser run --resume "
                              f"{out_dir}`, or choose another --out")
    backend = concrete_backend_name(plan.backend, plan.dtype, registry)
    if backend != plan.backend:  # `auto`: the run's plan.yaml (and its resume) names the pick
        if not args.quiet:
            _err().print(f"backend {plan.backend}: {backend}{_faster_backend_hint(backend)}")
        plan = attrs.evolve(plan, backend=backend)
    if out_dir.exists() and not out_dir.is_dir():
        raise PhaserError(f"--out {out_dir} is a file; the run writes a folder there: choose another --out")
    if resume:  # before its plan.yaml is rewritten with the --set values
        from .runner import check_resumable

        check_resumable(plan, out_dir, registry)
    out_dir.mkdir(parents=True, exist_ok=True)
    dump_plan(plan, out_dir / "plan.yaml", registry,
              header=f"resolved plan written by phaser run\n{PLAN_DIR_HEADER}{plan_dir.resolve()}")
    try:
        from .runner import RunInterrupted, run_plan
    except ImportError as exc:
        raise PhaserError(f"phaser run needs phaser_core.runner, which cannot be imported: {exc}") from exc
    if not args.quiet:
        _err().print(f"running {escape(plan.name)!r} -> {escape(str(out_dir))}")
    try:
        run_plan(plan, out_dir=out_dir, registry=registry, resume=resume, plan_dir=plan_dir, quiet=args.quiet)
    except RunInterrupted as exc:
        _err().print(f"[yellow]interrupted[/yellow]: {escape(str(exc))}")
        return 130
    except KeyboardInterrupt:
        _err().print("[yellow]interrupted[/yellow]")
        return 130
    if not args.quiet:
        _err().print(f"[green]done[/green]: outputs in {escape(str(out_dir))}")
    return 0


# ---------------------------------------------------------------------------------------
# phaser plan-memory (and phaser run --dry-run)
# ---------------------------------------------------------------------------------------


def _runtime_rss(backend: str) -> int | None:
    """:func:`~phaser_core.memory.runtime_baseline` [bytes] of the estimated backend; None
    where it cannot be read or the backend not built (the report stands without it)."""
    from . import memory

    try:
        return memory.runtime_baseline(backend, registry=get_registry())
    except Exception:  # noqa: BLE001 - the report stands without it
        return None


def _print_memory_estimate(plan: Any, plan_dir: Path, *, as_json: bool = False, budget_gib: float | None = None,
                           resume_dir: Path | None = None) -> int:
    """Print the memory planner's estimate for ``plan``; 1 when it exceeds ``budget_gib``."""
    from . import memory

    registry = get_registry()
    notes: list[str] = []  # what the initialisers say of the plan against the data
    if resume_dir is not None:
        from .runner import load_data, resume_file, resumed_engine
        from .statefile import load_state

        data = load_data(plan, registry, plan_dir)
        state = load_state(resume_file(resume_dir))
        est = memory.estimate_run(plan, data, state, registry, first_engine=resumed_engine(plan, state, registry))
    else:
        est = memory.estimate_plan(plan, registry, plan_dir, notes=notes)
    avail = None
    if budget_gib is not None:
        avail = {"device": None, "host": int(budget_gib * memory.GiB), "source": f"--budget-GiB {budget_gib:g}"}
    short = [c for c in memory.pool_checks(est, avail) if not c.fits] if avail is not None else []
    baseline = _runtime_rss(est.backend)
    if as_json:
        out = est.to_dict()
        out["process_baseline_bytes"] = baseline
        if avail is not None:
            out.update(budget_bytes=avail["host"], fits=not short)
        out["notes"] = notes
        print(json.dumps(out, indent=2))
    else:
        print(memory.format_report(est, avail, baseline))
        for text in notes:
            _err().print(escape(text))
    if short:
        _err().print(f"[red]does not fit[/red]: {escape(memory.shortfall_message(est, short[0]))}")
        return 1
    return 0


def _cmd_plan_memory(args: argparse.Namespace) -> int:
    from .plan import load_plan

    overrides = list(args.set or ())
    if args.backend:
        overrides.append(f"backend={args.backend}")
    try:
        plan = load_plan(Path(args.plan), registry=get_registry(), overrides=overrides,
                         allow_local=False if args.no_local else None)
    except PlanError as exc:
        _print_plan_error(exc, source=args.plan)
        return 1
    return _print_memory_estimate(plan, Path(args.plan).resolve().parent, as_json=args.json,
                                  budget_gib=args.budget_GiB)


# ---------------------------------------------------------------------------------------
# The parser
# ---------------------------------------------------------------------------------------


def _version_line() -> str:
    """``phaser --version``: the installed distribution's version and Python's."""
    from phaser_core import __version__

    try:
        version = importlib.metadata.version("phaser-ptycho")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree
        version = __version__
    return f"phaser-ptycho {version} (python {sys.version.split()[0]})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="phaser", description="Electron ptychography from declarative plans.")
    parser.add_argument("--version", action="version", version=_version_line())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    cli = CommandRegistry(sub)

    p = cli.command("validate", help="Check a plan file; print every error with file:line:col (exit 1 if invalid).")
    p.add_argument("plan", metavar="PLAN", help="plan file (YAML or JSON)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--no-local", action="store_true", help='forbid local components (type: "package.module:attr")')
    p.add_argument("--set", action="append", metavar="PATH=VALUE", help="override a plan value, e.g. engines[0].niter=5")
    p.set_defaults(handler=_cmd_validate)

    p = cli.command("plugins", help="List every registered component by kind, with its owner and version.")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=_cmd_plugins)

    p = cli.command("describe", help="Show a component's settings: types, defaults, units and docs.")
    p.add_argument("kind", metavar="KIND", help="solver, noise_model, engine, loader, ... (plural forms accepted)")
    p.add_argument("name", metavar="NAME", help="the component's name")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=_cmd_describe)

    p = cli.command("run", help="Validate and run a plan; write outputs (resolved plan, checkpoints, images).")
    p.add_argument("plan", metavar="PLAN", nargs="?", help="plan file (YAML or JSON)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: ./<plan name>)")
    p.add_argument("--set", action="append", metavar="PATH=VALUE", help="override a plan value, e.g. engines[0].niter=5")
    p.add_argument("--resume", metavar="DIR", help="continue the run whose outputs are in DIR")
    p.add_argument("--backend", metavar="NAME", help="override the plan's backend")
    p.add_argument("--no-local", action="store_true", help='forbid local components (type: "package.module:attr")')
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.add_argument("--dry-run", action="store_true", help="print the memory estimate and exit (runs nothing)")
    p.set_defaults(handler=_cmd_run)

    p = cli.command("plan-memory", help="Estimate a plan's peak memory per engine, term by term, before running it.")
    p.add_argument("plan", metavar="PLAN", help="plan file (YAML or JSON)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--budget-GiB", dest="budget_GiB", type=float, metavar="X",
                   help="exit 1 when the estimated peak exceeds X GiB")
    p.add_argument("--set", action="append", metavar="PATH=VALUE", help="override a plan value, e.g. engines[0].grouping.size=32")
    p.add_argument("--backend", metavar="NAME", help="override the plan's backend")
    p.add_argument("--no-local", action="store_true", help='forbid local components (type: "package.module:attr")')
    p.set_defaults(handler=_cmd_plan_memory)

    get_registry().call_register_commands(cli)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # `phaser run`: Ctrl-C from the start (the imports, plan and data take seconds) stops the
    # run cleanly before its first iteration (runner.early_stop_requests)
    from .interrupts import early_stop_requests, stop_unheeded

    try:
        with early_stop_requests() if argv[:1] == ["run"] else nullcontext():
            rc = _main(argv)
            if stop_unheeded():  # it ended before its run: the stop was never acted on
                raise KeyboardInterrupt
            return rc
    except KeyboardInterrupt:
        _err().print("[yellow]interrupted[/yellow]")
        return 130


def _main(argv: list[str]) -> int:
    try:
        parser = build_parser()
    except PhaserError as exc:
        _err().print(f"[red]error:[/red] {escape(str(exc))}")
        return 2
    args = parser.parse_args(argv)
    handler: Callable | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return int(handler(args) or 0)
    except PlanError as exc:
        _print_plan_error(exc)
        return 1
    except PhaserError as exc:
        _err().print(f"[red]error:[/red] {escape(str(exc))}")
        return 1
    except OSError as exc:
        if exc.filename is None:
            return _blame_or_raise(exc)
        # a path the command cannot read or write (a file where a folder must be, no permission,
        # a full disk): what and where, without a traceback
        where = exc.filename if exc.filename2 is None else f"{exc.filename} -> {exc.filename2}"
        _err().print(f"[red]error:[/red] {escape(str(where))}: {escape(exc.strerror or str(exc))}; "
                     "check the path (--out, the plan's paths) and its permissions")
        return 1
    except Exception as exc:  # noqa: BLE001 - a plugin's failure is named; phaser's own re-raised
        return _blame_or_raise(exc)


def _blame_or_raise(exc: Exception) -> int:
    """An exception raised in a third-party plugin's or a local component's code: its
    traceback, then one line naming the plugin (1). Anything else is re-raised: phaser's
    own failures keep Python's report."""
    import traceback

    try:
        culprit = get_registry().culprit(exc)
    except Exception:  # noqa: BLE001 - the registry itself is broken: Python's report
        culprit = None
    if culprit is None:
        raise exc
    traceback.print_exception(exc, file=sys.stderr)
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    traced = type(exc).__name__ in _JAX_TRACE_ERRORS
    why = ("; it used an array's value as a Python bool, int or numpy array inside a compiled step, where "
           "constraints, noise models, costs and solvers must be pure array code (docs/hooks.md)"
           if traced else "; report it to the plugin's authors")
    _err().print(f"[red]error:[/red] {escape(type(exc).__name__)}: {escape(first)} raised in "
                 f"{escape(culprit)}{why}")
    return 1


#: jax's errors for a traced array used as a concrete value (a branch on its value)
_JAX_TRACE_ERRORS = ("TracerBoolConversionError", "ConcretizationTypeError", "TracerArrayConversionError",
                     "TracerIntegerConversionError")


if __name__ == "__main__":
    sys.exit(main())
