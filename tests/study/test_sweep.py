"""Sweeps: grid x seeds through papermill, resume by skipping finished cells, aggregate table."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
import yaml
from nbformat.v4 import new_code_cell, new_notebook

import memostudy.study.sweep
from memostudy.cli import main
from memostudy.errors import ConfigError
from memostudy.study.executors import ExecutorConfig
from memostudy.study.sweep import cell_id, defaults_fingerprint, load_sweep, run_sweep

BODY = """
from memostudy.study.records import StudyRecord, write_record
rows = [{"augment": augment, "memorized_fraction": (0.6 if not augment else 0.3) + 0.01 * seed,
         "copy_fraction": 0.1, "detector": "fixed-detector"}]
write_record(run_dir, StudyRecord(rows=rows, key_figures=rows[0], train_data=None, provenance={"test": 1}))
"""


def _sweep(tmp_path: Path, **extra) -> Path:
    nb = new_notebook(cells=[new_code_cell("augment = False\nseed = 0\nrun_dir = '.'", metadata={"tags": ["parameters"]}),
                             new_code_cell(BODY)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(tmp_path / "exp.ipynb"))
    spec = {"name": "aug", "notebook": str(tmp_path / "exp.ipynb"), "seeds": [0, 1, 2],
            "grid": {"augment": [False, True]}, "by": ["augment"],
            "metrics": ["memorized_fraction", "copy_fraction"], "question": "Does augmentation lower memorization?",
            "expected": "falls"} | extra
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    return tmp_path / "s.yaml"


@pytest.mark.slow
def test_sweep_runs_grid_and_aggregates(tmp_path: Path) -> None:
    spec = load_sweep(_sweep(tmp_path))
    out = run_sweep(spec, reports_dir=tmp_path / "reports", progress=False)
    table = pd.read_csv(out["table"])
    assert len(table) == 6 and sorted(table["seed"].unique()) == [0, 1, 2]
    agg = pd.read_csv(out["aggregate"])
    assert list(agg["augment"]) == [False, True] and list(agg["n_seeds"]) == [3, 3]
    assert agg["memorized_fraction_mean"].tolist() == pytest.approx([0.61, 0.31])
    html = out["summary"].read_text()
    assert "fixed-detector" in html and html.count("plotly-graph-div") == 2 and "falls" in html
    # paired by seed: every seed's augment=True value is 0.3 below its augment=False value
    assert agg["memorized_fraction_diff_mean"].tolist() == pytest.approx([0.0, -0.3])
    assert agg["memorized_fraction_diff_ci_low"].iloc[1] == pytest.approx(-0.3)
    # 2 settings x 3 seeds: 8 within-seed permutations, two of them reach |rho| = 1
    assert agg["memorized_fraction_trend_rho"].tolist() == [-1.0, -1.0]
    assert agg["memorized_fraction_trend_p"].iloc[0] == pytest.approx(2 / 8)
    trends = pd.read_csv(out["trend"]).set_index("metric")
    assert trends.loc["memorized_fraction", "verdict"] == "not seen"  # p = 0.25: three seeds cannot tell
    assert "Verdict" in html and "Does augmentation lower memorization?" in html and "not seen" in html


@pytest.mark.slow
def test_interrupted_sweep_resumes_skipping_done_cells(tmp_path: Path, capsys) -> None:
    spec = load_sweep(_sweep(tmp_path))
    root = tmp_path / "reports"
    run_sweep(spec, reports_dir=root, only=(0, 2), progress=False)  # half the cells, as if interrupted
    done = {p.parent.name: p.stat().st_mtime_ns for p in (root / "sweeps" / "aug").glob("*/run.json")}
    assert len(done) == 3
    assert main(["sweep", str(tmp_path / "s.yaml"), "--reports", str(root)]) == 0
    assert capsys.readouterr().out.count("done, skipped") == 3
    for name, mtime in done.items():
        assert (root / "sweeps" / "aug" / name / "run.json").stat().st_mtime_ns == mtime
    assert len(pd.read_csv(root / "sweeps" / "aug" / "table.csv")) == 6


def test_bad_sweep_files(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"name": "x", "notebook": "n"}))
    with pytest.raises(ConfigError, match="lacks `seeds`"):
        load_sweep(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="unknown sweep key"):
        load_sweep(_sweep(tmp_path, colour="red"))
    with pytest.raises(ConfigError, match="expected must be 'rises' or 'falls'"):
        load_sweep(_sweep(tmp_path, expected="up"))


def test_cell_ids_are_stable_and_distinct() -> None:
    a, b = {"augment": True, "seed": 0}, {"augment": True, "seed": 1}
    assert cell_id(a) == cell_id(dict(reversed(list(a.items()))))
    assert cell_id(a) != cell_id(b)
    assert json.dumps(a)  # plain parameters only


@pytest.mark.slow
def test_a_cell_done_with_other_defaults_is_moved_aside_and_run_again(tmp_path: Path, capsys, monkeypatch) -> None:
    spec = load_sweep(_sweep(tmp_path), {"seeds": [0], "grid": {"augment": [False]}})
    root = tmp_path / "reports"
    run_sweep(spec, reports_dir=root, progress=False)
    cid = cell_id(spec.cells()[0])
    assert json.loads((root / "sweeps" / "aug" / cid / "defaults.json").read_text())["fingerprint"] == \
        defaults_fingerprint(spec.cells()[0])
    run_sweep(spec, reports_dir=root, progress=False)
    assert "done, skipped" in capsys.readouterr().out
    monkeypatch.setattr(memostudy.study.sweep, "defaults_fingerprint", lambda params: "changed")  # e.g. a new preset
    run_sweep(spec, reports_dir=root, progress=False)
    out = capsys.readouterr().out
    assert "other preset/detector/assessment defaults" in out and "running" in out
    stale = list((root / "sweeps" / "aug").glob(f"{cid}.stale-*"))
    assert len(stale) == 1 and (stale[0] / "summary.json").exists()  # the old results are kept
    assert json.loads((root / "sweeps" / "aug" / cid / "defaults.json").read_text())["fingerprint"] == "changed"


def test_defaults_fingerprint_follows_the_preset() -> None:
    assert defaults_fingerprint({"preset": "cpu-tiny"}) == defaults_fingerprint({})
    assert defaults_fingerprint({"preset": "cpu-tiny"}) != defaults_fingerprint({"preset": "test-16"})


# --- cells as submitit jobs (real processes with submitit's local executor) ---------------------------------

HANG = """
import os, pathlib, time
hang = pathlib.Path(run_dir).parent.parent / "hang"  # <reports>/sweeps/<name>/<cell> -> <reports>/sweeps/hang
if augment and hang.exists():
    pathlib.Path(run_dir, "job.pid").write_text(str(os.getppid()))  # the kernel's parent: the job's process
    time.sleep(600)
