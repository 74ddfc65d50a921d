"""``memostudy train``: train a latent diffusion model (autoencoder + diffusion model) into a run folder; 3D, or 2D
with a 2D preset (``cpu-tiny-2d``, ``paper-2d``) on a 2D data set."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``train`` verb."""
    p = sub.add_parser("train", help="train an LDM (autoencoder, then diffusion model) from a preset; resumable")
    p.add_argument("--preset", default="cpu-tiny", help="cpu-tiny (default), paper-pccta or paper-mrnet; 2D: cpu-tiny-2d, paper-2d")
    p.add_argument("--data", default=None, help="prepared data set name or folder (default: the preset's)")
    p.add_argument("--out", required=True, help="run folder, e.g. runs/NAME; rerun the same command to resume")
    p.add_argument("--augment", action="store_true", help="random flips and 90-degree rotations of training patches")
    p.add_argument("--epochs", type=int, default=None, help="epochs of the diffusion model")
    p.add_argument("--ae-epochs", type=int, default=None, help="epochs of the autoencoder")
    p.add_argument("--seed", type=int, default=None, help="seed of the run (default: the preset's, 0)")
    p.add_argument("--cache", default=None, help="cache root of prepared data sets")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="any config value, e.g. --set diffusion.loop.lr=3e-4 --set max_train_patches=64 (repeatable)")
    p.add_argument("--force", action="store_true", help="delete a finished or different run in --out and start over")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def overrides_from_args(args: argparse.Namespace) -> dict:
    """The dotted config overrides the flags ask for (``--set`` last, so it wins)."""
    from memostudy.config import parse_set_options

    ov: dict = {}
    for flag, key in (("data", "data"), ("epochs", "diffusion.loop.epochs"), ("ae_epochs", "autoencoder.loop.epochs"),
                      ("seed", "seed"), ("cache", "cache")):
        if getattr(args, flag) is not None:
            ov[key] = getattr(args, flag)
    if args.augment:
        ov["augment"] = True
    return ov | parse_set_options(args.overrides)


def run(args: argparse.Namespace) -> int:
    """Train, then say how to sample. Under ``torchrun --nproc_per_node N -m memostudy train ...`` the N
    processes train one run together (see :mod:`memostudy.distributed`)."""
    from memostudy import distributed
    from memostudy.ldm.config import preset
    from memostudy.ldm.run import train_ldm

    cfg = preset(args.preset, overrides_from_args(args))
    distributed.setup()
    main = distributed.is_main()
    try:
        out = train_ldm(cfg, args.out, force=args.force, progress=not args.no_progress)
    except BaseException:
        distributed.teardown(wait=False)
        raise
    distributed.teardown()
    if main:
        print(f"trained {out}")
        print(f"next: memostudy sample --run {out}")
    return 0
