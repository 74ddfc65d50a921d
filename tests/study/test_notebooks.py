"""Every study notebook run through papermill (``memostudy study``) with tiny parameters: the files and
figures each writes, share-safe reports, failures, the kernel the notebooks ask for."""

from __future__ import annotations

import json
import re
import shutil

import nbformat
import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from memostudy.cli import main
from memostudy.data.patches import load_patches
from memostudy.data.phantom import write_phantom_dataset
from memostudy.study.records import SCHEMA_VERSION, read_record
from memostudy.study.runner import NOTEBOOKS, run_notebook, share_safe_check
from tests.study.conftest import TINY_DETECTOR


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    """A phantom data set at 16^3 and the parameters that make every notebook run in seconds."""
    root = tmp_path_factory.mktemp("notebooks")
    data = write_phantom_dataset(root / "phantoms", n_train=8, n_validation=8, size=16)
    base = {"preset": "test-16", "data": str(data), "detector": TINY_DETECTOR, "n_boot": 50,
            "runs_dir": str(root / "runs")}
    return {"root": root, "data": data, "base": base, "reports": root / "reports"}


def _run(env: dict, notebook: str, run_id: str, browser: bool = False, **params):
    res = run_notebook(notebook, env["base"] | params, reports_dir=env["reports"], run_id=run_id,
                       check_browser=browser, progress=False)
    assert res.status == "ok", f"{notebook} failed: {res.error}"
    summary = json.loads((res.run_dir / "summary.json").read_text())
    assert summary["schema_version"] == SCHEMA_VERSION and read_record(res.run_dir).rows == summary["rows"]
    return res, summary


@pytest.fixture(scope="module")
def main_run(env):
    return _run(env, "01_memorization", "main", browser=shutil.which("chromium") is not None)


def test_notebooks_are_committed_clean_and_use_the_project_kernel():
    from jupyter_client.kernelspec import find_kernel_specs

    books = sorted(NOTEBOOKS.glob("*.ipynb"))
    assert [b.name[:2] for b in books] == ["01", "02", "03", "04", "05", "06"]
    for b in books:
        nb = nbformat.read(b, as_version=4)
        assert nb.metadata["kernelspec"]["name"] == "memostudy"
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), f"{b.name} has outputs"
        assert sum("parameters" in c.metadata.get("tags", []) for c in code) == 1, f"{b.name}: one parameters cell"
    assert "memostudy" in find_kernel_specs()  # registered by `make setup` into the venv (make lab uses it)


@pytest.mark.slow
def test_memorization_notebook_writes_consistent_results(env, main_run):
    res, summary = main_run
    row = summary["rows"][0]
    train = pd.read_csv(res.run_dir / "train.csv")
    synthetic = pd.read_csv(res.run_dir / "synthetic.csv")
    assert len(train) == row["n_train"] == 8  # test-16 trains on 8 patches
    assert len(synthetic) == row["n_synthetic"] == 4  # samples_per_training_patch 0.5 in test-16
    assert row["memorized_fraction"] == pytest.approx(train["memorized"].mean())
    assert row["copy_fraction"] == pytest.approx(synthetic["is_copy"].mean())
    assert row["memorized_lo"] <= row["memorized_fraction"] <= row["memorized_hi"]
    assert (train["memorized"] == (train["similarity"] > row["threshold"])).all()
    assert set(train["nearest_synthetic_id"]) <= set(synthetic["synthetic_id"])
    assert summary["key_figures"]["n_train"] == 8 and "pixel copies %" in summary["key_figures"]
    assert summary["key_figures"]["block copies %"] == pytest.approx(100 * row["blocks_copy_fraction"], abs=0.05)
    assert summary["train_data"]["ids"] == list(train["train_id"])
    run = json.loads((res.run_dir / "run.json").read_text())
    assert run["status"] == "ok" and run["parameters"]["interactive"] is False
    html = res.report.read_text()
    for heading in ("Similarity histograms", "Top copy candidates", "Pixel baseline", "Training curves"):
        assert heading in html
    assert not re.search(r"<(script|link)[^>]+(src|href)=[\"']https?://", html)  # nothing loaded from the network
    assert "main" in (env["reports"] / "index.html").read_text()
    if shutil.which("chromium"):
        assert run["browser"]["console_errors"] == []
        # 4 histograms (contrastive, pixel, blocks, blocks-either) + 4 candidate pairs + 2 loss curves
        assert run["browser"]["plots_drawn"] == run["browser"]["plots_total"] == 10
        assert (res.run_dir / "screenshot.png").stat().st_size > 10_000


