"""Run a study notebook with papermill into its own run folder, then export and check its report.

A run folder ``reports/<run-id>/`` holds everything of one run: ``parameters.yaml``, the executed
``notebook.ipynb``, every artefact the notebook writes (it receives ``run_dir``), ``report.html``,
``screenshot.png`` (when a browser is present), ``summary.json`` (the notebook's
:class:`~memostudy.study.records.StudyRecord`) and ``run.json`` (status, timing, key figures).
A notebook that raises still leaves its partial executed notebook and an HTML showing where it
stopped; the caller gets a non-zero exit. A notebook that ends without a readable record is marked
failed too: the record names the training volumes a ``share_safe`` report is scanned against, and a run
that cannot be scanned must not report ok.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from memostudy.errors import DataError, MemostudyError, RunExistsError
from memostudy.study.records import StudyRecord, read_record

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


@dataclass
class RunResult:
    """Outcome of one notebook run."""

    run_dir: Path
    status: str  # "ok" | "failed"
    seconds: float
    report: Path | None
    error: str = ""
    key_figures: dict[str, Any] | None = None


def find_notebook(name: str | Path) -> Path:
    """Resolve ``01_memorization``, ``memorization`` or a path to a notebook file."""
    p = Path(name)
    if p.suffix == ".ipynb":
        if not p.is_file():
            raise MemostudyError(f"{p}: notebook not found")
        return p
    cands = sorted(NOTEBOOKS.glob(f"*{name}*.ipynb"))
    if len(cands) != 1:
        known = ", ".join(q.stem for q in sorted(NOTEBOOKS.glob("[0-9]*.ipynb")))
        raise MemostudyError(f"no single notebook matches {name!r}; known: {known}")
    return cands[0]


def kernel_name() -> str:
    """The project's Jupyter kernel (``memostudy``, installed by ``make setup``), else ``python3``."""
    from jupyter_client.kernelspec import KernelSpecManager

    return "memostudy" if "memostudy" in KernelSpecManager().find_kernel_specs() else "python3"


