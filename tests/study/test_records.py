"""The run record (summary.json): one typed object, written and read in one place, refused when missing or
malformed; the runner marks such runs failed, and a share-safe run it cannot scan."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from memostudy.errors import DataError
from memostudy.study.records import (
    SCHEMA_VERSION,
    StudyRecord,
    TrainData,
    read_record,
    train_data_of,
    write_record,
)
from memostudy.study.runner import run_notebook


def _record(**changes) -> StudyRecord:
    base = StudyRecord(rows=[{"setting": "main", "memorized_fraction": 0.25, "n_train": 8}],
                       key_figures={"memorized %": 25.0}, train_data=TrainData("demo", ["a.nii.gz", "b.nii.gz"]),
                       share_safe=True, runs={"main": {"ldm_run": "/runs/x"}}, details={"agreement": None},
                       provenance={"commit": "abc"})
    return StudyRecord(**(vars(base) | changes))


def test_a_record_reads_back_as_written(tmp_path: Path) -> None:
    record = _record()
    path = write_record(tmp_path, record)
    assert path == tmp_path / "summary.json"
    back = read_record(tmp_path)
    assert back == record and isinstance(back.train_data, TrainData)
    body = json.loads(path.read_text())
    # the keys consumers rely on
    assert body["schema_version"] == SCHEMA_VERSION and body["rows"][0]["memorized_fraction"] == 0.25
    assert body["key_figures"] == {"memorized %": 25.0} and body["train_data"]["ids"] == ["a.nii.gz", "b.nii.gz"]


def test_write_fills_in_provenance_and_serialises_numpy(tmp_path: Path) -> None:
    import numpy as np

    write_record(tmp_path, _record(provenance={}, rows=[{"x": np.float64(0.5), "v": np.arange(2)}], train_data=None))
    back = read_record(tmp_path)
    assert back.rows == [{"x": 0.5, "v": [0, 1]}] and back.train_data is None
    assert {"git_commit", "memostudy"} <= set(back.provenance)


def test_a_missing_record_is_a_data_error_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=f"{tmp_path}/summary.json: no study record"):
        read_record(tmp_path)


@pytest.mark.parametrize("body, message", [
    ("{not json", "invalid JSON"),
    ("[1, 2]", "not an object"),
    ('{"rows": [], "key_figures": {}}', "schema version None"),
    ("SCHEMA_99", "schema version 99"),
    ("NO_ROWS", "no `rows`"),
    ("ROWS_DICT", "`rows` is a dict"),
    ("ROWS_OF_NUMBERS", "list of objects"),
    ("BAD_TRAIN", "`train_data` must be"),
    ("EXTRA", "unknown field"),
])
def test_a_malformed_record_is_a_data_error_naming_the_file(tmp_path: Path, body: str, message: str) -> None:
    good = json.loads(write_record(tmp_path, _record()).read_text())
    edits = {"SCHEMA_99": good | {"schema_version": 99}, "NO_ROWS": {k: v for k, v in good.items() if k != "rows"},
             "ROWS_DICT": good | {"rows": {"a": 1}}, "ROWS_OF_NUMBERS": good | {"rows": [1, 2]},
             "BAD_TRAIN": good | {"train_data": {"data": "demo", "ids": [1, 2]}}, "EXTRA": good | {"records": {}}}
    (tmp_path / "summary.json").write_text(json.dumps(edits[body]) if body in edits else body)
    with pytest.raises(DataError, match=message) as err:
        read_record(tmp_path)
    assert str(tmp_path / "summary.json") in str(err.value) and "\n" not in str(err.value)


def _result(data: str, ids: list[str]) -> SimpleNamespace:
    return SimpleNamespace(ldm_config=SimpleNamespace(data=data), train=SimpleNamespace(ids=ids))


def test_train_data_of_several_settings_names_every_patch_once() -> None:
    got = train_data_of([_result("demo", ["a", "b"]), _result("demo", ["b", "c"])])
    assert got == TrainData("demo", ["a", "b", "c"])
    with pytest.raises(DataError, match="one data set"):
        train_data_of([_result("demo", ["a"]), _result("other", ["a"])])


def test_the_study_record_of_a_run_names_its_training_patches(tiny_result) -> None:
    from memostudy.study.records import study_record

    rec = study_record({"main": tiny_result}, tiny_result.rows(), {"k": 1}, share_safe=True)
    assert rec.train_data == TrainData(str(tiny_result.ldm_config.data), tiny_result.train.ids)
    assert rec.runs["main"]["detector"]["path"] == str(tiny_result.detector_path)
    assert rec.runs["main"]["ldm_run"] == str(tiny_result.run_dir) and rec.share_safe


def _notebook(path: Path, body: str) -> Path:
    nb = new_notebook(cells=[new_code_cell("run_dir = '.'\nshare_safe = False", metadata={"tags": ["parameters"]}),
                             new_code_cell(body)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))
    return path


WRITES_RECORD = """
from memostudy.study.records import StudyRecord, write_record
write_record(run_dir, StudyRecord(rows=[], key_figures={"k": 1}, train_data=None, provenance={"test": 1}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("body, params, error", [
    ("x = 1", {}, "summary.json: no study record"),
    ("import pathlib; pathlib.Path(run_dir, 'summary.json').write_text('{\"rows\": []}')", {}, "schema version None"),
    (WRITES_RECORD, {"share_safe": True}, "share-safe report not scanned: the notebook's record names no training data"),
])
def test_the_runner_refuses_a_notebook_without_a_readable_record(tmp_path: Path, body, params, error) -> None:
    res = run_notebook(_notebook(tmp_path / "t.ipynb", body), params, reports_dir=tmp_path / "reports", run_id="r",
                       check_browser=False, progress=False)
    assert res.status == "failed" and error in res.error and "\n" not in res.error
    run = json.loads((res.run_dir / "run.json").read_text())
    assert run["status"] == "failed" and error in run["error"]
    assert res.report is not None and res.report.exists()  # the report is still there to look at


@pytest.mark.slow
def test_the_runner_accepts_a_notebook_that_writes_its_record(tmp_path: Path) -> None:
    res = run_notebook(_notebook(tmp_path / "t.ipynb", WRITES_RECORD), {}, reports_dir=tmp_path / "reports",
                       run_id="ok", check_browser=False, progress=False)
    assert res.status == "ok" and res.key_figures == {"k": 1}
