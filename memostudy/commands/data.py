"""``memostudy data prepare|manifest``: build patch data sets; write manifests for your own folders."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``data`` verb and its two sub-verbs."""
    p = sub.add_parser("data", help="prepare patch data sets from manifests; write manifests for your folders")
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    prep = dsub.add_parser("prepare", help="build the patches of a manifest into the cache and print a summary")
    prep.add_argument("manifest", help="manifest name (demo-ct, demo-mr) or path to a manifest YAML")
    prep.add_argument("--cache", default=None, help="cache root (default $MEMOSTUDY_CACHE or ~/.cache/memostudy)")
    prep.add_argument("--patch-size", type=int, default=None, help="override the cubic patch size (e.g. 64; square for a 2D manifest)")
    prep.add_argument("--force", action="store_true",
                      help="rebuild and replace the cached data set (the old one stays until the new one is complete)")
    prep.set_defaults(func=run_prepare)
    man = dsub.add_parser("manifest", help="write a manifest (with checksums) for a folder of volumes")
    man.add_argument("folder", help="folder of NIfTI/NRRD volumes, DICOM series folders, or the MRNet .npy layout")
    man.add_argument("--out", required=True, help="manifest YAML to write (must not exist)")
    man.add_argument("--name", default=None,
                     help="data set name: letters, digits, '.', '_', '-' (default: the folder's name)")
    man.add_argument("--modality", default="MR", choices=["CT", "MR"], help="sets the intensity and foreground rules")
    man.add_argument("--patch-size", type=int, default=32)
    man.add_argument("--spacing", type=float, default=1.0, help="isotropic target spacing in mm (0: keep native)")
    man.add_argument("--seed", type=int, default=0, help="seed of the subject-level split")
    man.set_defaults(func=run_manifest)


def run_prepare(args: argparse.Namespace) -> int:
    """Prepare a data set and print its summary."""
    from memostudy.data.prepare import prepare

    summary = prepare(args.manifest, cache=args.cache, force=args.force, patch_size=args.patch_size)
    print("\n".join(summary.lines()))
    return 0


def run_manifest(args: argparse.Namespace) -> int:
    """Write a manifest for a folder and say how to prepare it."""
    from memostudy.data.manifest import load_manifest, manifest_from_folder

    out = manifest_from_folder(args.folder, args.out, name=args.name, modality=args.modality,
                               patch_size=args.patch_size, spacing=args.spacing or None, seed=args.seed)
    m = load_manifest(out)
    splits = m.split_of()
    counts = {s: sum(1 for v in splits.values() if v == s) for s in ("train", "validation", "test")}
    print(f"wrote {out}: {len(m.volumes)} volume(s), {len(splits)} subject(s) "
          f"(train {counts['train']}, validation {counts['validation']}, test {counts['test']})")
    print(f"next: memostudy data prepare {out}")
    return 0
