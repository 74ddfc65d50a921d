"""The record of a study run (``summary.json``): what a notebook hands to the runner, sweeps and readers.

Every study notebook ends by writing one :class:`StudyRecord` with :func:`write_record`; the runner
(:func:`memostudy.study.runner.run_notebook`) and the sweeps (:func:`memostudy.study.sweep.collect_rows`)
read it back with :func:`read_record`, which refuses a missing or malformed file with a
:class:`~memostudy.errors.DataError` naming it. A run whose record cannot be read is marked failed, so a
``--share-safe`` run is always scanned for leaks of the training volumes named in ``train_data``.

JSON keys (one per field of :class:`StudyRecord`): ``schema_version``; ``rows`` (one flat result row per
setting or checkpoint, see :meth:`~memostudy.study.memorization.MemorizationResult.rows`); ``key_figures``
(copied into ``run.json`` and the reports index); ``train_data`` (``{"data", "ids"}``: the data set and
the training patches whose voxels a share-safe report must not show); ``share_safe``; ``runs`` (per
setting: configs, LDM run folder, detector, sample folders, seconds); ``details`` (what only one notebook
has, e.g. label agreement or the detector validation summary); ``provenance`` (versions, git commit, host,
time).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memostudy.errors import DataError

if TYPE_CHECKING:
    from memostudy.study.memorization import MemorizationResult

#: bump when a field is added, removed or changes meaning; readers refuse other versions
SCHEMA_VERSION = 1
RECORD_FILE = "summary.json"


@dataclass
class TrainData:
    """The training volumes of a run, by reference: patch ``ids`` of the ``train`` split of data set ``data``."""

    data: str
    ids: list[str]


@dataclass
class StudyRecord:
    """The result of one notebook run (``summary.json``).

    Attributes:
        rows: one flat result row per setting or checkpoint (fractions in [0, 1], CIs, counts, detector).
        key_figures: the few headline numbers shown in ``run.json`` and the reports index.
        train_data: the training volumes the run used (None only for a notebook that trains no
            generative model and cannot be run share-safe).
        share_safe: the report was made to show no voxel of any training volume.
        runs: setting label -> what produced it (see :func:`run_details`).
        details: notebook-specific results (label agreement, detector validation summary ...).
        provenance: package versions, git commit, host, UTC time; filled by :func:`write_record` when empty.
        schema_version: :data:`SCHEMA_VERSION` of the code that wrote it.
    """

    rows: list[dict[str, Any]]
    key_figures: dict[str, Any]
    train_data: TrainData | None
    share_safe: bool = False
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION


def run_details(result: MemorizationResult) -> dict[str, Any]:
    """What produced one study result: configs, LDM run folder, detector, sample folders, seconds."""
    from memostudy.config import to_dict

    return {"config": to_dict(result.config), "ldm_config": to_dict(result.ldm_config), "ldm_run": str(result.run_dir),
            "detector": {"path": str(result.detector_path), "best_epoch": result.detector.best_epoch,
                         "config": to_dict(result.detector.config)},
            "samples": {k: str(s.folder) for k, s in result.samples.items()}, "seconds": result.seconds}


def train_data_of(results: Iterable[MemorizationResult]) -> TrainData:
    """The training patches of one or more study results (every id once, in order of appearance).

    Raises:
        DataError: the results were trained on different data sets.
    """
    results = list(results)
    sets = {str(r.ldm_config.data) for r in results}
    if len(sets) != 1:
        raise DataError(f"the runs of one record must share one data set, got {', '.join(sorted(sets)) or 'none'}")
    ids = list(dict.fromkeys(i for r in results for i in r.train.ids))
    return TrainData(data=sets.pop(), ids=ids)


def split_train_data(data: str, limit: int | None = None) -> TrainData:
    """The ``train`` split of a prepared data set (its first ``limit`` patches) as :class:`TrainData`."""
    from memostudy.data.patches import load_patches

    return TrainData(data=str(data), ids=list(load_patches(data, "train", limit=limit).ids))


def study_record(results: dict[str, MemorizationResult], rows: list[dict[str, Any]], key_figures: dict[str, Any],
                 share_safe: bool = False, details: dict[str, Any] | None = None) -> StudyRecord:
    """The record of a notebook that ran :func:`~memostudy.study.memorization.run_memorization` once per
    setting (``results``: label -> result; one entry for a single run)."""
    return StudyRecord(rows=rows, key_figures=key_figures, train_data=train_data_of(results.values()),
                       share_safe=share_safe, runs={str(k): run_details(r) for k, r in results.items()},
                       details=dict(details or {}))


def write_record(run_dir: str | Path, record: StudyRecord) -> Path:
    """Write ``record`` as ``run_dir/summary.json`` (provenance added when empty); return the path."""
    from memostudy.config import provenance

    body = asdict(record)
    body["provenance"] = record.provenance or provenance()
    path = Path(run_dir) / RECORD_FILE
    path.write_text(json.dumps(body, indent=2, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))
    return path


_TYPES: dict[str, type | tuple[type, ...]] = {
    "schema_version": int, "rows": list, "key_figures": dict, "train_data": (dict, type(None)), "share_safe": bool,
    "runs": dict, "details": dict, "provenance": dict}


def read_record(run_dir: str | Path) -> StudyRecord:
    """Read ``run_dir/summary.json`` back as a :class:`StudyRecord`.

    Raises:
        DataError: the file is missing, not JSON, of another schema version, or a field is missing or of
            the wrong type; the message names the file.
    """
    path = Path(run_dir) / RECORD_FILE
    if not path.is_file():
        raise DataError(f"{path}: no study record; a study notebook must end with "
                        "memostudy.study.records.write_record(run_dir, record)")
    try:
        body = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a study record (invalid JSON: {e})") from None
    if not isinstance(body, dict):
        raise DataError(f"{path}: not a study record (a JSON {type(body).__name__}, not an object)")
    version = body.get("schema_version")
    if version != SCHEMA_VERSION:
        raise DataError(f"{path}: study record schema version {version}, this memostudy reads {SCHEMA_VERSION}; "
                        "run the notebook again")
    names = {f.name for f in fields(StudyRecord)}
    unknown = sorted(set(body) - names)
    if unknown:
        raise DataError(f"{path}: malformed study record: unknown field(s) {', '.join(unknown)}")
    for name, kind in _TYPES.items():
        if name not in body:
            raise DataError(f"{path}: malformed study record: no `{name}`")
        if not isinstance(body[name], kind) or (kind is int and isinstance(body[name], bool)):
            raise DataError(f"{path}: malformed study record: `{name}` is a {type(body[name]).__name__}")
    if not all(isinstance(r, dict) for r in body["rows"]):
        raise DataError(f"{path}: malformed study record: `rows` must be a list of objects")
    train = body["train_data"]
    if train is not None:
        if not (isinstance(train.get("data"), str) and isinstance(train.get("ids"), list)
                and all(isinstance(i, str) for i in train["ids"]) and set(train) == {"data", "ids"}):
            raise DataError(f"{path}: malformed study record: `train_data` must be {{'data': str, 'ids': [str, ...]}}")
        body["train_data"] = TrainData(data=train["data"], ids=list(train["ids"]))
    return StudyRecord(**body)
