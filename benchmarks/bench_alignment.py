"""Time of the aligned search per query: the code's default (coarse to fine, :attr:`AlignConfig.fine_pairs`)
against a reference run in turn (A B A B ...) on the same demo patches and shortlists: ``--reference
exhaustive`` (every candidate in every orientation at every shift, ``fine_pairs=0``) or ``--reference
avg-pool`` (exhaustive, with the window means of the normalised cross-correlation from average pooling,
``avg_pool3d`` / ``avg_pool2d`` with stride 1, instead of summed-area tables,
:func:`memostudy.detect.alignment.box_mean`: the code before both speed changes). Prints the fp32 matmul peak,
each side's median seconds per query, their ratio, and how far the scores and matched sources differ.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_alignment.py --data demo-ct --queries 20 --rounds 3
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from unittest import mock

import torch
import torch.nn.functional as F
from bench_similarity import matmul_peak  # benchmarks/ is the script's folder, on sys.path

from memostudy.data.patches import load_patches
from memostudy.detect import alignment
from memostudy.detect.alignment import AlignConfig, aligned_nearest, candidates


def _pooled_mean(x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """The window means by average pooling over every window (stride 1)."""
    return (F.avg_pool3d if len(size) == 3 else F.avg_pool2d)(x, tuple(size), stride=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="demo-ct", help="prepared data set (3D or 2D)")
    ap.add_argument("--queries", type=int, default=20, help="validation patches searched against the training split")
    ap.add_argument("--train", type=int, default=200, help="training patches searched")
    ap.add_argument("--rounds", type=int, default=3, help="A B rounds")
    ap.add_argument("--reference", choices=["exhaustive", "avg-pool"], default="exhaustive",
                    help="what the default search is timed against")
    args = ap.parse_args()
    base = load_patches(args.data, "train").volumes[: args.train]
    query = load_patches(args.data, "validation").volumes[: args.queries]
    code = AlignConfig()
    ref = AlignConfig(fine_pairs=0)
    shortlist = candidates(query, base, code)
    print(f"fp32 matmul peak {matmul_peak():.0f} GFLOP/s on {torch.get_num_threads()} thread(s); "
          f"{len(query)} queries x {len(base)} training patches of {tuple(base.shape[2:])}, shortlist {shortlist.shape[1]}; "
          f"code: fine_pairs={code.fine_pairs}, reference: {args.reference}")
    sides = {f"code (fine_pairs={code.fine_pairs})": code, f"reference ({args.reference})": ref}
    times: dict[str, list[float]] = {name: [] for name in sides}
    found = {}
    for _ in range(args.rounds):
        for name, cfg in sides.items():
            patch = (mock.patch.object(alignment, "box_mean", _pooled_mean) if "avg-pool" in name
                     else contextlib.nullcontext())
            with patch:
                t = time.perf_counter()
                found[name] = aligned_nearest(query, base, shortlist, cfg)
                times[name].append((time.perf_counter() - t) / len(query))
    a, b = (statistics.median(v) for v in times.values())
    for name, v in times.items():
        print(f"{name:28s} median {statistics.median(v):.3f} s per query (rounds: {', '.join(f'{x:.3f}' for x in v)})")
    x, y = found.values()
    print(f"ratio reference / code {b / a:.2f}; scores code - reference: largest |difference| "
          f"{float((x.values - y.values).abs().max()):.2e}, mean {float((x.values - y.values).mean()):+.2e}; "
          f"same nearest training patch for {int((x.indices == y.indices).sum())} of {len(query)} queries")


if __name__ == "__main__":
    main()
