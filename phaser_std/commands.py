"""Extra CLI sub-commands of the bundled plugin: ``phaser simulate`` and ``phaser inspect``."""

from __future__ import annotations

import argparse


def _cmd_simulate(args: argparse.Namespace) -> int:
    from rich.console import Console

    from phaser_std.data.simulate import simulate_to_file

    sim = simulate_to_file(args.spec, args.out, seed=args.seed)
    n = sim.patterns.shape[0] * sim.patterns.shape[1]
    Console().print(f"wrote {args.out}: {n} patterns of {sim.patterns.shape[-2]}x{sim.patterns.shape[-1]}, "
                    f"{sim.phases.shape[0]} slice(s), {sim.probe.shape[0]} probe mode(s), "
                    f"pixel {sim.sampling_A[0]:.4g} Å", highlight=False)
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from rich.console import Console

    from phaser_std.data.inspect import load_for_inspect, print_summary, write_png

    data = load_for_inspect(args.data, key=args.key)
    console = Console()
    print_summary(data, console)
    if args.png:
        write_png(data, args.png)
        console.print(f"wrote {args.png}", highlight=False)
    return 0


def register_all(cli) -> None:
    p = cli.command("simulate", help="Simulate 4D-STEM data with ground truth from a YAML spec (hdf5 raw format).")
    p.add_argument("spec", help="simulation spec (YAML), e.g. examples/sim_small.yaml")
    p.add_argument("--out", required=True, help="output .h5 file")
    p.add_argument("--seed", type=int, default=None, help="random seed (overrides the spec's seed)")
    p.set_defaults(handler=_cmd_simulate)

    p = cli.command("inspect", help="Print acquisition parameters and sampling figures of an hdf5 raw-data "
                    "file, or of a plan's data (any loader, after post_load); optionally write an overview PNG.")
    p.add_argument("data", help="raw-data file in the hdf5 format, or a plan (.yaml, .yml, .json)")
    p.add_argument("--png", default=None, help="write PACBED, virtual BF/ADF and probe overlap to this PNG")
    p.add_argument("--key", default="patterns", help="dataset holding the patterns (default: patterns)")
    p.set_defaults(handler=_cmd_inspect)
