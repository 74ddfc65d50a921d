"""``memostudy audit``: which synthetic volumes (from any model) are copies of training patients.

The folders hold 3D volumes (NIfTI, NRRD, DICOM series) or 2D images (PNG, 2D NIfTI, single-frame DICOM),
all of one kind and shape (:func:`memostudy.data.volume_io.read_volume_folder`); the detectors work on either
from the data's shape."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``audit`` verb."""
    p = sub.add_parser("audit", help="find copies of training volumes among synthetic volumes (folders of NIfTI/NRRD/DICOM "
                                    "volumes, or of PNG/NIfTI/DICOM 2D images)")
    p.add_argument("--train", required=True, help="folder of the training volumes the generator saw")
    p.add_argument("--reference", required=True, help="folder of real volumes never trained on (calibrates the threshold)")
    p.add_argument("--synthetic", required=True, help="folder of generated volumes to audit")
    p.add_argument("--out", required=True,
                   help="output folder (summary.json, synthetic.csv, train.csv, reference.csv, evidence.csv, report.html)")
    p.add_argument("--detector", default=None, help="detector checkpoint (detector.pt); default: train one on --train")
    p.add_argument("--percentile", type=float, default=95.0, help="threshold percentile of the reference similarities")
    p.add_argument("--fdr", type=float, default=0.05,
                   help="false-discovery rate of the Benjamini-Hochberg decisions on the conformal p-values, reported "
                        "beside the percentile rule (columns p_value, q_value, bh_copy)")
    p.add_argument("--reference-smoothness", default="as-is", choices=["as-is", "matched"],
                   help="matched: blur and noise the reference to the synthetic set's measured smoothness and noise "
                        "before scoring it, so the threshold holds for smoother generated volumes (the measured "
                        "smoothness of each set is in summary.json either way)")
    p.add_argument("--metric", default="pearson", choices=["pearson", "msd"], help="embedding similarity")
    p.add_argument("--intensity", default="auto", choices=["auto", "as-stored", "joint"],
                   help="auto: use volumes as stored when train and reference lie in [-1, 1], else map train's 0.5-99.5th "
                        "percentile to [-1, 1] and apply that one map to all folders")
    p.add_argument("--no-pixel", action="store_true", help="skip the pixel-correlation baseline")
    p.add_argument("--no-blocks", action="store_true",
                   help="skip the block correlation (the best half of 8^3 blocks; a few times the pixel baseline's cost)")
    p.add_argument("--no-oriented-blocks", action="store_true",
                   help="skip blocks-either (the block correlation also in each pair's best flip or 90-degree rotation, "
                        "on a shortlist of pairs; it finds flipped and rotated copies)")
    p.add_argument("--no-aligned", action="store_true",
                   help="skip the aligned pixel correlation and the combined detector (about 0.2 s per volume of 32^3)")
    p.add_argument("--no-contrastive", action="store_true",
                   help="skip the contrastive detector: no detector training and no encoding, the training-free block "
                        "correlations and pixel baseline only (blocks-either is then the headline); the fast path for "
                        "large sets. Implies --no-aligned (its shortlist is the contrastive embedding)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="detector or comparison setting, e.g. --set epochs=10 (repeatable); the comparison settings "
                        "(representation=latent|embedding, search_shift=VOXELS, orientation_pooling=true|false) apply "
                        "to a --detector too, the others only to a detector trained here")
    p.add_argument("--force", action="store_true", help="replace results already in --out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Check the inputs, read the folders, train or load the detector, assess, write the files (aside, then
    moved in), print the headline. Nothing is created in ``--out`` before the inputs are known to be good."""
    import shutil
    import time

    from memostudy.config import parse_set_options
    from memostudy.data.volume_io import read_volume_folder
    from memostudy.detect.assessment import AssessConfig, assess, check_intensities, scale_intensities
    from memostudy.detect.detector import load_detector, load_or_train_detector
    from memostudy.detect.matching import configs_from_overrides
    from memostudy.errors import ConfigError, DataError, RunExistsError
    from memostudy.report.audit import COMPLETE_MARKER, check_out_dir, locked, new_build, write_audit

    det_cfg, compare = configs_from_overrides(parse_set_options(args.set))
    if args.no_contrastive and (args.detector or args.set):
        raise ConfigError(f"--no-contrastive runs no contrastive detector, so --{'detector' if args.detector else 'set'} "
                          "has nothing to apply to: pass one or the other")
    cfg = AssessConfig(percentile=args.percentile, metric=args.metric, pixel_baseline=not args.no_pixel,
                       contrastive=not args.no_contrastive, blocks=not args.no_blocks,
                       blocks_oriented=not (args.no_blocks or args.no_oriented_blocks),
                       aligned=not (args.no_aligned or args.no_contrastive), compare=compare, fdr=args.fdr,
                       reference_smoothness=args.reference_smoothness).validate()
    out = check_out_dir(args.out, args.force, create=False)
    own_detector = out / "detector.pt"
    if not args.detector and not args.no_contrastive and own_detector.exists() and not args.force:
        raise RunExistsError(f"{own_detector}: a detector is already there and would be replaced; pass --detector "
                             f"{own_detector} to use it, --force to replace it, or choose another --out")
    t0 = time.perf_counter()
    sets = {}
    for name in ("train", "reference", "synthetic"):
        vols, ids, spacing = read_volume_folder(getattr(args, name), progress=True)
        sets[name] = (vols, ids)
        kind = "2D image(s)" if vols.ndim == 4 else "volume(s)"
        print(f"{name}: {len(ids)} {kind} of shape {tuple(vols.shape[2:])} from {getattr(args, name)}")
    shape = sets["train"][0].shape[2:]
    for name in ("reference", "synthetic"):
        if sets[name][0].shape[2:] != shape:
            raise DataError(f"{getattr(args, name)}: {_kind(sets[name][0])} are {tuple(sets[name][0].shape[2:])} but "
                            f"--train {_kind(sets['train'][0])} are {tuple(shape)}; crop or resample every folder to one "
                            "shape (e.g. the patch size of the study), all 2D images or all 3D volumes")
    check_intensities({name: (v, ids, getattr(args, name)) for name, (v, ids) in sets.items()})
    _check_reference_apart(args.train, args.reference, sets["train"], sets["reference"])
    (train, reference, synthetic), intensity = scale_intensities(sets["train"][0], sets["reference"][0],
                                                                 sets["synthetic"][0], args.intensity, in_place=True)
    print(f"intensities: {intensity['rule']}" + (f" (train [{intensity['lo']:.4g}, {intensity['hi']:.4g}] -> [-1, 1])"
                                                if intensity["rule"] == "joint" else ""))
    loaded = load_detector(args.detector) if args.detector else None  # a bad checkpoint fails before --out exists
    t_read = time.perf_counter() - t0
    check_out_dir(out, args.force)
    with locked(out):
        check_out_dir(out, args.force)  # again: another audit may have finished while this one read its inputs
        build = new_build(out)
        try:
            if args.no_contrastive:
                print("detector: none (--no-contrastive: the block correlation and pixel baseline need no training)")
                detector = None
            elif loaded is not None:
                print(f"detector: loading {args.detector}")
                detector = loaded
            else:
                print(f"detector: training on {len(train)} {_kind(train)}, {det_cfg.epochs} epoch(s) (reference = validation)")
                detector = load_or_train_detector(train, reference, det_cfg, out_dir=out, progress=True,
                                                  save_to=build / "detector.pt")
            t_train = time.perf_counter() - t0 - t_read
            a = assess(train, reference, synthetic, detector, sets["train"][1], sets["reference"][1], sets["synthetic"][1],
                       cfg=cfg)
            t_assess = time.perf_counter() - t0 - t_read - t_train
            extra = {"inputs": {"train": str(args.train), "reference": str(args.reference), "synthetic": str(args.synthetic),
                                "detector": None if args.no_contrastive else args.detector or str(out / "detector.pt"),
                                "shape": list(shape)},
                     "intensity": intensity,
                     "seconds": {"read": round(t_read, 2), "detector": round(t_train, 2), "assess": round(t_assess, 2)}}
            write_audit(a, out, extra=extra, force=args.force, build=build,
                        volumes={"train": (train, sets["train"][1]), "synthetic": (synthetic, sets["synthetic"][1])})
        except BaseException:
            if not (build / COMPLETE_MARKER).exists():  # unfinished results go; complete ones are moved in next run
                shutil.rmtree(build, ignore_errors=True)
            raise
        for old in out.glob("detector_training.aside-*"):  # training folders of the results just replaced
            shutil.rmtree(old, ignore_errors=True)
    c, found, lead = a.summary.headline, a.summary.detectors, a.summary.headline_detector
    print(f"headline detector: {lead}; threshold {c.threshold:.6g} ({cfg.metric if lead == 'contrastive' else lead}, "
          f"{cfg.percentile:g}th percentile of reference)")
    print(f"memorized: {c.memorized.value:.1%} of training volumes [{c.memorized.lo:.1%}, {c.memorized.hi:.1%}]")
    print(f"copies: {c.copies.value:.1%} of synthetic volumes [{c.copies.lo:.1%}, {c.copies.hi:.1%}]")
    print(f"copies by Benjamini-Hochberg at FDR {cfg.fdr:g}: {c.n_bh_copies} of {a.summary.n_synthetic} "
          f"(smallest p-value {c.min_p_value:.3g}, at least 1/{a.summary.n_reference + 1} with this reference)")
    sm = a.summary.smoothness
    print(f"reference scored {sm['reference_smoothness']}; median roughness "
          + ", ".join(f"{k} {v:.3g}" for k, v in sm["roughness"].items()))
    if "combined" in found:
        co = found["combined"]
        print(f"combined (contrastive or aligned): copies {co.copies.value:.1%}, memorized {co.memorized.value:.1%}, "
              f"BH {co.n_bh_copies}")
    for name, words in (("blocks-either", "block correlation, plain or oriented"), ("blocks", "block correlation")):
        if name in found and lead != name:
            bl = found[name]
            print(f"{words}: copies {bl.copies.value:.1%}, memorized {bl.memorized.value:.1%} "
                  f"(threshold {bl.threshold:.4g})")
    if "pixel" in found and lead != "pixel":
        px = found["pixel"]
        print(f"pixel baseline: copies {px.copies.value:.1%}, memorized {px.memorized.value:.1%} "
              f"(threshold {px.threshold:.4g})")
    print(f"wrote {out}/summary.json, synthetic.csv, train.csv, reference.csv, evidence.csv ({len(a.evidence)} rows), "
          "report.html")
    return 0


def _kind(vols) -> str:
    """"2D images" for an (N, 1, H, W) batch, "volumes" for (N, 1, D, H, W)."""
    return "2D images" if vols.ndim == 4 else "volumes"


def _check_reference_apart(train_dir: str, reference_dir: str, train: tuple, reference: tuple) -> None:
    """Refuse a reference set that is the training set (same folder, or the same volumes): the threshold
    would be the training volumes' similarity to themselves (1) and every copy would be missed. Warn in
    one line when only some reference volumes are training volumes.

    Args:
        train_dir, reference_dir: the folders as given.
        train, reference: (volumes (N, 1, D, H, W) or images (N, 1, H, W), file names) as read.
    """
    import hashlib
    import sys
    from pathlib import Path

    from memostudy.errors import DataError

    if Path(train_dir).resolve() == Path(reference_dir).resolve():
        raise DataError(f"--reference {reference_dir} is the --train folder; pass real volumes never trained on as "
                        "--reference (e.g. the validation or test split)")

    def digests(vols) -> list[str]:
        return [hashlib.sha256(v.contiguous().numpy().tobytes()).hexdigest() for v in vols]

    seen = set(digests(train[0]))
    shared = [name for name, d in zip(reference[1], digests(reference[0])) if d in seen]
    if len(shared) == len(reference[1]):
        raise DataError(f"--reference {reference_dir}: every volume is also in --train {train_dir}; pass real volumes "
                        "never trained on as --reference (e.g. the validation or test split)")
    if shared:
        print(f"memostudy: warning: {len(shared)} of {len(reference[1])} --reference volume(s) are also in --train "
              f"(e.g. {shared[0]}); they raise the threshold: remove them from {reference_dir}", file=sys.stderr)
