"""``memostudy audit`` on folders made by hand from real patches, with known copies: time and hits.

Writes three folders of NIfTI files from a prepared data set's patches (``--data``, default ``demo-ct``;
a 2D data set such as ``demo-ct-2d`` gives 2D NIfTI images and audits them as 2D): ``--n`` training patches,
``--n`` reference patches (validation split), and ``--n`` synthetic volumes of which half are known
copies of training patches (equal numbers flipped, rotated, shifted, blurred and intensity-changed,
:func:`memostudy.detect.views.apply_family`) and half are other real validation patches. Runs the audit
through the command line (detector trained by the audit unless ``--detector``), then prints the wall
time and, per detector, how many known copies it flags and how many of the other volumes.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_audit.py --work /tmp/bench_audit
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_audit.py --data demo-ct-2d --work /tmp/bench_audit_2d
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch

from memostudy.cli import main
from memostudy.data.patches import load_patches
from memostudy.data.volume_io import write_nifti
from memostudy.detect.views import apply_family

FAMILIES = ("flip", "rot90", "shift", "blur", "intensity")


def make_folders(work: Path, n: int, seed: int = 0, data: str = "demo-ct") -> tuple[dict[str, Path], set[str]]:
    """The three input folders under ``work`` and the synthetic file names that are copies."""
    train, held = load_patches(data, "train").volumes, load_patches(data, "validation").volumes
    if len(train) < n or len(held) < n + n - n // 2:
        raise SystemExit(f"{data} has {len(train)} train and {len(held)} validation patches; pass a smaller --n")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(held), generator=g)
    n_copies = n // 2
    per = n_copies // len(FAMILIES)
    copies = torch.cat([apply_family(train[i * per:(i + 1) * per], f, g) for i, f in enumerate(FAMILIES)])
    synthetic = torch.cat([copies, held[perm[n:n + n - len(copies)]]])
    folders = {"train": train[:n], "reference": held[perm[:n]], "synthetic": synthetic}
    paths = {}
    for name, vols in folders.items():
        paths[name] = work / name
        paths[name].mkdir(parents=True, exist_ok=True)
        for i, v in enumerate(vols):
            write_nifti(paths[name] / f"{name[0]}{i:03d}.nii.gz", v[0])
    return paths, {f"s{i:03d}.nii.gz" for i in range(len(copies))}


def main_() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="/tmp/bench_audit", help="folder for the inputs and the audit output (emptied)")
    ap.add_argument("--data", default="demo-ct", help="prepared data set (memostudy data prepare NAME), 3D or 2D")
    ap.add_argument("--n", type=int, default=100, help="volumes per folder")
    ap.add_argument("--detector", default=None, help="a trained detector.pt (default: the audit trains one)")
    args = ap.parse_args()
    work = Path(args.work)
    if work.exists() and any(work.iterdir()):
        raise SystemExit(f"{work}: not empty; pass an empty or new --work")
    paths, copies = make_folders(work, args.n, data=args.data)
    out = work / "audit"
    cmd = ["audit", *(f"--{k}={v}" for k, v in paths.items()), f"--out={out}"]
    if args.detector:
        cmd.append(f"--detector={args.detector}")
    t0 = time.perf_counter()
    rc = main(cmd)
    seconds = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"audit failed with exit code {rc}")
    syn = pd.read_csv(out / "synthetic.csv")
    truth = syn["synthetic_id"].isin(copies)
    print(f"\naudit ({args.data}) of {args.n} train / {args.n} reference / {args.n} synthetic ({len(copies)} known copies): {seconds:.0f} s")
    for col, name in (("is_copy", "contrastive"), ("pixel_is_copy", "pixel"), ("aligned_is_copy", "aligned"),
                      ("combined_is_copy", "combined")):
        flagged = syn[col].astype(bool)
        print(f"{name:12s} copies found {int((flagged & truth).sum()):3d} / {int(truth.sum())}, "
              f"others flagged {int((flagged & ~truth).sum()):3d} / {int((~truth).sum())}")


if __name__ == "__main__":
    main_()
