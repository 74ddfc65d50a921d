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

``--scale paper`` builds the scale of the papers instead (issue 17's speed target): 1,000 training x 250
reference x 4,000 synthetic volumes of 32^3; ``--scale mrnet`` 200 x 50 x 800 volumes of 256 x 256 x 32 (the
MRNet layout: each volume a mosaic of 8 x 8 demo-ct patches in-plane). ``--fraction 0.25`` runs a quarter of
every count. Synthetic sets hold ``--copy-share`` copies of training volumes (every family of the broad copy
definition at strengths 1 and 2, :func:`memostudy.detect.families.make_copies`); the rest are generator-like
versions of held-out patches (:func:`memostudy.detect.families.generator_like`). demo-ct has 494 training and 243
validation patches, so larger folders repeat them with a contrast change (training) or another generator-like
draw (synthetic): a training volume may then have a near twin, which does not change the cost. Prints the
audit's stage times (its ``summary.json``), wall time, peak RSS (of the audit alone: it runs as a child process)
and the hits.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_audit.py --scale paper --work /tmp/bench_scale

``--no-contrastive`` audits with the training-free detectors only (block correlation and pixel baseline: no
detector training, no encoding), the fast path for sets of this size.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from memostudy.data.patches import load_patches
from memostudy.data.volume_io import write_nifti
from memostudy.detect.families import COPY_FAMILIES, generator_like, make_copies
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
    paths = write_folders(work, {"train": train[:n], "reference": held[perm[:n]], "synthetic": synthetic}, digits=3)
    return paths, {f"s{i:03d}.nii.gz" for i in range(len(copies))}


def write_folders(work: Path, folders: dict[str, torch.Tensor], digits: int, start: int = 0) -> dict[str, Path]:
    """Each set of volumes (N, 1, ...) as NIfTI files ``<first letter><index>.nii.gz`` in ``work/<name>``, indices
    from ``start``."""
    paths = {}
    for name, vols in folders.items():
        paths[name] = work / name
        paths[name].mkdir(parents=True, exist_ok=True)
        for i, v in enumerate(vols, start=start):
            write_nifti(paths[name] / f"{name[0]}{i:0{digits}d}.nii.gz", v[0])
    return paths


#: (training, reference, synthetic, in-plane mosaic of patches or None) of each ``--scale``
SCALES = {"paper": (1000, 250, 4000, None), "mrnet": (200, 50, 800, (8, 8))}


def _cycle(pool: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
    """``n`` volumes of ``pool`` in a random order, repeating it as often as needed."""
    reps = -(-n // len(pool))
    return torch.cat([pool[torch.randperm(len(pool), generator=g)] for _ in range(reps)])[:n]


def _mosaics(pool: torch.Tensor, n: int, tiles: tuple[int, int] | None, g: torch.Generator) -> torch.Tensor:
    """``n`` volumes drawn from ``pool`` (N, 1, D, H, W); with ``tiles`` (a, b) each is a mosaic of a x b
    randomly drawn patches side by side in-plane: (n, 1, D, a*H, b*W)."""
    if tiles is None:
        return _cycle(pool, n, g)
    a, b = tiles
    picks = _cycle(pool, n * a * b, g).reshape(n, a, b, *pool.shape[1:])  # (n, a, b, 1, D, H, W)
    rows = torch.cat([picks[:, i] for i in range(a)], dim=-2)  # (n, b, 1, D, a*H, W)
    return torch.cat([rows[:, j] for j in range(b)], dim=-1)  # (n, 1, D, a*H, b*W)


def scale_cells() -> list[tuple[str, int]]:
    """The (family, strength) cells of ``--scale``'s copies: copy ``i`` (file ``s<i>``) is of cell ``i % len``."""
    return [(f, s) for f in COPY_FAMILIES for s in (1, 2)]


def make_scale_folders(work: Path, scale: str, fraction: float, copy_share: float, seed: int = 0,
                       data: str = "demo-ct") -> tuple[dict[str, Path], set[str], dict[str, int]]:
    """The three input folders of ``--scale`` and the synthetic file names that are copies (see the module
    docstring for how the volumes are made)."""
    n_train, n_ref, n_syn, tiles = SCALES[scale]
    n_train, n_ref, n_syn = (max(2, round(fraction * x)) for x in (n_train, n_ref, n_syn))
    g = torch.Generator().manual_seed(seed)
    pool_train, pool_held = load_patches(data, "train").volumes, load_patches(data, "validation").volumes
    train = _mosaics(pool_train, n_train, tiles, g)
    if n_train > len(pool_train) and tiles is None:  # repeats: make them intensity variants, not exact twins
        train[len(pool_train):] = make_copies(train[len(pool_train):], "contrast", 1, seed=seed + 1)
    reference = _mosaics(pool_held, n_ref, tiles, g)
    n_copies = round(copy_share * n_syn)
    cells = scale_cells()
    src = torch.randint(0, n_train, (n_copies,), generator=g)
    copies = torch.empty((n_copies, *train.shape[1:]))
    for k, (family, strength) in enumerate(cells[:n_copies]):
        idx = torch.arange(k, n_copies, len(cells))
        if len(idx):
            copies[idx] = make_copies(train[src[idx]], family, strength, seed=seed + k, others=reference)
    paths = write_folders(work, {"train": train, "reference": reference, "synthetic": copies}, digits=5)
    del copies
    # the novel volumes in chunks of about 2 GB, each written before the next is made (800 mosaics of 256 x 256 x 32
    # are 6.7 GB, and making them takes a few copies); the papers' scale is one chunk
    per = max(1, (2 << 30) // (4 * train[0].numel()))
    for c, start in enumerate(range(n_copies, n_syn, per)):
        novel = generator_like(_mosaics(pool_held, min(per, n_syn - start), tiles, g), "mixed", seed=seed + c)
        write_folders(work, {"synthetic": novel}, digits=5, start=start)
    counts = {"train": n_train, "reference": n_ref, "synthetic": n_syn, "copies": n_copies}
    return paths, {f"s{i:05d}.nii.gz" for i in range(n_copies)}, counts


def main_() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="/tmp/bench_audit", help="folder for the inputs and the audit output (emptied)")
    ap.add_argument("--data", default="demo-ct", help="prepared data set (memostudy data prepare NAME), 3D or 2D")
    ap.add_argument("--n", type=int, default=100, help="volumes per folder")
    ap.add_argument("--detector", default=None, help="a trained detector.pt (default: the audit trains one)")
    ap.add_argument("--scale", choices=sorted(SCALES), default=None,
                    help="paper: 1000 x 250 x 4000 volumes of 32^3; mrnet: 200 x 50 x 800 of 256 x 256 x 32")
    ap.add_argument("--fraction", type=float, default=1.0, help="with --scale: this fraction of every count")
    ap.add_argument("--no-contrastive", action="store_true",
                    help="audit with the training-free detectors only (memostudy audit --no-contrastive)")
    ap.add_argument("--copy-share", type=float, default=0.1, help="with --scale: share of synthetic volumes that are copies")
    args = ap.parse_args()
    work = Path(args.work)
    if work.exists() and any(work.iterdir()):
        raise SystemExit(f"{work}: not empty; pass an empty or new --work")
    t_make = time.perf_counter()
    if args.scale:
        paths, copies, counts = make_scale_folders(work, args.scale, args.fraction, args.copy_share, data=args.data)
        label = f"--scale {args.scale} --fraction {args.fraction:g}: " + " / ".join(f"{v} {k}" for k, v in counts.items())
    else:
        paths, copies = make_folders(work, args.n, data=args.data)
        label = f"{args.n} train / {args.n} reference / {args.n} synthetic ({len(copies)} known copies)"
    print(f"inputs written in {time.perf_counter() - t_make:.0f} s", flush=True)
    out = work / "audit"
    cmd = ["audit", *(f"--{k}={v}" for k, v in paths.items()), f"--out={out}"]
    if args.detector:
        cmd.append(f"--detector={args.detector}")
    if args.no_contrastive:
        cmd.append("--no-contrastive")
    t0 = time.perf_counter()
    # a child process, so that its peak RSS is the audit's own, not that of making the inputs
    rc = subprocess.run([sys.executable, "-m", "memostudy", *cmd]).returncode
    seconds = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"audit failed with exit code {rc}")
    syn = pd.read_csv(out / "synthetic.csv")
    truth = syn["synthetic_id"].isin(copies)
    stages = json.loads((out / "summary.json").read_text()).get("seconds", {})
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    print(f"\naudit ({args.data}) of {label}: {seconds:.0f} s, peak RSS {peak_gb:.2f} GB; stages (s): {stages}")
    for col, name in (("is_copy", "contrastive"), ("pixel_is_copy", "pixel"), ("blocks_is_copy", "blocks"),
                      ("blocks_either_is_copy", "blocks-either"),
                      ("aligned_is_copy", "aligned"), ("combined_is_copy", "combined")):
        if col not in syn.columns:  # a detector switched off
            continue
        flagged = syn[col].astype(bool)
        print(f"{name:13s} copies found {int((flagged & truth).sum()):3d} / {int(truth.sum())}, "
              f"others flagged {int((flagged & ~truth).sum()):3d} / {int((~truth).sum())}")
    if not args.scale:  # the copies found per family (files s000... are the copies, FAMILIES in turn)
        per = len(copies) // len(FAMILIES)
        fams = syn.loc[truth, "synthetic_id"].map(lambda name: FAMILIES[int(name[1:4]) // per])
        cols = [c for c in ("is_copy", "pixel_is_copy", "blocks_is_copy", "blocks_either_is_copy", "aligned_is_copy",
                            "combined_is_copy") if c in syn.columns]
        print("\ncopies found per family (columns: detectors):")
        print(syn.loc[truth, cols].groupby(fams).sum().to_string())
    if args.scale:  # the share of each family's copies found, per strength
        cells = scale_cells()
        copies_ = syn[truth].copy()
        index = copies_["synthetic_id"].str[1:6].astype(int)
        copies_["family"] = [cells[i % len(cells)][0] for i in index]
        copies_["strength"] = [cells[i % len(cells)][1] for i in index]
        cols = [c for c in ("is_copy", "pixel_is_copy", "blocks_is_copy", "blocks_either_is_copy", "aligned_is_copy",
                            "combined_is_copy") if c in syn.columns]
        print("\nshare of each family's copies found (columns: detectors, then strength):")
        print(copies_.groupby(["family", "strength"])[cols].mean().unstack("strength").round(2).to_string())


if __name__ == "__main__":
    main_()
