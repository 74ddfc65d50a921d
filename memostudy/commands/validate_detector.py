"""``memostudy validate-detector``: sensitivity of the copy detectors on known copies of training patches
under the broad copy definition (per family and strength, seen and held out of the detector's training
views) and specificity on novel and generator-like held-out patches; 3D patches and 2D images alike."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``validate-detector`` verb."""
    from memostudy.detect.families import COPY_FAMILIES
    from memostudy.detect.validation import FOLD_SCHEMES

    p = sub.add_parser("validate-detector",
                       help="measure the copy detectors on known copies (per family and strength, held out of the "
                            "detector's training views) vs novel and generator-like real patches")
    p.add_argument("data", help="prepared data set name (e.g. demo-ct, or a 2D one such as demo-ct-2d) or folder; uses "
                                "its train and validation splits")
    p.add_argument("--out", required=True,
                   help="output folder (validation.csv, sensitivity.csv, specificity.csv, validation.md, "
                        "validation.json, validation.html; detectors under held_out/)")
    p.add_argument("--cache", default=None, help="cache root of prepared data sets")
    p.add_argument("--detector", default=None, help="detector checkpoint; default: train one on the train split")
    p.add_argument("--copies-per-family", type=int, default=40, help="training patches copied per family and strength")
    p.add_argument("--families", default=",".join(COPY_FAMILIES),
                   help=f"comma-separated copy families (default all: {','.join(COPY_FAMILIES)})")
    p.add_argument("--strengths", default="1,2,3", help="comma-separated strengths (1, 2 inside the definition; 3 past it)")
    p.add_argument("--folds", default="kind", choices=FOLD_SCHEMES,
                   help="held-out detectors: one per kind of change (4), one per family, or none (seen only)")
    p.add_argument("--percentile", type=float, default=95.0, help="threshold percentile of the reference similarities")
    p.add_argument("--metric", default="pearson", choices=["pearson", "msd"], help="embedding similarity")
    p.add_argument("--no-aligned", action="store_true", help="skip the aligned and combined detectors (~0.2 s per volume "
                                                             "and fold)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N patches of each split (quick runs)")
    p.add_argument("--seed", type=int, default=0, help="seed of the reference/novel split and the copies")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="detector or comparison setting, e.g. --set epochs=10, --set view_families=rigid,blur "
                        "(repeatable); the comparison settings (representation, search_shift, orientation_pooling) "
                        "apply to a --detector too")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--force", action="store_true", help="replace results already in --out")
    p.set_defaults(func=run)


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def run(args: argparse.Namespace) -> int:
    """Load the splits, train or load the detector (and its held-out detectors), validate, write the tables."""
    import json
    from pathlib import Path

    from memostudy.config import parse_set_options, provenance
    from memostudy.detect.matching import configs_from_overrides
    from memostudy.detect.validation import ValidationConfig, headline, markdown, run_validation, sensitivity_grid
    from memostudy.errors import ConfigError, RunExistsError
    from memostudy.report.figures import roc_figure, validation_figure
    from memostudy.report.page import html_page

    out = Path(args.out)
    names = ("validation.csv", "sensitivity.csv", "specificity.csv", "validation.md", "validation.json",
             "validation.html")
    files = {n: out / n for n in names}
    if any(f.exists() for f in files.values()) and not args.force:
        raise RunExistsError(f"{out}: already holds detector validation results; pass --force or choose another --out")
    det_cfg, compare = configs_from_overrides(parse_set_options(args.set))
    try:
        strengths = tuple(int(s) for s in _names(args.strengths))
    except ValueError:
        raise ConfigError(f"--strengths must be comma-separated integers, got {args.strengths!r}") from None
    vcfg = ValidationConfig(families=_names(args.families), strengths=strengths, folds=args.folds,
                            copies_per_family=args.copies_per_family, percentile=args.percentile,
                            metric=args.metric, seed=args.seed, aligned=not args.no_aligned, compare=compare).validate()
    out.mkdir(parents=True, exist_ok=True)
    res, detector, record = run_validation(args.data, det_cfg, vcfg, detector_path=args.detector, out_dir=str(out),
                                           cache=args.cache, limit=args.limit, progress=not args.no_progress)
    grid = sensitivity_grid(res.table)
    head = headline(res.table, res.specificity)
    res.table.to_csv(files["validation.csv"], index=False)
    grid.to_csv(files["sensitivity.csv"])
    res.specificity.to_csv(files["specificity.csv"], index=False)
    views = ", ".join(detector.config.view_families) or "classic (orientation, shift, blur, intensity, noise)"
    folds = ", ".join(f"{k}: {'+'.join(v[0])}" for k, v in res.folds.items()) or "none trained"
    files["validation.md"].write_text(
        f"# Detector validation on {args.data}\n\nTraining views of the validated detector: {views}. "
        f"Folds: {vcfg.folds} ({folds}).\n\n"
        f"## Over all copies inside the definition\n\n{markdown(head)}\n\n"
        f"## Sensitivity per family and strength (seen / held-out)\n\n{markdown(grid)}\n\n"
        f"## Specificity per novel set and fold\n\n{markdown(res.specificity)}\n")
    summary = {**res.summary, **record, "provenance": provenance()}
    files["validation.json"].write_text(json.dumps(summary, indent=2, default=str))
    seen = res.table[(res.table["scored"] == "seen") & (res.table["strength"] == 0)]
    files["validation.html"].write_text(html_page(f"Detector validation on {args.data}", [
        ("Over all copies inside the definition", head), ("Sensitivity per family and strength", grid.reset_index()),
        ("Specificity", res.specificity),
        ("ROC (seen)", roc_figure(res.scores[res.scores["fold"] == "all"])),
        ("Sensitivity (seen)", validation_figure(seen)),
        ("Sensitivity (held out)", validation_figure(res.table[(res.table["scored"] == "held-out")
                                                               & (res.table["strength"] == 0)]))]))
    print(head.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print(grid.to_string(float_format=lambda x: f"{x:.2f}"))
    print(f"wrote {', '.join(str(f) for f in files.values())}")
    return 0
