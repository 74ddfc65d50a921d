"""Throughput and peak memory of the similarity search on this machine.

Prints the fp32 matmul peak (a plain large ``torch.mm``), then for each case the chunked search's
throughput in GFLOP/s (2 * Nq * Nb * F useful flops of the GEMM) as a fraction of that peak, and
the peak memory it added. Each case runs in its own subprocess so ``ru_maxrss`` is its own.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_similarity.py
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

import torch


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    """Best GFLOP/s of an n x n x n fp32 torch.mm."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def case(name: str) -> dict:
    """Run one case in this process; returns its figures."""
    from memostudy.detect.baseline import pixel_nearest
    from memostudy.detect.similarity import nearest

    g = torch.Generator().manual_seed(0)
    if name == "embeddings":
        q, b = torch.randn(10_000, 32, generator=g), torch.randn(1_000, 32, generator=g)
        flops = 2 * 10_000 * 1_000 * 32
        before = _rss_mb()
        secs = min(_timed(lambda: nearest(q, b, "pearson")) for _ in range(5))
        secs_msd = min(_timed(lambda: nearest(q, b, "msd")) for _ in range(5))
        peak_added = _rss_mb() - before
        # the bare product of the same shape, no max: what the GEMM library reaches at K = 32
        secs_mm = min(_timed(lambda: q @ b.T) for _ in range(5))
        return {"case": "10,000 synthetic x 1,000 training embeddings (32-d)", "seconds": secs,
                "seconds_msd": secs_msd, "gflops": flops / secs / 1e9, "peak_added_mb": peak_added,
                "gemm_alone_gflops": flops / secs_mm / 1e9}
    if name == "latent":
        from memostudy.detect.similarity import set_nearest

        # the detector's default search (memostudy.detect.matching): 48 orientations of each synthetic volume x
        # 27 shifts of each training volume, 512-d latent vectors, both directions from one pass
        q, b = torch.randn(48, 1_000, 512, generator=g), torch.randn(27, 1_000, 512, generator=g)
        flops = 2 * 48 * 1_000 * 27 * 1_000 * 512
        before = _rss_mb()
        secs = _timed(lambda: set_nearest(q, b, "pearson"))
        return {"case": "detector latent search, 1,000 synthetic x 1,000 training volumes (48 x 27 vectors of 512)",
                "seconds": secs, "gflops": flops / secs / 1e9, "peak_added_mb": _rss_mb() - before,
                "input_mb": (q.numel() + b.numel()) * 4 / 2**20}
    if name == "blocks-audit":
        from memostudy.detect.blocks import block_nearest, block_nearest_both

        # what the audit adds at the papers' scale (issue 17): synthetic <-> training (one pass, both directions)
        # and reference -> training; 1,000 training x 250 reference x 4,000 synthetic volumes of 32^3
        t, r, sy = (torch.rand(n, 1, 32, 32, 32, generator=g) for n in (1_000, 250, 4_000))
        before = _rss_mb()
        secs = _timed(lambda: (block_nearest_both(sy, t), block_nearest(r, t)))
        flops = 2 * (4_000 + 250) * 1_000 * 32**3
        return {"case": "block correlation as the audit runs it at the papers' scale (4,000 synthetic x 1,000 "
                        "training, both ways in one pass, 250 reference)", "seconds": secs, "gflops": flops / secs / 1e9,
                "peak_added_mb": _rss_mb() - before, "input_mb": (t.numel() + r.numel() + sy.numel()) * 4 / 2**20}
    if name == "blocks-oriented-audit":
        from memostudy.detect.blocks import block_oriented_nearest_both

        # what blocks-either adds at the papers' scale: the oriented shortlist search, synthetic <-> training and
        # reference -> training (the plain searches are the case above); flops: the pooled preselection's GEMMs
        # (48 orientations of 8^3 pooled volumes)
        t, r, sy = (torch.rand(n, 1, 32, 32, 32, generator=g) for n in (1_000, 250, 4_000))
        before = _rss_mb()
        secs = _timed(lambda: (block_oriented_nearest_both(sy, t), block_oriented_nearest_both(r, t)))
        flops = 2 * 48 * (4_000 + 250) * 1_000 * 8**3
        return {"case": "oriented block correlation (shortlist of 3) as the audit runs it at the papers' scale",
                "seconds": secs, "gflops": flops / secs / 1e9, "peak_added_mb": _rss_mb() - before,
                "input_mb": (t.numel() + r.numel() + sy.numel()) * 4 / 2**20}
    q, b = torch.rand(1_000, 1, 32, 32, 32, generator=g), torch.rand(1_000, 1, 32, 32, 32, generator=g)
    flops = 2 * 1_000 * 1_000 * 32**3
    before = _rss_mb()
    if name == "blocks":
        from memostudy.detect.blocks import block_nearest

        # the same multiply-adds as the pixel correlation (64 blocks of 512 voxels), plus a top-32 of 64 per pair
        secs = min(_timed(lambda: block_nearest(q, b)) for _ in range(2))
        return {"case": "block correlation 1,000 x 1,000 volumes of 32^3 (8^3 blocks, best half)", "seconds": secs,
                "gflops": flops / secs / 1e9, "peak_added_mb": _rss_mb() - before, "input_mb": 2 * q.numel() * 4 / 2**20}
    secs = min(_timed(lambda: pixel_nearest(q, b)) for _ in range(2))
    return {"case": "pixel correlation 1,000 x 1,000 volumes of 32^3", "seconds": secs, "gflops": flops / secs / 1e9,
            "peak_added_mb": _rss_mb() - before, "input_mb": 2 * q.numel() * 4 / 2**20}


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--case":
        print(json.dumps(case(sys.argv[2])))
        return
    peak = matmul_peak()
    print(f"fp32 matmul peak (torch.mm 2048^3, {torch.get_num_threads()} threads): {peak:.1f} GFLOP/s")
    for name in ("embeddings", "latent", "pixel", "blocks", "blocks-audit", "blocks-oriented-audit"):
        out = subprocess.run([sys.executable, __file__, "--case", name], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        extra = f", msd {r['seconds_msd'] * 1e3:.1f} ms" if "seconds_msd" in r else ""
        print(f"{r['case']}: {r['seconds'] * 1e3:.0f} ms{extra}, {r['gflops']:.1f} GFLOP/s = "
              f"{r['gflops'] / peak:.0%} of peak; peak memory added {r['peak_added_mb']:.0f} MB"
              + (f" (inputs {r['input_mb']:.0f} MB)" if "input_mb" in r else ""))
        if "gemm_alone_gflops" in r:
            print(f"  the bare torch.mm of that shape (10,000 x 32 @ 32 x 1,000, no max) reaches "
                  f"{r['gemm_alone_gflops']:.1f} GFLOP/s = {r['gemm_alone_gflops'] / peak:.0%} of peak: at K = 32 "
                  "the product is bound by writing its output, not by arithmetic")


if __name__ == "__main__":
    main()