"""


def _job_sweep(tmp_path: Path) -> Path:
    """The sweep of :func:`_sweep` with one seed (2 cells), whose augment=True cell can be made to hang."""
    path = _sweep(tmp_path, seeds=[0])
    nb = nbformat.read(str(tmp_path / "exp.ipynb"), as_version=4)
    nb.cells.insert(1, new_code_cell(HANG))
    nbformat.write(nb, str(tmp_path / "exp.ipynb"))
    return path


@pytest.mark.slow
def test_sweep_cells_run_as_local_jobs_with_logs_beside_the_cell(tmp_path: Path, capsys) -> None:
    root = tmp_path / "reports"
    assert main(["sweep", str(_job_sweep(tmp_path)), "--reports", str(root), "--executor", "local",
                 "--cpus-per-job", "1", "--max-parallel", "2", "--time-min", "10"]) == 0
    out = capsys.readouterr().out
    assert out.count("local job") == 2 and out.count(": ok") == 2
    agg = pd.read_csv(root / "sweeps" / "aug" / "aggregate.csv")
    assert list(agg["augment"]) == [False, True] and agg["memorized_fraction_mean"].tolist() == pytest.approx([0.6, 0.3])
    for params in load_sweep(tmp_path / "s.yaml").cells():
        cid = cell_id(params)
        assert json.loads((root / "sweeps" / "aug" / cid / "run.json").read_text())["status"] == "ok"
        assert (root / "sweeps" / "aug" / cid / "defaults.json").exists()
        logs = list((root / "sweeps" / "aug" / f"{cid}.job").glob("*_log.out"))
        assert len(logs) == 1 and logs[0].stat().st_size > 0  # the job's output: papermill's progress
    # a second call submits nothing
    assert main(["sweep", str(tmp_path / "s.yaml"), "--reports", str(root), "--executor", "local"]) == 0
    out = capsys.readouterr().out
    assert out.count("done, skipped") == 2 and "submitted" not in out


@pytest.mark.slow
def test_a_cell_killed_mid_job_is_rerun_on_the_next_call(tmp_path: Path, capsys) -> None:
    import os
    import signal
    import threading
    import time

    spec = load_sweep(_job_sweep(tmp_path))
    root = tmp_path / "reports"
    sweep_dir = root / "sweeps" / "aug"
    killed, hung = cell_id(spec.cells()[1]), sweep_dir.parent / "hang"
    hung.parent.mkdir(parents=True)
    hung.touch()

    def kill_the_job() -> None:  # as Slurm does at a time limit or on preemption
        pid_file = sweep_dir / killed / "job.pid"
        for _ in range(600):
            if pid_file.exists() and pid_file.read_text():
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
                return
            time.sleep(0.5)

    watcher = threading.Thread(target=kill_the_job)
    watcher.start()
    executor = ExecutorConfig(kind="local", cpus_per_job=1, max_parallel=2)
    with pytest.raises(ConfigError, match=f"1 sweep cell.*{killed}: job .* ended without finishing"):
        run_sweep(spec, reports_dir=root, executor=executor, progress=False)
    watcher.join()
    assert json.loads((sweep_dir / killed / "run.json").read_text())["status"] == "running"  # left as it died
    assert len(pd.read_csv(sweep_dir / "table.csv")) == 1  # the finished cell is aggregated meanwhile
    done = cell_id(spec.cells()[0])
    mtime = (sweep_dir / done / "run.json").stat().st_mtime_ns
    capsys.readouterr()

    hung.unlink()
    run_sweep(spec, reports_dir=root, executor=executor, progress=False)
    out = capsys.readouterr().out
    assert f"{done}: done, skipped" in out and f"{killed}: local job" in out
    assert (sweep_dir / done / "run.json").stat().st_mtime_ns == mtime
    assert json.loads((sweep_dir / killed / "run.json").read_text())["status"] == "ok"
    assert len(pd.read_csv(sweep_dir / "table.csv")) == 2


def test_executor_settings_come_from_the_file_and_the_command_line(tmp_path: Path, monkeypatch) -> None:
    seen = {}
    monkeypatch.setattr(memostudy.study.sweep, "run_cells",
                        lambda cells, notebook, root, cfg, progress: seen.update(cfg=cfg, cells=cells) or [])
    path = _sweep(tmp_path, executor={"kind": "slurm", "partition": "gpu", "gpus_per_job": 1, "time_min": 240})
    assert main(["sweep", str(path), "--reports", str(tmp_path / "r"), "--partition", "a100", "--mem-gb", "32"]) == 0
    cfg = seen["cfg"]
    assert (cfg.kind, cfg.partition, cfg.gpus_per_job, cfg.time_min, cfg.mem_gb) == ("slurm", "a100", 1, 240, 32.0)
    assert len(seen["cells"]) == 6 and cfg.parallel() is None
    p = cfg.submitit_parameters("memostudy-aug")
    assert p["slurm_partition"] == "a100" and p["gpus_per_node"] == 1 and p["timeout_min"] == 240
    with pytest.raises(ConfigError, match="unknown executor setting"):
        ExecutorConfig.from_dict({"queue": "x"})
    with pytest.raises(ConfigError, match="executor kind 'pbs'"):
        ExecutorConfig.from_dict({"kind": "pbs"})


# --- the four sweep files of the study, end to end at tiny scale ---------------------------------------------

SWEEPS = Path(__file__).resolve().parents[2] / "notebooks" / "sweeps"

#: per sweep: the settings at tiny scale (test-16 preset, 8 phantom training patches)
TINY_SETTINGS = {
    "augmentation": {"augment_settings": [False, True]},
    "training_size": {"train_sizes": [4, 8]},
    "model_size": {"model_sizes": {"narrow": [8, 16], "wide": [16, 32]}},
    "overtraining": {"epochs": [1, 2, "final"],
                     "ldm": {"autoencoder.loop.steps": 2, "diffusion.loop.epochs": 3,
                             "diffusion.loop.snapshot_epochs": [1, 2]}},
}


@pytest.fixture(scope="module")
def tiny_env(tmp_path_factory) -> dict:
    """Phantom data and a runs folder shared by the four sweeps (one detector for all of them)."""
    from memostudy.data.phantom import write_phantom_dataset
    from tests.study.conftest import TINY_DETECTOR

    root = tmp_path_factory.mktemp("sweeps")
    data = write_phantom_dataset(root / "phantoms", n_train=8, n_validation=8, size=16)
    return {"root": root, "fixed": {"preset": "test-16", "data": str(data), "detector": TINY_DETECTOR, "n_boot": 50,
                                    "runs_dir": str(root / "runs"), "num_samples": 4,
                                    # equal compute at tiny scale: 6 diffusion steps whatever the training set
                                    "ldm": {"autoencoder.loop.steps": 2, "diffusion.loop.steps": 6,
                                            "diffusion.loop.snapshot_epochs": []}}}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TINY_SETTINGS))
def test_each_sweep_file_runs_end_to_end_at_tiny_scale(tiny_env, name) -> None:
    file_spec = load_sweep(SWEEPS / f"{name}.yaml")
    assert len(file_spec.seeds) >= 5 and file_spec.expected in ("rises", "falls") and file_spec.question
    fixed = file_spec.fixed | tiny_env["fixed"] | TINY_SETTINGS[name]
    spec = load_sweep(SWEEPS / f"{name}.yaml", {"seeds": [0, 1], "fixed": fixed, "reference": None})
    out = run_sweep(spec, reports_dir=tiny_env["root"] / "reports", progress=False)
    table, agg = pd.read_csv(out["table"]), pd.read_csv(out["aggregate"])
    col = spec.by[0]
    assert len(agg) == 2 if name != "overtraining" else len(agg) == 3
    assert sorted(table["seed"].unique()) == [0, 1] and (agg["n_seeds"] == 2).all()
    # equal compute: every setting of a seed took the same number of diffusion steps (over-training: rising)
    steps = table.groupby(col)["steps"].unique()
    if name == "overtraining":
        assert list(agg["epoch"]) == [1, 2, 3] and table.groupby("epoch")["steps"].first().tolist() == [2, 4, 6]
    else:
        assert table["steps"].nunique() == 1 and table["steps"].iloc[0] == 6, steps
    assert (table["autoencoder_steps"] == 2).all()
    # continuous statistics in every row, within their ranges
    assert table["similarity_delta"].between(-1, 1).all() and table["authenticity"].between(0, 1).all()
    assert np.isfinite(table["c_t"]).all()
    assert ((table["similarity_delta_lo"] <= table["similarity_delta"]) &
            (table["similarity_delta"] <= table["similarity_delta_hi"])).all()
    # paired differences (0 for the reference setting) and the trend test in the aggregate table
    for m in spec.metrics:
        assert agg[f"{m}_diff_mean"].iloc[0] == 0 and agg[f"{m}_trend_p"].between(0, 1).all()
    trends = pd.read_csv(out["trend"])
    assert list(trends["metric"]) == spec.metrics
    assert set(trends["verdict"].fillna("")) <= {"seen", "not seen", "opposite", ""}
    assert (trends.loc[trends["metric"] == "memorized_fraction", "verdict"] != "").all()
    html = out["summary"].read_text()
    assert "Verdict" in html and spec.question in html and "permutation p" in html
    assert "Memorization measured with" in html and "95th percentile" in html and table["detector"].nunique() == 1
    markdown = out["markdown"].read_text()
    assert "| statistic |" in markdown and "permutation p" in markdown and f"Per seed, {spec.metrics[0]}" in markdown
    for m in spec.metrics:  # the aggregate's means are the per-setting means of the table
        means = table.groupby(col)[m].mean()
        assert np.allclose(agg.set_index(col)[f"{m}_mean"].reindex(means.index), means, equal_nan=True)
    # a second run finds every cell done and only aggregates again
    cells = tiny_env["root"] / "reports" / "sweeps" / spec.name
    before = {p: p.stat().st_mtime for p in cells.glob("*/run.json")}
    run_sweep(spec, reports_dir=tiny_env["root"] / "reports", progress=False)
    assert before == {p: p.stat().st_mtime for p in cells.glob("*/run.json")} and len(before) == 2


def test_the_verdict_sentence_counts_the_measures() -> None:
    import pandas as pd

    from memostudy.study.sweep import in_short

    rows = pd.DataFrame({"metric": ["memorized_fraction", "copy_fraction", "c_t", "authenticity"],
                         "verdict": ["seen", "seen", "seen", "not seen"]})
    assert in_short(rows) == ("In short: the seeds' trend is seen by 3 of 4 memorization measures; "
                              "not seen by authenticity.")
    rows["verdict"] = ["not seen", "opposite", "not seen", "not seen"]
    assert in_short(rows) == ("In short: the seeds' trend is seen by 0 of 4 memorization measures; the opposite by "
                              "synthetic volumes that are copies.")
    assert in_short(rows.iloc[:0]) == ""


def test_the_markdown_summary_quotes_the_aggregate_and_trend_tables() -> None:
    """summary.md holds the aggregate's means and CIs (fractions in %), the paired differences, the trend test's
    verdicts and the per-seed values, as the CSV files have them."""
    from memostudy.study.aggregate import aggregate
    from memostudy.study.sweep import _paired_and_trend, summary_markdown

    spec = load_sweep(SWEEPS / "augmentation.yaml", {"seeds": [0, 1, 2, 3, 4, 5]})
    rng = np.random.default_rng(0)
    rows = []
    for seed in range(6):  # 6 paired seeds: the smallest two-sided permutation p is 2/64
        for augment in (False, True):
            rows.append({"augment": augment, "seed": seed, "steps": 1500,
                         "memorized_fraction": 0.5 - 0.25 * augment + 0.01 * seed,
                         "copy_fraction": 0.25 - 0.125 * augment, "similarity_delta": rng.uniform(-1, 1),
                         "c_t": rng.normal(), "authenticity": rng.uniform(), "pixel_copy_fraction": 0.1 * seed,
                         "authenticity_reference": 0.5 + 0.1 * augment})
    table = pd.DataFrame(rows)
    agg, trends = _paired_and_trend(spec, table, aggregate(table, ["augment"], spec.metrics), "augment")
    text = summary_markdown(spec, table, agg, trends)
    lines = text.splitlines()
    off = next(line for line in lines if line.startswith("| False |"))
    on = next(line for line in lines if line.startswith("| True |"))
    assert "| 6 | 1500 | 52.5 [" in off and "| 27.5 [" in on  # memorized % means over the 6 seeds
    assert "-25.0 [-25.0, -25.0]" in on and "-12.5 [-12.5, -12.5]" in on  # paired differences in pp, no spread
    assert "| 25.0 | 0.50 |" in off and "| 25.0 | 0.60 |" in on  # pixel copies %, reference authenticity
    verdict_line = next(line for line in lines if line.startswith("| memorized_fraction |"))
    assert "| 0.0312 | 6 | seen |" in verdict_line and "-1.00" in verdict_line
    assert "| 3 | 53.0 | 28.0 |" in text  # seed 3's memorized % off and on
    assert text.count("| statistic |") == 1 and "In short: the seeds' trend is seen" in text
