"""``memostudy sweep FILE``: run a grid of notebook runs x seeds (resumable) and aggregate them."""

from __future__ import annotations

import argparse

from memostudy.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``sweep`` verb."""
    p = sub.add_parser("sweep", help="run an experiment sweep (grid x seeds) and write its trend table")
    p.add_argument("file", help="sweep YAML (see notebooks/sweeps/)")
    p.add_argument("--reports", default="reports", help="reports folder (the sweep goes to <reports>/sweeps/<name>)")
    p.add_argument("--only", default=None, metavar="I/N",
                   help="run only cells i, i+N, i+2N, ... (spread a sweep over N machines or GPUs)")
    p.add_argument("--aggregate-only", action="store_true", help="run nothing; aggregate the finished cells")
    p.add_argument("--set", nargs=2, action="append", default=[], metavar=("KEY", "YAML"),
                   help="override a top-level key of the sweep file, e.g. --set seeds '[0]'")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the sweep and print where its outputs are."""
    import yaml

    from memostudy.study.sweep import load_sweep, run_sweep

    only = None
    if args.only:
        try:
            i, n = (int(x) for x in args.only.split("/"))
            assert 0 <= i < n
        except (ValueError, AssertionError):
            raise ConfigError(f"--only {args.only!r}: use I/N with 0 <= I < N, e.g. 0/3") from None
        only = (i, n)
    spec = load_sweep(args.file, {k: yaml.safe_load(v) for k, v in args.set})
    out = run_sweep(spec, reports_dir=args.reports, only=only, aggregate_only=args.aggregate_only)
    for k, v in out.items():
        print(f"{k:<10} {v}")
    return 0