def new_run_id(notebook: Path, tag: str = "") -> str:
    """A readable, sortable run id: ``<UTC time>-<notebook>[-<tag>]``."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    name = re.sub(r"^\d+_", "", notebook.stem)
    return "-".join(x for x in (stamp, name, re.sub(r"[^A-Za-z0-9_.-]+", "_", tag)) if x)


def run_notebook(
    notebook: str | Path,
    parameters: dict[str, Any] | None = None,
    reports_dir: str | Path = "reports",
    run_id: str | None = None,
    force: bool = False,
    check_browser: bool = True,
    progress: bool = True,
) -> RunResult:
    """Execute ``notebook`` with papermill into ``reports_dir/run_id`` and export its HTML report.

    The notebook receives ``run_dir`` (absolute) among its parameters and must write its record
    (:func:`~memostudy.study.records.write_record`), whose ``key_figures`` are copied into ``run.json`` and
    the index. A notebook that ends without a readable record is marked failed (``error`` says why), and
    so is a ``share_safe`` run whose report shows voxels of the record's training volumes or whose record
    names none.

    Raises:
        RunExistsError: the run folder exists and ``force`` is false.
    """
    import papermill as pm

    from memostudy.report.export import export_html, write_index
    from memostudy.study.progress import terminal_progress

    nb = find_notebook(notebook)
    reports_dir = Path(reports_dir).resolve()
    run_dir = reports_dir / (run_id or new_run_id(nb))
    if run_dir.exists() and any(run_dir.iterdir()):
        if not force:
            raise RunExistsError(f"{run_dir}: run folder exists; pick another --run-id or pass --force")
        import shutil

        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    params = dict(parameters or {}) | {"run_dir": str(run_dir)}
    if "interactive" in pm.inspect_notebook(str(nb)) and "interactive" not in params:
        params["interactive"] = False  # kernel-side widgets cannot run in a batch run or show in the HTML
    (run_dir / "parameters.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    meta: dict[str, Any] = {"notebook": nb.name, "parameters": params, "status": "running",
                            "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    (run_dir / "run.json").write_text(json.dumps(meta, indent=2))
    executed = run_dir / "notebook.ipynb"
    t0 = time.perf_counter()
    error = ""
    try:
        with terminal_progress(run_dir, enabled=progress):  # the package's bars, kept out of the notebook
            pm.execute_notebook(str(nb), str(executed), parameters=params, kernel_name=kernel_name(),
                                cwd=str(run_dir), progress_bar=progress, request_save_on_cell_execute=True,
                                # the kernel's printed progress lines reach the terminal as they happen
                                log_output=progress, stdout_file=sys.stdout if progress else None,
                                stderr_file=sys.stderr if progress else None)
        status = "ok"
    except pm.PapermillExecutionError as e:
        status, error = "failed", f"{e.ename}: {e.evalue}".strip()
    except Exception as e:  # kernel died, timeout: still leave the partial notebook and a report
        status, error = "failed", f"{type(e).__name__}: {e}".splitlines()[0]
    seconds = time.perf_counter() - t0
    report = None
    if executed.exists():
        report = export_html(executed, run_dir / "report.html", title=f"{nb.stem} — {run_dir.name}")
    record: StudyRecord | None = None
    try:
        record = read_record(run_dir)
    except DataError as e:
        if status == "ok":  # a notebook that failed has already said why
            status, error = "failed", str(e)
    key = record.key_figures if record is not None else None
    meta |= {"status": status, "seconds": round(seconds, 1), "error": error, "key_figures": key}
    if report is not None and check_browser:
        meta["browser"] = _browser_check(report, run_dir / "screenshot.png")
    if status == "ok" and params.get("share_safe") and report is not None and record is not None:
        meta["share_safe_check"] = check = share_safe_check(report, record, executed)
        if not check["checked"]:
            status, error = "failed", f"share-safe report not scanned: {check['reason']}"
        elif check["leaks"]:
            status, error = "failed", f"share-safe report shows training voxels: {check['detail']}"
        meta |= {"status": status, "error": error}
    (run_dir / "run.json").write_text(json.dumps(meta, indent=2, default=str))
    write_index(reports_dir)
    return RunResult(run_dir=run_dir, status=status, seconds=seconds, report=report, error=error, key_figures=key)


def share_safe_check(report: Path, record: StudyRecord, notebook: Path | None = None,
                     calibration_volumes: int = 3) -> dict[str, Any]:
    """Scan a share-safe report (and the executed ``notebook``) for the training volumes named in
    ``record.train_data``, failing closed: voxel-exact slices and runs (:func:`~memostudy.report.leaks.find_volume_leaks`)
    and images that show a training volume without being voxel-exact (:func:`~memostudy.report.leaks.find_similar_slices`,
    calibrated on up to ``calibration_volumes`` volumes of the data set's validation split, real non-copies).

    Returns:
        ``{"checked": False, "reason"}`` when the record names no training volume, else ``{"checked": True,
        "n_train_volumes", "leaks" (count of exact and similar findings), "exact", "similar", "min_frames",
        "detail" (one line)}``.
    """
    from memostudy.data.patches import load_patches
    from memostudy.report.leaks import (
        calibrate_similarity,
        describe,
        describe_similar,
        find_similar_slices,
        find_volume_leaks,
    )

    train = record.train_data
    if train is None or not train.ids:
        return {"checked": False, "reason": "the notebook's record names no training data (summary.json train_data)"}
    split = load_patches(train.data, "train")
    pos = {pid: i for i, pid in enumerate(split.ids)}
    unknown = [i for i in train.ids if i not in pos]
    if unknown:
        return {"checked": False, "reason": f"{len(unknown)} training id(s) of the record are not in data set "
                                            f"{train.data!r} (e.g. {unknown[0]})"}
    vols = split.volumes[[pos[i] for i in train.ids]]
    try:
        held = load_patches(train.data, "validation").volumes[:calibration_volumes]
    except DataError:
        held = vols[:0]
    if not len(held):
        return {"checked": False, "reason": f"data set {train.data!r} has no validation volumes to calibrate the "
                                            "similarity scan on"}
    min_frames = calibrate_similarity(held, vols)
    texts = [report.read_text(encoding="utf-8")]
    if notebook is not None and notebook.exists():
        texts.append(notebook.read_text(encoding="utf-8"))
    exact = [leak for t in texts for leak in find_volume_leaks(t, vols)]
    similar = find_similar_slices(texts, vols, min_frames)
    detail = describe(exact) if exact or not similar else describe_similar(similar, min_frames)
    if exact and similar:
        detail += "; " + describe_similar(similar, min_frames)
    return {"checked": True, "n_train_volumes": len(vols), "leaks": len(exact) + len(similar), "exact": len(exact),
            "similar": len(similar), "min_frames": min_frames, "detail": detail}


def _browser_check(report: Path, screenshot: Path) -> dict[str, Any]:
    """Open the report in headless Chromium if one is installed; record what it saw."""
    from memostudy.report.browser import check_html, find_chromium

    if find_chromium() is None:
        return {"checked": False, "why": "no chromium (apt-get install chromium)"}
    try:
        r = check_html(report, screenshot)
    except Exception as e:  # a broken browser must not lose the run's results
        return {"checked": False, "why": f"{type(e).__name__}: {e}".splitlines()[0]}
    return {"checked": True, "console_errors": r.console_errors, "plots_total": r.plots_total,
            "plots_drawn": r.plots_drawn, "screenshot": screenshot.name}