@pytest.mark.slow
def test_share_safe_report_holds_no_training_voxel(env, main_run):
    from memostudy.report.leaks import find_volume_leaks

    res, summary = main_run
    train = load_patches(env["data"], "train")
    idx = [train.ids.index(i) for i in summary["train_data"]["ids"]]
    volumes = train.volumes[idx]
    # the check can fail: the ordinary report shows training volumes next to their candidates
    assert find_volume_leaks(res.report.read_text(), volumes)
    assert share_safe_check(res.report, read_record(res.run_dir))["leaks"] > 0  # what marks a share-safe run failed
    safe, safe_summary = _run(env, "01_memorization", "safe", share_safe=True)
    assert safe_summary["share_safe"] is True
    check = json.loads((safe.run_dir / "run.json").read_text())["share_safe_check"]
    assert check["checked"] and check["leaks"] == 0 and check["n_train_volumes"] == 8
    assert find_volume_leaks(safe.report.read_text(), volumes) == []
    assert not (safe.run_dir / "train.csv").exists()
    assert "Top copy candidates" in safe.report.read_text()  # synthetic volumes are still shown


@pytest.mark.slow
@pytest.mark.parametrize("notebook, params, column, expected", [
    ("02_augmentation", {}, "augment", [False, True]),
    ("03_training_size", {"train_sizes": [4, 8]}, "train_patches", [4, 8]),
    ("06_model_size", {"model_sizes": {"narrow": [8, 16], "wide": [16, 32]}}, "model", ["narrow", "wide"]),
])
def test_setting_notebooks_write_one_row_per_setting(env, notebook, params, column, expected):
    res, summary = _run(env, notebook, notebook, share_safe=True, **params)
    rows = pd.DataFrame(summary["rows"])
    assert list(rows[column]) == expected
    assert ((rows["memorized_lo"] <= rows["memorized_fraction"]) & (rows["memorized_fraction"] <= rows["memorized_hi"])).all()
    assert ((rows["copy_lo"] <= rows["copy_fraction"]) & (rows["copy_fraction"] <= rows["copy_hi"])).all()
    assert list(rows["n_synthetic"]) == [-(-n // 2) for n in rows["n_train"]]  # test-16: 0.5 samples per patch
    if column == "train_patches":
        assert list(rows["n_train"]) == expected
    if column == "augment":
        assert list(rows["augment"]) == expected
    # one detector for every setting
    assert len({r["detector"]["path"] for r in summary["runs"].values()}) == 1
    # the record names every setting's training patches, and the share-safe report was scanned against them
    ids = summary["train_data"]["ids"]
    assert len(ids) == len(set(ids)) >= rows["n_train"].max()
    check = json.loads((res.run_dir / "run.json").read_text())["share_safe_check"]
    assert check["checked"] and check["n_train_volumes"] == len(ids) and check["leaks"] == 0
    run = json.loads((res.run_dir / "run.json").read_text())
    assert run["key_figures"] == summary["key_figures"] and len(run["key_figures"]) == len(expected)


@pytest.mark.slow
def test_overtraining_notebook_tracks_quality_per_snapshot(env):
    res, summary = _run(env, "04_overtraining", "overtraining", epochs=[2, "final"])
    rows = pd.DataFrame(summary["rows"])
    assert list(rows["epoch"]) == [2, 3]  # test-16: snapshot at epoch 2, final after 3
    # two snapshots sample different volumes: their quality figures differ, and no set equals the reference
    assert rows["ms_ssim"].nunique() == 2 and rows["frechet_embedding"].nunique() == 2
    assert (rows["frechet_embedding"] > 0).all() and rows["ms_ssim"].between(-1, 1).all()
    assert rows["train_loss"].notna().all()
    assert list(summary["key_figures"]) == ["memorized % (epoch 2)", "memorized % (epoch 3)", "chosen epoch"]
    # the checkpoint choice: the best Frechet distance among snapshots at or under the default 10 % level
    ok = rows[rows["memorized_fraction"] <= 0.1]
    chosen = int(ok.loc[ok["frechet_embedding"].idxmin(), "epoch"]) if len(ok) else None
    assert summary["key_figures"]["chosen epoch"] == chosen == summary["details"]["checkpoint_choice"]["epoch"]
    assert summary["details"]["checkpoint_choice"]["measure"] == "memorized_fraction"
    assert (rows["steps"] == rows["epoch"] * 2).all()  # test-16: 8 patches, batch 4
    assert {"similarity_delta", "c_t", "authenticity"} <= set(rows.columns)


@pytest.mark.slow
def test_detector_validation_notebook_reports_each_family(env):
    res, summary = _run(env, "05_detector_validation", "validation",
                        data=str(env["data"]), copies_per_family=4, detector=TINY_DETECTOR)
    table = pd.DataFrame(summary["rows"])
    assert set(table["detector"]) == {"contrastive", "contrastive-32d", "pixel", "pixel-oriented", "blocks",
                                      "blocks-oriented", "blocks-either", "aligned", "combined"}
    assert {"all", "all-inside", "rigid", "noise"} <= set(table["family"])
    assert (res.run_dir / "detector.pt").exists() and (res.run_dir / "validation.csv").exists()
    # the record's rows are the table validate-detector wrote, not numbers made up on the way
    written = pd.read_csv(res.run_dir / "validation.csv")
    merged = table.merge(written, on=["detector", "scored", "family", "strength"], suffixes=("", "_csv"))
    assert len(merged) == len(table) == len(written)
    np.testing.assert_allclose(merged["sensitivity"], merged["sensitivity_csv"])
    np.testing.assert_allclose(merged["specificity"], merged["specificity_csv"])
    key = summary["key_figures"]
    assert np.isfinite(key["contrastive sensitivity held out"]) and np.isfinite(key["combined specificity held out"])


@pytest.mark.slow
def test_a_failing_notebook_leaves_a_partial_report_and_exits_non_zero(env, capsys):
    code = main(["study", "01_memorization", "--reports", str(env["reports"]), "--run-id", "broken",
                 "--preset", "no-such-preset", "-p", "data", str(env["data"])])
    assert code == 1
    assert "unknown preset" in capsys.readouterr().err
    run_dir = env["reports"] / "broken"
    assert json.loads((run_dir / "run.json").read_text())["status"] == "failed"
    assert "unknown preset" in (run_dir / "report.html").read_text()
    assert (run_dir / "notebook.ipynb").exists()


@pytest.mark.slow  # papermill and a tiny 2D LDM and detector
def test_2d_study_runs_end_to_end_through_the_real_command(tmp_path, capsys):
    """`memostudy study --preset <2D preset> -p data <2D data set>`: notebook 01 on 2D images, report and record.
    Needs the 2D detector (memostudy/detect, issue 21) as well as the 2D data and LDM."""
    data = write_phantom_dataset(tmp_path / "phantoms2d", n_train=8, n_validation=8, size=32, spatial_dims=2)
    params = tmp_path / "p.yaml"
    params.write_text(json.dumps({"data": str(data), "detector": TINY_DETECTOR, "n_boot": 50,
                                  "runs_dir": str(tmp_path / "runs")}))
    rc = main(["study", "--preset", "test-32-2d", "-f", str(params), "--reports", str(tmp_path / "reports"),
               "--run-id", "two-d"])
    out = capsys.readouterr()
    assert rc == 0, out.err[-2000:]
    run = tmp_path / "reports" / "two-d"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["key_figures"]["n_train"] == 8 and summary["rows"][0]["n_synthetic"] == 4
    assert (run / "report.html").stat().st_size > 0 and len(pd.read_csv(run / "synthetic.csv")) == 4
    samples = sorted((tmp_path / "runs" / "ldm").glob("*/samples/*/sample_0000.nii.gz"))
    assert samples and nib.load(samples[0]).shape == (32, 32)
