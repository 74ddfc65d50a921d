"""The manifest's schema, and the check that turns a bad manifest into one line per problem.

A manifest is checked here before anything runs (nothing is read, fetched or written for a manifest
with a problem). The shape of every field is a JSON Schema (checked with ``jsonschema``); the few
rules that relate two fields (``lo < hi``, fractions adding up to at most 1, every subject with a
split) are checked after it. Each problem becomes one line naming the manifest file, the field
(``split.fractions``, ``volumes[3].subject``) and what to do.

A data set's ``name`` is a folder in the cache, so it must be one safe path component: letters,
digits, ``.``, ``_`` and ``-``, starting with a letter or digit (never ``..`` or a ``/``).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
from jsonschema import Draft202012Validator

from memostudy.errors import DataError

SPLITS = ("train", "validation", "test")
#: planes 2D patches can be cut from (RAS orientation: axial = a fixed S index)
SLICE_PLANES = ("axial",)
FORMAT_HINT = "see data_manifests/demo-ct.yaml for the format"

#: a data set name: one path component in the cache, also typed on the command line
SAFE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
NAME_HINT = "use 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit (it names a folder in the cache)"
#: a subject: part of patch file names, so no path separator, control character, '.' or '..'
SAFE_SUBJECT = r"^(?!\.{1,2}$)[^/\\\x00-\x1f]{1,200}$"

_POS_INT = {"type": "integer", "exclusiveMinimum": 0}
_PERCENT = {"type": "number", "minimum": 0, "maximum": 100}
_FRACTION = {"type": "number", "minimum": 0, "maximum": 1}


def _kinds(kinds: dict[str, list[str]], hint: str) -> dict[str, Any]:
    """An object with a ``kind`` among ``kinds`` and, for each kind, its required fields."""
    return {
        "type": "object", "required": ["kind"], "hint": hint,
        "properties": {"kind": {"enum": list(kinds)}},
        "allOf": [{"if": {"properties": {"kind": {"const": k}}, "required": ["kind"]}, "then": {"required": req}}
                  for k, req in kinds.items() if req],
    }


MANIFEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "hint": "write the manifest as a YAML mapping with name, source, volumes, preprocessing and split",
    "required": ["name", "source", "volumes", "preprocessing", "split"],
    "properties": {
        "name": {"type": "string", "pattern": SAFE_NAME, "hint": NAME_HINT},
        "description": {"type": "string"},
        "modality": {"type": "string"},
        "licence": {"type": "string"},
        "source": {
            **_kinds({"folder": [], "pypi-sdist": ["package", "version", "archive", "sha256", "members_root"]},
                     "use kind: folder (with root) or kind: pypi-sdist"),
            "properties": {
                "kind": {"enum": ["folder", "pypi-sdist"]},
                "root": {"type": "string", "minLength": 1},
                "package": {"type": "string", "pattern": r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$",
                            "hint": "use a PyPI package name"},
                "version": {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9.+!_-]*$", "hint": "use a version like 3.0.1"},
                "archive": {"type": "string", "pattern": SAFE_NAME, "hint": "use the archive's file name, without a folder"},
                "sha256": {"type": "string", "pattern": r"^[0-9a-fA-F]{64}$", "hint": "use 64 hex digits"},
                "members_root": {"type": "string", "pattern": r"^(?!.*(^|/)\.\.(/|$))[^/\\][^\\]*$",
                                 "hint": "use a relative folder inside the archive, without '..'"},
            },
        },
        "volumes": {
            "type": "array", "minItems": 1,
            "hint": "list the volumes, each as {subject, path, sha256} (`memostudy data manifest` writes them)",
            "items": {
                "type": "object", "required": ["subject", "path", "sha256"],
                "hint": "give each volume a subject, path and sha256",
                "properties": {
                    "subject": {"type": ["string", "integer"], "pattern": SAFE_SUBJECT,
                                "hint": "use a subject id without '/', '\\' or control characters, not '.' or '..'"},
                    "path": {"type": "string", "minLength": 1},
                    "sha256": {"type": "string", "pattern": r"^[0-9a-fA-F]{64}$",
                               "hint": "use 64 hex digits; regenerate the manifest with `memostudy data manifest`"},
                },
            },
        },
        "preprocessing": {
            "type": "object", "hint": "use a mapping of spacing, intensity, foreground, min_foreground and patch_size",
            "properties": {
                "spacing": {"anyOf": [{"type": "null"},
                                      {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0},
                                       "minItems": 2, "maxItems": 3}],
                            "hint": "use three positive numbers in mm, e.g. [1.0, 1.0, 1.0] (two, in-plane, for 2D "
                                    "slices), or null to keep native"},
                "intensity": {
                    **_kinds({"window": ["lo", "hi"], "percentile": []},
                             "use {kind: window, lo, hi} (e.g. CT HU) or {kind: percentile, lower, upper}"),
                    "properties": {"kind": {"enum": ["window", "percentile"]}, "lo": {"type": "number"},
                                   "hi": {"type": "number"}, "lower": _PERCENT, "upper": _PERCENT},
                },
                "foreground": {
                    **_kinds({"threshold": ["value"], "fraction_of_percentile": []},
                             "use {kind: threshold, value} or {kind: fraction_of_percentile, percentile, fraction}"),
                    "properties": {"kind": {"enum": ["threshold", "fraction_of_percentile"]}, "value": {"type": "number"},
                                   "percentile": _PERCENT, "fraction": {"type": "number", "minimum": 0}},
                },
                "min_foreground": {**_FRACTION, "hint": "use a fraction of the patch between 0 and 1, e.g. 0.5"},
                "patch_size": {"anyOf": [_POS_INT, {"type": "array", "items": _POS_INT, "minItems": 2, "maxItems": 3}],
                               "hint": "use a positive whole number of voxels, e.g. 32, three of them, or two for "
                                       "2D patches cut from slices (with slices)"},
                # 2D data sets: which slices of each volume the 2D patches are cut from
                "slices": {"type": "object", "required": ["plane", "step_mm"], "additionalProperties": False,
                           "hint": "use {plane: axial, step_mm: 10} (distance between the slices used, in mm)",
                           "properties": {"plane": {"enum": list(SLICE_PLANES)},
                                          "step_mm": {"type": "number", "exclusiveMinimum": 0}}},
            },
        },
        "split": {
            **_kinds({"by_subject": ["assign"], "by_subject_fraction": []},
                     "use {kind: by_subject, assign: {subject: split}} or {kind: by_subject_fraction, fractions, seed}"),
            "required": [],  # kind defaults to by_subject
            "properties": {
                "kind": {"enum": ["by_subject", "by_subject_fraction"]},
                "assign": {"type": "object", "additionalProperties": {"enum": list(SPLITS)},
                           "hint": "map each subject to train, validation or test"},
                "fractions": {"type": "object", "additionalProperties": False,
                              "properties": {s: _FRACTION for s in SPLITS},
                              "hint": "use {train: 0.7, validation: 0.15, test: 0.15} (numbers between 0 and 1)"},
                "seed": {"type": "integer", "hint": "use a whole number"},
            },
        },
    },
}

_VALIDATOR = Draft202012Validator(MANIFEST_SCHEMA)


def _field(path: Any) -> str:
    """``deque(['volumes', 3, 'subject'])`` -> ``volumes[3].subject``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "manifest"


