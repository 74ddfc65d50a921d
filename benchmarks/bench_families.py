"""How the default contrastive detector and the pixel baseline score copies made with the broad copy families
(`memostudy.detect.families`), which the detector's training views do not cover, and generator-like novel volumes.

Small scale on demo-ct: 60 training patches (lung2), 60 reference + 60 novel + 60 fill patches (lung1),
40 copies per family and strength, novel also as generator-like (4 kinds x 60). Threshold: 95th percentile
of the reference's nearest-training scores (metrics.calibrate_threshold / is_copy). No tuning.
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_families.py [--work DIR]

"registered" (memostudy.detect.registration, SimpleITK; seconds per query) is measured on a smaller set:
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_families.py --detectors pixel,registered \
        --per-cell 8 --n 40 --kinds mixed
it also prints how often the true source is in its shortlist (a miss there cannot be recovered), how often its
nearest training volume is the source, and seconds per registered pair.

2D images work the same way (``--data`` a prepared 2D data set, e.g. demo-ct-2d: every family, the detector and the
pixel baseline in 2D; "registered" is 3D only):
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_families.py --data demo-ct-2d

``--oriented`` turns each copy's source into a random flip or 90-degree rotation first (the LDM augmentation's
kind of change, on top of every family); "blocks-either" is the registry's plain-or-oriented block correlation.

Prints sensitivity per family and strength and specificity per kind of novel volume; writes them to
``DIR/families.json``. About 10 minutes on 2 cores (the detector trains on the 60 patches).
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from memostudy.data.patches import load_patches
from memostudy.detect.alignment import AlignConfig, aligned_nearest, candidates
from memostudy.detect.baseline import pixel_nearest
from memostudy.detect.blocks import block_nearest, block_oriented_nearest_both
from memostudy.detect.calibration import copy_decisions, matched_smoothness, noise_std, roughness
from memostudy.detect.detector import DetectorConfig, embed, train_detector
from memostudy.detect.families import COPY_FAMILIES, FAMILY_TABLE, GENERATOR_KINDS, generator_like, make_copies
from memostudy.detect.matching import base_vectors, query_vectors
from memostudy.detect.metrics import calibrate_threshold, combine_nearest, is_copy
from memostudy.detect.registration import RegisterConfig, Registered, registered_nearest
from memostudy.detect.similarity import set_nearest
from memostudy.detect.views import random_orientation

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--data", default="demo-ct", help="prepared data set (3D volumes or 2D images), train and validation splits")
parser.add_argument("--work", default=None, help="folder for the detector and families.json (default: a temporary one)")
parser.add_argument("--detectors", default="contrastive,pixel",
                    help="comma-separated: contrastive, pixel, blocks, blocks-either, aligned, registered")
parser.add_argument("--oriented", action="store_true",
                    help="turn each copy's source patch into a random one of its flips and 90-degree rotations first")
parser.add_argument("--align-fine-pairs", type=int, default=AlignConfig().fine_pairs,
                    help="(candidate, orientation) pairs the aligned search searches in full (0 = all; AlignConfig.fine_pairs)")
parser.add_argument("--per-cell", type=int, default=40, help="copies per family and strength")
parser.add_argument("--n", type=int, default=60, help="reference, novel and fill patches each")
parser.add_argument("--stages", default="rigid,affine", help="registration stages of 'registered' (add bspline)")
parser.add_argument("--reg-score", default=RegisterConfig().score, help="score of 'registered' pairs: local-ncc or blocks")
parser.add_argument("--kinds", default=",".join(GENERATOR_KINDS), help="generator-like kinds of novel volumes")
args = parser.parse_args()
DETS = args.detectors.split(",")
KINDS = tuple(args.kinds.split(","))
N, PER = args.n, args.per_cell
WORK = Path(args.work or tempfile.mkdtemp(prefix="bench-families-"))
WORK.mkdir(parents=True, exist_ok=True)
torch.set_num_threads(1)
T0 = time.perf_counter()
rng = np.random.default_rng(0)
train_all = load_patches(args.data, "train").volumes
held = load_patches(args.data, "validation").volumes
train = train_all[torch.from_numpy(np.sort(rng.choice(len(train_all), 60, replace=False)))]
perm = torch.from_numpy(rng.permutation(len(held)))
reference, novel, fill = held[perm[:N]], held[perm[N:2 * N]], held[perm[2 * N:3 * N]]
print(f"data: train {tuple(train.shape)} reference {len(reference)} novel {len(novel)} fill {len(fill)}", flush=True)

# copies
SOURCE_STD = train.flatten(1).std(1).numpy()  # per training patch, for the breakdown by how much a source varies
copies, meta, gen_seconds = [], [], {}
for fi, fam in enumerate(COPY_FAMILIES):
    for s in (1, 2, 3):
        src = np.sort(rng.choice(len(train), PER, replace=False))
        t = time.perf_counter()
        sources = train[torch.from_numpy(src)]
        if args.oriented:
            sources = random_orientation(sources, torch.Generator().manual_seed(100 * fi + s))
        copies.append(make_copies(sources, fam, s, seed=100 * fi + s, others=fill))
        gen_seconds[f"{fam}/{s}"] = (time.perf_counter() - t) / len(src)
        meta += [(fam, s, FAMILY_TABLE[fam].levels[s].inside, int(i)) for i in src]
copies = torch.cat(copies)
genlike = {k: generator_like(novel, k, seed=7 + i) for i, k in enumerate(GENERATOR_KINDS) if k in KINDS}
print(f"copies made in {sum(gen_seconds.values()) * PER:.1f} s; ms per {'x'.join(map(str, train.shape[2:]))} volume: "
      + ", ".join(f"{k} {v * 1e3:.0f}" for k, v in gen_seconds.items()), flush=True)
print("median roughness / noise std: " + ", ".join(f"{k} {roughness(v).median():.3f} / {noise_std(v).median():.4f}"
      for k, v in {"train": train, "reference": reference, "novel": novel, **genlike}.items()), flush=True)

# detector (defaults), validation loss on the reference as run_validation does
t_train = 0.0
if "contrastive" in DETS:
    t = time.perf_counter()
    det = train_detector(train, reference, DetectorConfig(), out_dir=WORK / "det")
    t_train = time.perf_counter() - t
    print(f"detector trained in {t_train:.0f} s (best epoch {det.best_epoch})", flush=True)
    b_train = base_vectors(det, train)
    e_train = embed(det, train)


def contrastive(x: torch.Tensor) -> np.ndarray:
    return set_nearest(query_vectors(det, x), b_train, "pearson")[0].values.numpy()


REG = RegisterConfig(stages=tuple(args.stages.split(",")), score=args.reg_score)
reg_runs: dict[int, Registered] = {}  # id of the query tensor -> its registration result


def registered(x: torch.Tensor) -> np.ndarray:
    # shortlist: oriented pixel top-k (+ 32-d embedding top-k when the contrastive detector is trained) + coarse search
    emb = (embed(det, x), e_train) if "contrastive" in DETS else (None, None)
    shortlist = candidates(x, train, AlignConfig(shortlist=REG.shortlist), *emb)
    res = registered_nearest(x, train, shortlist, REG, progress=True)
    reg_runs[id(x)] = res
    return res.nearest.values.numpy()


ALIGN = AlignConfig(fine_pairs=args.align_fine_pairs)


def aligned(x: torch.Tensor) -> np.ndarray:
    # shortlist: oriented pixel top-k (+ 32-d embedding top-k when the contrastive detector is trained)
    emb = (embed(det, x), e_train) if "contrastive" in DETS else (None, None)
    return aligned_nearest(x, train, candidates(x, train, ALIGN, *emb), ALIGN).values.numpy()


def pixel(x: torch.Tensor) -> np.ndarray:
    return pixel_nearest(x, train).values.numpy()


def blocks(x: torch.Tensor) -> np.ndarray:
    return block_nearest(x, train).values.numpy()


EITHER_REFS = []  # the reference's plain and oriented block searches, once


def blocks_either(x: torch.Tensor) -> np.ndarray:
    # the registry's "blocks-either": plain or oriented block correlation, the higher reference rank
    if not EITHER_REFS:
        EITHER_REFS.extend((block_nearest(reference, train), block_oriented_nearest_both(reference, train)[0]))
    q = (block_nearest(x, train), block_oriented_nearest_both(x, train)[0])
    return combine_nearest(tuple(EITHER_REFS), q, same_scale=True).values.numpy()


# matched-smoothness references (one per generator-like kind, matched to that set alone)
matched = {k: matched_smoothness(reference, v) for k, v in genlike.items()}
rows, spec_rows, fdr_rows = [], [], []
for name, score in ((d, {"contrastive": contrastive, "pixel": pixel, "blocks": blocks,
                                                 "blocks-either": blocks_either, "aligned": aligned,
                                                 "registered": registered}[d]) for d in DETS):
    t = time.perf_counter()
    ref = score(reference)
    cop = score(copies)
    nov = score(novel)
    gl = {k: score(v) for k, v in genlike.items()}
    mref = {k: score(m.reference) for k, m in matched.items()}
    secs = time.perf_counter() - t
    thr = calibrate_threshold(ref, 95.0)
    hit = is_copy(cop, thr)
    df = pd.DataFrame(meta, columns=["family", "strength", "inside", "source"]).assign(hit=hit, score=cop)
    if name == "registered":
        res = reg_runs[id(copies)]
        df["in_shortlist"] = [int(src) in set(sl.tolist()) for src, sl in zip(df.source, res.shortlists)]
        df["top1"] = res.nearest.indices.numpy() == df.source.to_numpy()
        reg_seconds = {k: round(r.seconds_per_pair, 2) for k, r in (("copies", res), ("reference", reg_runs[id(reference)]),
                                                                     ("novel", reg_runs[id(novel)]))}
    for (fam, s), g in df.groupby(["family", "strength"], sort=False):
        rows.append({"detector": name, "family": fam, "strength": s, "inside": bool(g.inside.iloc[0]),
                     "sensitivity": g.hit.mean(), "median_score": g.score.median(),
                     **({"shortlist_recall": g.in_shortlist.mean(), "top1": g.top1.mean()} if name == "registered" else {})})
    inside = df[df.inside]
    rows.append({"detector": name, "family": "all-inside", "strength": 0, "inside": True,
                 "sensitivity": inside.hit.mean(), "median_score": inside.score.median()})
    # by how much the source patch varies (terciles of the training patches' voxel standard deviation): a copy of a
    # near-uniform patch shows little anatomy to recognise, whatever the detector
    tercile = np.searchsorted(np.quantile(SOURCE_STD, [1 / 3, 2 / 3]), SOURCE_STD[inside.source.to_numpy()])
    for t, g in inside.groupby(tercile):
        rows.append({"detector": name, "family": f"all-inside, source std tercile {t + 1}", "strength": 0,
                     "inside": True, "sensitivity": g.hit.mean(), "median_score": g.score.median()})
    spec = {"detector": name, "threshold": thr.value, "seconds_scoring": round(secs, 1),
            "plain": 1 - is_copy(nov, thr).mean()}
    for k in genlike:
        spec[k] = 1 - is_copy(gl[k], thr).mean()
        spec[f"{k}@matched"] = 1 - is_copy(gl[k], calibrate_threshold(mref[k], 95.0)).mean()
    spec_rows.append(spec)
    # conformal p-values + BH on one synthetic set: all inside copies + plain and mixed generator-like novel
    if "mixed" not in gl:
        print(f"{name} scored in {secs:.0f} s", flush=True)
        continue
    syn = np.concatenate([inside.score.to_numpy(), nov, gl["mixed"]])
    truth = np.r_[np.ones(len(inside), bool), np.zeros(len(nov) + len(gl["mixed"]), bool)]
    for label, r in (("plain ref", ref), ("matched ref (mixed)", mref["mixed"])):
        d = copy_decisions(syn, r, q=0.05)
        pct = is_copy(syn, calibrate_threshold(r, 95.0))
        fdr_rows.append({"detector": name, "reference": label, "bh_flagged": d.n_flagged,
                         "bh_tpr": d.flagged[truth].mean(), "bh_fdp": (d.flagged & ~truth).sum() / max(1, d.n_flagged),
                         "p95_flagged": int(pct.sum()), "p95_tpr": pct[truth].mean(),
                         "p95_fdp": (pct & ~truth).sum() / max(1, pct.sum())})
    print(f"{name} scored in {secs:.0f} s", flush=True)

tab = pd.DataFrame(rows)
wide = tab.pivot_table(index=["family", "strength", "inside"], columns="detector", values="sensitivity", sort=False)
pd.set_option("display.width", 200)
print(f"\nSensitivity at the 95th-percentile threshold ({PER} copies per cell; the last rows: the copies inside the "
      "definition by their source patch's voxel standard deviation, terciles "
      + ", ".join(f"{v:.3f}" for v in np.quantile(SOURCE_STD, [1 / 3, 2 / 3])) + "):")
print(wide.round(3).to_string())
if "registered" in DETS:
    reg_tab = tab[tab.detector == "registered"][["family", "strength", "inside", "sensitivity", "shortlist_recall", "top1"]]
    print("\nregistered: shortlist recall (true source among the registered candidates) and top-1 source hit:")
    print(reg_tab.round(3).to_string(index=False))
    print(f"registered seconds per pair (contended): {reg_seconds}")
print(f"\nSpecificity on novel volumes ({N} each); '@matched' = threshold from the reference blurred to that set's smoothness:")
print(pd.DataFrame(spec_rows).round(3).to_string(index=False))
print(f"\nOne synthetic set = all inside copies + {N} plain + {N} generator-like (mixed) novel; BH at q=0.05 vs 95th-pct rule:")
print(pd.DataFrame(fdr_rows).round(3).to_string(index=False))
print("\nmatched reference per kind: " + "; ".join(f"{k} sigma {m.sigma:.2f} noise {m.noise:.3f} (rough {m.reference_roughness:.3f}->{m.matched_roughness:.3f} target {m.synthetic_roughness:.3f})" for k, m in matched.items()))
print(f"\ntotal {time.perf_counter() - T0:.0f} s (detector training {t_train:.0f} s)")
json.dump({"args": vars(args), "sensitivity": rows, "specificity": spec_rows, "fdr": fdr_rows, "gen_seconds": gen_seconds},
          open(WORK / "families.json", "w"), default=float, indent=1)
