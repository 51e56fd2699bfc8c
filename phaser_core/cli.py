"""The ``phaser`` command line (argparse + rich)."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from rich.console import Console
from rich.table import Table

from .errors import PhaserError
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


def _cmd_plugins(args: argparse.Namespace) -> int:
    registry = get_registry()
    console = Console()
    table = Table(title="phaser components")
    for col in ("kind", "name", "aliases", "owner", "description"):
        table.add_column(col)
    for comp in registry.components():
        table.add_row(comp.kind, comp.name, ", ".join(comp.aliases), str(comp.owner), comp.doc)
    console.print(table)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="phaser", description="Electron ptychography from declarative plans.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    cli = CommandRegistry(sub)
    p = cli.command("plugins", help="List every registered component by kind, with its owner and version.")
    p.set_defaults(handler=_cmd_plugins)
    get_registry().call_register_commands(cli)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()
    except PhaserError as exc:
        Console(stderr=True).print(f"[red]error:[/red] {exc}", highlight=False)
        return 2
    args = parser.parse_args(argv)
    handler: Callable | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return int(handler(args) or 0)
    except PhaserError as exc:
        Console(stderr=True).print(f"[red]error:[/red] {exc}", highlight=False)
        return 1


if __name__ == "__main__":
    sys.exit(main())
