"""A generated corpus of bad data input: every case exits 2 with one line naming the file or field and
what to do, no traceback and no warning, leaves its input files unchanged and writes nothing.

Each case builds a small cohort (``write_cohort``: 16x16x8 CT-like NIfTI files), a valid manifest
for it, damages one thing, and runs the real command line in-process.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

from memostudy.cli import main
from memostudy.data.manifest import manifest_from_folder
from memostudy.data.volume_io import write_nifti
from tests.conftest import write_cohort

Case = Callable[[Path], list[str]]


def _manifest(tmp: Path, modality: str = "CT", edit: Callable[[dict], None] | None = None) -> Path:
    """A valid manifest for a four-subject cohort under ``tmp``, then ``edit`` applied to its YAML."""
    m = manifest_from_folder(write_cohort(tmp / "vols"), tmp / "m.yaml", name="toy", modality=modality, patch_size=8)
    if edit is not None:
        raw = yaml.safe_load(m.read_text())
        edit(raw)
        m.write_text(yaml.safe_dump(raw, sort_keys=False))
    return m


def _prepare(tmp: Path, *extra: str, **kw) -> list[str]:
    return ["data", "prepare", str(_manifest(tmp, **kw)), "--cache", str(tmp / "cache"), *extra]


def _set(path: str, value) -> Callable[[dict], None]:
    """An edit setting ``a.b.c`` of the manifest to ``value``."""
    def edit(raw: dict) -> None:
        *parents, last = path.split(".")
        for p in parents:
            raw = raw[p]
        raw[last] = value
    return edit


def _victim_beside_cache(tmp: Path) -> list[str]:
    (tmp / "victim").mkdir()
    (tmp / "victim" / "precious.txt").write_text("a user's file beside the cache\n")
    return _prepare(tmp, edit=_set("name", "../victim"))


def _subject_escaping(tmp: Path) -> list[str]:
    def edit(raw: dict) -> None:
        raw["volumes"][0]["subject"] = "../../../escaped"
    return _prepare(tmp, edit=edit)


def _all_zero_volume(tmp: Path) -> list[str]:
    m = _manifest(tmp, modality="MR")
    write_nifti(tmp / "vols" / "subj1.nii.gz", np.zeros((16, 16, 8), np.float32), (2.0, 2.0, 4.0))
    raw = yaml.safe_load(m.read_text())
    raw["volumes"][1]["sha256"] = hashlib.sha256((tmp / "vols" / "subj1.nii.gz").read_bytes()).hexdigest()
    m.write_text(yaml.safe_dump(raw, sort_keys=False))
    return ["data", "prepare", str(m), "--cache", str(tmp / "cache")]


def _text_named_nii(tmp: Path) -> list[str]:
    vols = write_cohort(tmp / "vols")
    (vols / "subj1.nii.gz").unlink()
    (vols / "subj1.nii").write_text("this is a text file, not a volume\n" * 20)
    m = manifest_from_folder(vols, tmp / "m.yaml", name="toy", modality="CT", patch_size=8)
    return ["data", "prepare", str(m), "--cache", str(tmp / "cache")]


def _file(path: Path) -> Path:
    path.write_text("not a folder\n")
    return path


def _manifest_cmd(*extra: str) -> Case:
    def case(tmp: Path) -> list[str]:
        return ["data", "manifest", str(write_cohort(tmp / "vols")), "--out", str(tmp / "out.yaml"), *extra]
    return case


# case id -> (build the input and return the argv, substrings the error line must hold)
CASES: dict[str, tuple[Case, list[str]]] = {
    "name ../victim": (_victim_beside_cache, ["m.yaml", "name: got '../victim'", "use 1-100 letters"]),
    "name a/b": (lambda t: _prepare(t, edit=_set("name", "a/b")), ["m.yaml", "name: got 'a/b'"]),
    "manifest --name ../../etc": (_manifest_cmd("--name", "../../etc"), ["--name '../../etc'", "use 1-100 letters"]),
    "volumes: 5": (lambda t: _prepare(t, edit=_set("volumes", 5)), ["m.yaml", "volumes: got 5", "list the volumes"]),
    "preprocessing: null": (lambda t: _prepare(t, edit=_set("preprocessing", None)),
                            ["m.yaml", "preprocessing: got None", "use a mapping of"]),
    "split: null": (lambda t: _prepare(t, edit=_set("split", None)), ["m.yaml", "split: got None", "use {kind:"]),
    "no name": (lambda t: _prepare(t, edit=lambda raw: raw.pop("name")), ["m.yaml", "name: missing"]),
    "patch_size: abc": (lambda t: _prepare(t, edit=_set("preprocessing.patch_size", "abc")),
                        ["m.yaml", "preprocessing.patch_size: got 'abc'", "positive whole number"]),
    "patch_size: [8, 0, 8]": (lambda t: _prepare(t, edit=_set("preprocessing.patch_size", [8, 0, 8])),
                              ["preprocessing.patch_size", "positive whole number"]),
    "fractions: seventy": (lambda t: _prepare(t, edit=_set("split.fractions", "seventy")),
                           ["m.yaml", "split.fractions: got 'seventy'", "numbers between 0 and 1"]),
    "fractions add up to 1.75": (lambda t: _prepare(t, edit=_set("split.fractions.validation", 0.9)),
                                ["m.yaml", "split.fractions: add up to 1.75", "add up to 1"]),
    "fractions with a typo": (lambda t: _prepare(t, edit=_set("split.fractions.valid", 0.1)),
                              ["split.fractions", "'valid' was unexpected"]),
    "spacing [-1, 1, 1]": (lambda t: _prepare(t, edit=_set("preprocessing.spacing", [-1, 1, 1])),
                           ["preprocessing.spacing: got [-1, 1, 1]", "three positive numbers"]),
    "window lo > hi": (lambda t: _prepare(t, edit=_set("preprocessing.intensity.lo", 2000)),
                       ["preprocessing.intensity: lo 2000 is not below hi 1000"]),
    "min_foreground 5": (lambda t: _prepare(t, edit=_set("preprocessing.min_foreground", 5)),
                         ["preprocessing.min_foreground: got 5", "between 0 and 1"]),
    "intensity kind": (lambda t: _prepare(t, edit=_set("preprocessing.intensity.kind", "zscore")),
                       ["preprocessing.intensity.kind: got 'zscore'", "use one of window, percentile"]),
    "source kind ftp": (lambda t: _prepare(t, edit=_set("source.kind", "ftp")),
                        ["source.kind: got 'ftp'", "folder, pypi-sdist"]),
    "sdist archive ../x": (lambda t: _prepare(t, edit=_set("source", {
        "kind": "pypi-sdist", "package": "pyradiomics", "version": "3.0.1", "archive": "../x.tar.gz",
        "sha256": "0" * 64, "members_root": "data"})), ["source.archive: got '../x.tar.gz'", "without a folder"]),
    "subject ../../../escaped": (_subject_escaping, ["volumes[0].subject: got '../../../escaped'"]),
    "sha256 not hex": (lambda t: _prepare(t, edit=lambda raw: raw["volumes"][2].update(sha256="abc")),
                       ["volumes[2].sha256: got 'abc'", "64 hex digits"]),
    "prepare --patch-size -4": (lambda t: _prepare(t, "--patch-size", "-4"), ["--patch-size -4", "positive whole"]),
    "prepare --patch-size 0": (lambda t: _prepare(t, "--patch-size", "0"), ["--patch-size 0", "positive whole"]),
    "manifest --patch-size 0": (_manifest_cmd("--patch-size", "0"), ["--patch-size 0", "positive whole"]),
    "manifest --spacing -1": (_manifest_cmd("--spacing", "-1"), ["--spacing -1.0", "positive spacing in mm"]),
    "--cache is a file": (lambda t: [*_prepare(t)[:-1], str(_file(t / "cache-file"))],
                          ["cache-file: cannot use as the cache folder", "pass another --cache"]),
    "all-zero volume": (_all_zero_volume, ["subj1.nii.gz", "every voxel is 0", "remove it from the manifest"]),
    "text file named .nii": (_text_named_nii, ["subj1.nii", "not a NIfTI file", "look like text"]),
}


def _checksums(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and "cache" not in p.relative_to(folder).parts}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_exits_2_with_one_line(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    build, expected = CASES[case]
    argv = build(tmp_path)
    before = _checksums(tmp_path)
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 2, (out, err)
    assert "Traceback" not in err and not [str(w.message) for w in caught]
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("prepare ")]  # skip tqdm
    assert len(lines) == 1 and lines[0].startswith("memostudy: error: "), err
    for text in expected:
        assert text in lines[0], lines[0]
    assert _checksums(tmp_path) == before  # inputs unchanged, nothing written beside them
    cache = tmp_path / "cache"
    assert not cache.exists() or {p.name for p in cache.iterdir()} <= {".locks"}
    assert not (tmp_path / "out.yaml").exists()
    assert not list(tmp_path.rglob("escaped*"))
