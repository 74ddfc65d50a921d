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
    g = p.add_argument_group("executor", "where cells run (default: the sweep file's `executor`, else in this "
                             "process one after the other); each cell is one submitit job, its logs in <cell>.job/")
    g.add_argument("--executor", dest="kind", choices=["inprocess", "local", "slurm"], default=None,
                   help="inprocess, local (one process per cell on this machine) or slurm (one Slurm job per cell)")
    g.add_argument("--partition", default=None, help="Slurm partition")
    g.add_argument("--gpus-per-job", type=int, default=None, metavar="N", help="GPUs per job")
    g.add_argument("--cpus-per-job", type=int, default=None, metavar="N", help="CPU cores per job")
    g.add_argument("--mem-gb", type=float, default=None, metavar="GB", help="memory per job")
    g.add_argument("--time-min", type=int, default=None, metavar="MIN",
                   help="time limit per job; a job killed at it is rerun by the next call")
    g.add_argument("--max-parallel", type=int, default=None, metavar="N", help="at most N jobs at once")
    p.set_defaults(func=run)


EXECUTOR_OPTIONS = ("kind", "partition", "gpus_per_job", "cpus_per_job", "mem_gb", "time_min", "max_parallel")


def run(args: argparse.Namespace) -> int:
    """Run the sweep and print where its outputs are."""
    import yaml

    from memostudy.study.executors import ExecutorConfig
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
    given = {k: getattr(args, k) for k in EXECUTOR_OPTIONS if getattr(args, k) is not None}
    executor = ExecutorConfig.from_dict(spec.executor | given)
    out = run_sweep(spec, reports_dir=args.reports, only=only, aggregate_only=args.aggregate_only, executor=executor)
    for k, v in out.items():
        print(f"{k:<10} {v}")
    return 0
