"""Time of the aligned search per query, with the window means of its normalised cross-correlation from
summed-area tables (:func:`memostudy.detect.alignment.box_mean`, the code) against average pooling (the
reference, ``avg_pool3d`` / ``avg_pool2d`` with stride 1, what the code used before), run in turn (A B A B ...)
on the same demo patches; prints the fp32 matmul peak, each side's median seconds per query and their ratio,
and checks both give the same scores.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_alignment.py --data demo-ct --queries 20 --rounds 3
"""

from __future__ import annotations

import argparse
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
    """The reference: average pooling over every window (stride 1)."""
    return (F.avg_pool3d if len(size) == 3 else F.avg_pool2d)(x, tuple(size), stride=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="demo-ct", help="prepared data set (3D or 2D)")
    ap.add_argument("--queries", type=int, default=20, help="validation patches searched against the training split")
    ap.add_argument("--train", type=int, default=200, help="training patches searched")
    ap.add_argument("--rounds", type=int, default=3, help="A B rounds")
    args = ap.parse_args()
    base = load_patches(args.data, "train").volumes[: args.train]
    query = load_patches(args.data, "validation").volumes[: args.queries]
    cfg = AlignConfig()
    shortlist = candidates(query, base, cfg)
    print(f"fp32 matmul peak {matmul_peak():.0f} GFLOP/s on {torch.get_num_threads()} thread(s); "
          f"{len(query)} queries x {len(base)} training patches of {tuple(base.shape[2:])}, shortlist {shortlist.shape[1]}")
    times: dict[str, list[float]] = {"box_mean (code)": [], "avg_pool (reference)": []}
    scores = {}
    for _ in range(args.rounds):
        for name in times:
            patch = mock.patch.object(alignment, "box_mean", _pooled_mean) if "reference" in name else mock.MagicMock()
            with patch:
                t = time.perf_counter()
                scores[name] = aligned_nearest(query, base, shortlist, cfg).values
                times[name].append((time.perf_counter() - t) / len(query))
    a, b = (statistics.median(v) for v in times.values())
    for name, v in times.items():
        print(f"{name:22s} median {statistics.median(v):.3f} s per query (rounds: {', '.join(f'{x:.3f}' for x in v)})")
    print(f"ratio reference / code {b / a:.2f}; largest score difference "
          f"{float((scores['box_mean (code)'] - scores['avg_pool (reference)']).abs().max()):.2e}")


if __name__ == "__main__":
    main()