def _schema_problems(raw: Any) -> list[str]:
    problems = []
    for err in sorted(_VALIDATOR.iter_errors(raw), key=lambda e: [str(p) for p in e.absolute_path]):
        where = _field(err.absolute_path)
        if err.validator == "required":
            missing = re.match(r"'([^']+)'", err.message)
            key = missing.group(1) if missing else err.message
            problems.append(f"{where + '.' if where != 'manifest' else ''}{key}: missing; {FORMAT_HINT}")
            continue
        if err.validator == "additionalProperties" and err.validator_value is False:
            problems.append(f"{where}: {err.message}; {err.schema.get('hint', FORMAT_HINT)}")
            continue
        got = repr(err.instance) if len(repr(err.instance)) <= 60 else repr(err.instance)[:57] + "..."
        hint = err.schema.get("hint")
        if hint is None and err.validator == "enum":
            hint = f"use one of {', '.join(map(str, err.validator_value))}"
        problems.append(f"{where}: got {got}; {hint or FORMAT_HINT}")
    return problems


def _relation_problems(raw: dict[str, Any]) -> list[str]:
    """Rules between fields (only run on a manifest whose fields have the right types)."""
    problems = []
    pre = raw.get("preprocessing") or {}
    inten = pre.get("intensity") or {}
    if inten.get("kind") == "window" and not inten["lo"] < inten["hi"]:
        problems.append(f"preprocessing.intensity: lo {inten['lo']} is not below hi {inten['hi']}; use lo < hi")
    if inten.get("kind") == "percentile" and not float(inten.get("lower", 0.5)) < float(inten.get("upper", 99.5)):
        problems.append("preprocessing.intensity: lower percentile is not below upper; use lower < upper")
    ps, spacing = pre.get("patch_size", 32), pre.get("spacing")
    two_d = isinstance(ps, list) and len(ps) == 2
    if two_d and "slices" not in pre:
        problems.append("preprocessing.slices: missing for a 2D patch_size (two entries); add e.g. "
                        "slices: {plane: axial, step_mm: 10}, or give patch_size three entries for 3D patches")
    if not two_d and "slices" in pre:
        problems.append(f"preprocessing.slices: only for 2D patches, but patch_size is {ps}; give patch_size two "
                        "entries (e.g. [64, 64]) or remove slices")
    if spacing is not None and len(spacing) != (2 if two_d else 3):
        problems.append(f"preprocessing.spacing: got {spacing}; use {'two numbers (in-plane mm) for 2D slices' if two_d else 'three numbers in mm'}")
    split = raw["split"]
    subjects = sorted({str(v["subject"]) for v in raw["volumes"]})
    if split.get("kind", "by_subject") == "by_subject_fraction":
        fr = split.get("fractions") or {}
        if sum(float(v) for v in fr.values()) > 1 + 1e-9:
            problems.append(f"split.fractions: add up to {sum(float(v) for v in fr.values()):g}, more than 1; "
                            "make them add up to 1")
    else:
        assign: dict[str, str] = {}
        for k, v in (split.get("assign") or {}).items():
            if str(k) in assign and assign[str(k)] != v:
                problems.append(f"split.assign: subject {k} is assigned to two splits; a subject may be in one split only")
            assign[str(k)] = v
        missing = [s for s in subjects if s not in assign]
        if missing:
            problems.append(f"split.assign: no split for subject(s) {', '.join(missing)}; add them")
    return problems


def manifest_problems(raw: Any) -> list[str]:
    """Every problem of a parsed manifest, one short line each (``field: what; what to do``).

    Args:
        raw: the manifest as loaded from YAML.

    Returns:
        An empty list for a valid manifest.
    """
    problems = _schema_problems(raw)
    if problems:
        return problems
    return _relation_problems(raw)


def check_patch_size(patch_size: Any, option: str = "--patch-size") -> int:
    """A cubic patch size given on the command line, as a positive int (refusing 0, negatives, fractions).

    Raises:
        DataError: naming ``option`` and what to give instead.
    """
    if isinstance(patch_size, bool) or not isinstance(patch_size, int | np.integer) or int(patch_size) <= 0:
        raise DataError(f"{option} {patch_size}: must be a positive whole number of voxels, e.g. 32")
    return int(patch_size)


def is_safe_name(name: str) -> bool:
    """True for a data set name that is one safe folder name in the cache."""
    return isinstance(name, str) and re.match(SAFE_NAME, name) is not None
