"""``memostudy validate-detector``: sensitivity, specificity and ROC AUC of the copy detectors on known
copies of training patches versus novel held-out patches, overall and per transform family."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``validate-detector`` verb."""
    p = sub.add_parser("validate-detector",
                       help="measure the copy detectors on known copies (per transform family) vs novel real patches")
    p.add_argument("data", help="prepared data set name (e.g. demo-ct) or folder; uses its train and validation splits")
    p.add_argument("--out", required=True, help="output folder (validation.csv, validation.json, validation.html)")
    p.add_argument("--cache", default=None, help="cache root of prepared data sets")
    p.add_argument("--detector", default=None, help="detector checkpoint; default: train one on the train split")
    p.add_argument("--copies-per-family", type=int, default=100, help="training patches copied per family")
    p.add_argument("--percentile", type=float, default=95.0, help="threshold percentile of the reference similarities")
    p.add_argument("--metric", default="pearson", choices=["pearson", "msd"], help="embedding similarity")
    p.add_argument("--limit", type=int, default=None, help="use only the first N patches of each split (quick runs)")
    p.add_argument("--seed", type=int, default=0, help="seed of the reference/novel split and the copies")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="detector or comparison setting, e.g. --set epochs=10 (repeatable); the comparison settings "
                        "(representation, search_shift, orientation_pooling) apply to a --detector too")
    p.add_argument("--force", action="store_true", help="replace results already in --out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load the splits, train or load the detector, validate, write table + JSON + HTML."""
    import json
    from pathlib import Path

    from memostudy.config import parse_set_options, provenance
    from memostudy.detect.matching import configs_from_overrides
    from memostudy.detect.validation import ValidationConfig, run_validation
    from memostudy.errors import RunExistsError
    from memostudy.report.figures import roc_figure, validation_figure
    from memostudy.report.page import html_page

    out = Path(args.out)
    files = [out / f for f in ("validation.csv", "validation.json", "validation.html")]
    if any(f.exists() for f in files) and not args.force:
        raise RunExistsError(f"{out}: already holds detector validation results; pass --force or choose another --out")
    det_cfg, compare = configs_from_overrides(parse_set_options(args.set))
    vcfg = ValidationConfig(copies_per_family=args.copies_per_family, percentile=args.percentile,
                            metric=args.metric, seed=args.seed, compare=compare).validate()
    out.mkdir(parents=True, exist_ok=True)
    res, detector, record = run_validation(args.data, det_cfg, vcfg, detector_path=args.detector, out_dir=str(out),
                                           cache=args.cache, limit=args.limit)
    res.table.to_csv(files[0], index=False)
    summary = {**res.summary, **record, "provenance": provenance()}
    files[1].write_text(json.dumps(summary, indent=2, default=str))
    files[2].write_text(html_page(f"Detector validation on {args.data}", [
        ("Table", res.table), ("ROC", roc_figure(res.scores)), ("Sensitivity", validation_figure(res.table)), ("ROC AUC", validation_figure(res.table, "auc"))]))
    cols = ["detector", "family", "sensitivity", "specificity", "auc", "sensitivity_at_spec", "source_match"]
    print(res.table[cols].to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print(f"wrote {files[0]}, {files[1].name}, {files[2].name}")
    return 0
