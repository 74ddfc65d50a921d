"""Does the copy threshold stay calibrated when generated volumes are smoother than real ones? Nominal vs
measured false-positive rate on generator-like novel volumes, with the reference scored as it is and matched
to the synthetic set's smoothness (`memostudy.detect.calibration.matched_smoothness`, what
`memostudy audit --reference-smoothness matched` does).

demo-ct, split by subject as the other benchmarks: ``--n-train`` training patches from the train split
(lung2), the validation split (lung1) held out. Every held-out patch is also made generator-like
(`memostudy.detect.families.generator_like`: smooth, noisy, lowres, mixed). Each detector scores every held-out
patch as it is, each generator-like version, and each matched-smoothness version (the held-out patches
degraded to that kind's measured smoothness and noise). Then, over ``--splits`` random splits of the held-out
patches into reference and novel halves (disjoint patches): threshold = 95th percentile of the reference's
scores (plain or matched), false-positive rate = share of the novel half's generator-like versions above it
(nominal 0.05); and Benjamini-Hochberg at q = 0.05 over the novel half (all novel, so any flag is a false
discovery: nominal P(any flag) <= 0.05). No tuning: the detector is the default config trained once.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_calibration.py [--n-train 80] [--n-held 160]

Prints, per detector, reference treatment and generator-like kind: nominal and measured FPR (mean over the
splits, and the 5th-95th percentile range) and the share of splits where BH flagged any novel volume.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from memostudy.data.patches import load_patches
from memostudy.detect.alignment import AlignConfig
from memostudy.detect.calibration import copy_decisions, matched_smoothness, noise_std, roughness
from memostudy.detect.detector import DetectorConfig, train_detector
from memostudy.detect.families import GENERATOR_KINDS, generator_like
from memostudy.detect.metrics import calibrate_threshold, is_copy
from memostudy.detect.registry import Searches

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--n-train", type=int, default=80, help="training patches (train split)")
parser.add_argument("--n-held", type=int, default=160, help="held-out patches (validation split), halved per split")
parser.add_argument("--splits", type=int, default=200, help="random reference / novel splits")
parser.add_argument("--kinds", default=",".join(GENERATOR_KINDS), help="generator-like kinds, comma-separated")
parser.add_argument("--detectors", default="contrastive,pixel,aligned", help="comma-separated registry names")
parser.add_argument("--epochs", type=int, default=DetectorConfig().epochs, help="detector epochs (default: the default config's)")
parser.add_argument("--percentile", type=float, default=95.0)
parser.add_argument("--fdr", type=float, default=0.05)
parser.add_argument("--work", default=None, help="folder for the detector and calibration.json (default: temporary)")
args = parser.parse_args()
WORK = Path(args.work or tempfile.mkdtemp(prefix="bench-calibration-"))
WORK.mkdir(parents=True, exist_ok=True)
T0 = time.perf_counter()
rng = np.random.default_rng(0)
train_all = load_patches("demo-ct", "train").volumes
held_all = load_patches("demo-ct", "validation").volumes
pick = np.sort(rng.choice(len(train_all), args.n_train + 40, replace=False))
train, val = train_all[torch.from_numpy(pick[:args.n_train])], train_all[torch.from_numpy(pick[args.n_train:])]
held = held_all[torch.from_numpy(np.sort(rng.choice(len(held_all), min(args.n_held, len(held_all)), replace=False)))]
print(f"data: train {tuple(train.shape)}, held-out {len(held)} (validation split, other subjects)", flush=True)

KINDS = args.kinds.split(",")
genlike = {k: generator_like(held, k, seed=7 + GENERATOR_KINDS.index(k)) for k in KINDS}
matched = {k: matched_smoothness(held, v) for k, v in genlike.items()}
sets = {"held": held} | {f"gen_{k}": v for k, v in genlike.items()} | {f"matched_{k}": m.reference for k, m in matched.items()}
print("median roughness / noise std: " + ", ".join(f"{k} {roughness(v).median():.3f} / {noise_std(v).median():.4f}"
                                                   for k, v in sets.items()), flush=True)
print("matched: " + "; ".join(f"{k} sigma {m.sigma:.2f} noise {m.noise:.3f}" for k, m in matched.items()), flush=True)

names = args.detectors.split(",")
t = time.perf_counter()
needs_detector = {"contrastive", "contrastive-32d", "aligned", "combined"} & set(names)  # aligned shortlists by embedding
det = train_detector(train, val, DetectorConfig(epochs=args.epochs), out_dir=WORK / "det") if needs_detector else None
t_train = time.perf_counter() - t
print(f"detector trained in {t_train:.0f} s (best epoch {det.best_epoch if det else '-'})", flush=True)
search = Searches(det, train, sets, align=AlignConfig(), reference="held")  # type: ignore[arg-type]
scores, secs = {}, {}
for name in names:
    t = time.perf_counter()
    scores[name] = {k: search.nearest(name, k).values.double().numpy() for k in sets}
    secs[name] = round(time.perf_counter() - t, 1)
    print(f"{name}: scored {len(sets) * len(held)} volumes in {secs[name]} s", flush=True)

rows = []
half = len(held) // 2
splits = [rng.permutation(len(held)) for _ in range(args.splits)]
nominal = 1 - args.percentile / 100
for name in names:
    sc = scores[name]
    for kind in ("plain", *KINDS):
        novel_scores = sc["held"] if kind == "plain" else sc[f"gen_{kind}"]
        treatments = [("as-is", sc["held"])] + ([] if kind == "plain" else [("matched", sc[f"matched_{kind}"])])
        for treatment, ref_scores in treatments:
            fpr, any_bh = [], []
            for perm in splits:
                ref, nov = ref_scores[perm[:half]], novel_scores[perm[half:]]
                fpr.append(is_copy(nov, calibrate_threshold(ref, args.percentile)).mean())
                any_bh.append(copy_decisions(nov, ref, args.fdr).n_flagged > 0)
            rows.append({"detector": name, "novel": kind, "reference": treatment, "nominal_fpr": nominal,
                         "measured_fpr": float(np.mean(fpr)), "fpr_p5": float(np.percentile(fpr, 5)),
                         "fpr_p95": float(np.percentile(fpr, 95)), "bh_any_flag": float(np.mean(any_bh))})

tab = pd.DataFrame(rows)
pd.set_option("display.width", 200)
print(f"\nFalse-positive rate on novel volumes, threshold = {args.percentile:g}th percentile of {half} reference volumes, "
      f"{half} novel per split, {args.splits} splits; bh_any_flag = share of splits where BH (q = {args.fdr:g}) "
      f"flagged any of the (all novel) volumes:")
print(tab.round(3).to_string(index=False))
print(f"\ntotal {time.perf_counter() - T0:.0f} s (detector training {t_train:.0f} s; scoring {secs})")
json.dump({"rows": rows, "matched": {k: {"sigma": m.sigma, "noise": m.noise, "reference_roughness": m.reference_roughness,
                                         "synthetic_roughness": m.synthetic_roughness, "matched_roughness": m.matched_roughness}
                                     for k, m in matched.items()}, "seconds": secs, "args": vars(args)},
          open(WORK / "calibration.json", "w"), indent=1)
