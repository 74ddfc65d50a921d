"""``memostudy sample``: draw volumes from a trained LDM run and write them as NIfTI."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``sample`` verb."""
    p = sub.add_parser("sample", help="sample NIfTI volumes (2D NIfTI images from a 2D run) from a trained LDM run (DDIM or DDPM)")
    p.add_argument("--run", required=True, help="run folder written by `memostudy train`")
    p.add_argument("-n", type=int, default=None, help="number of volumes (default: the run's samples_per_training_patch x training patches)")
    p.add_argument("--sampler", choices=["ddim", "ddpm"], default=None, help="default: the run's (ddim)")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the run's, 50); DDPM always uses all")
    p.add_argument("--eta", type=float, default=None,
                   help="DDIM noise, 0 (deterministic) to 1 (DDPM-like); default: the run's (cpu-tiny: 1)")
    p.add_argument("--checkpoint", default=None, help="final (default), last, a snapshot epoch number, or a .pt path")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=None, help="volumes denoised together (default: the run's)")
    p.add_argument("--tag", default=None, help="sub-folder of samples/ (default e.g. final-ddim50-seed0)")
    p.add_argument("--force", action="store_true", help="replace samples already written under that tag")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Sample and write."""
    from memostudy.ldm.config import default_num_samples
    from memostudy.ldm.run import load_run
    from memostudy.ldm.sampling import default_tag, sample_from, write_samples
    from memostudy.training import select_device

    r = load_run(args.run, args.checkpoint, device=select_device())
    s = r.cfg.sampling_for(args.sampler, args.steps, args.eta, args.batch_size)
    sampler, steps, eta, batch_size = s.sampler, s.steps, s.eta, s.batch_size
    n = args.n if args.n is not None else default_num_samples(r.cfg, len(r.data.get("train_ids", [])))
    tag = args.tag or default_tag(args.checkpoint, sampler, steps, args.seed, eta)
    vols = sample_from(r, n, sampler=sampler, steps=steps, seed=args.seed, batch_size=batch_size,
                       progress=not args.no_progress, eta=eta)
    folder = write_samples(args.run, vols, tag, checkpoint=args.checkpoint, sampler=sampler, steps=steps,
                           seed=args.seed, batch_size=batch_size, force=args.force, eta=eta)
    print(f"wrote {len(vols)} samples ({sampler}, {steps} steps, checkpoint {r.checkpoint.name}, epoch {r.epoch}) to {folder}")
    return 0
