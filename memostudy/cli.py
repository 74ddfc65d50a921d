"""The ``memostudy`` command.

Each verb lives in its own thin module under :mod:`memostudy.commands` exposing
``register(subparsers)``; this file only discovers them, dispatches, and turns a
:class:`~memostudy.errors.MemostudyError` into one line on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from memostudy.errors import MemostudyError


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command found in :mod:`memostudy.commands`."""
    import memostudy.commands as commands

    parser = argparse.ArgumentParser(prog="memostudy", description=__import__("memostudy").__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for mod in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"memostudy.commands.{mod.name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except MemostudyError as e:
        print(f"memostudy: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("memostudy: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
