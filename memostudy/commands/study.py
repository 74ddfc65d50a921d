"""``memostudy study``: run the main study (until the notebooks land: prepare the default data)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``study`` verb."""
    p = sub.add_parser("study", help="run the main memorization study on the default data")
    p.add_argument("--data", default="demo-ct", help="manifest name or path (default demo-ct)")
    p.add_argument("--cache", default=None, help="cache root (default $MEMOSTUDY_CACHE or ~/.cache/memostudy)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Prepare the study's data and print what was prepared."""
    from memostudy.prepare import prepare

    print("\n".join(prepare(args.data, cache=args.cache).lines()))
    return 0
