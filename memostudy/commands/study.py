"""``memostudy study``: execute a study notebook with papermill and export its offline HTML report."""

from __future__ import annotations

import argparse
import sys

import yaml


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``study`` verb."""
    p = sub.add_parser("study", help="run a study notebook (default: the main memorization study) into reports/")
    p.add_argument("notebook", nargs="?", default="01_memorization",
                   help="notebook name or path (01_memorization, 02_augmentation, ...)")
    p.add_argument("--preset", default=None, help="LDM preset passed to the notebook (e.g. cpu-tiny, paper-pccta)")
    p.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="notebook parameter (YAML literal), repeatable")
    p.add_argument("-f", "--parameters-file", default=None, help="YAML file of notebook parameters")
    p.add_argument("--share-safe", action="store_true",
                   help="report holds no voxel of any training volume (synthetic images and aggregates only)")
    p.add_argument("--reports", default="reports", help="reports folder (default ./reports)")
    p.add_argument("--run-id", default=None, help="run folder name (default: UTC time + notebook)")
    p.add_argument("--force", action="store_true", help="replace an existing run folder of the same id")
    p.set_defaults(func=run)


def parameters_from_args(args: argparse.Namespace) -> dict:
    """Merge the parameters file, --preset, --share-safe and -p NAME VALUE pairs (later wins)."""
    from memostudy.errors import ConfigError

    params: dict = {}
    if args.parameters_file:
        try:
            with open(args.parameters_file) as fh:
                params |= yaml.safe_load(fh) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"{args.parameters_file}: cannot read parameters ({e})") from None
    if args.preset:
        params["preset"] = args.preset
    if args.share_safe:
        params["share_safe"] = True
    for name, value in args.parameter:
        params[name] = yaml.safe_load(value)
    return params


def run(args: argparse.Namespace) -> int:
    """Run the notebook; print where the report is; non-zero exit when the notebook failed."""
    from memostudy.study.runner import run_notebook

    res = run_notebook(args.notebook, parameters_from_args(args), reports_dir=args.reports, run_id=args.run_id,
                       force=args.force)
    print(f"run folder  {res.run_dir}")
    print(f"report      {res.report}")
    print(f"index       {res.run_dir.parent / 'index.html'}")
    print(f"status      {res.status} in {res.seconds:.0f} s")
    for k, v in (res.key_figures or {}).items():
        print(f"  {k}: {v}")
    if res.status != "ok":
        print(f"memostudy: error: notebook failed ({res.error}); see {res.report}", file=sys.stderr)
        return 1
    return 0
