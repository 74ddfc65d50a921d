"""Where a sweep's cells run: in this process one after the other, or one submitit job per cell.

`submitit <https://github.com/facebookincubator/submitit>`_ runs a Python function as a job on Slurm
(``slurm``) or as a separate process on this machine (``local``). A sweep (:mod:`memostudy.study.sweep`)
hands each cell still to run to :func:`run_cells`; each job runs the cell's notebook with
:func:`memostudy.study.runner.run_notebook` into the cell's own run folder, exactly as the in-process
sweep does, so finished cells are recognised the same way whatever ran them. The job's files (its
``<job-id>_0_log.out`` / ``.err`` logs and submitit's pickles) stay beside the cell, in
``<sweep>/<cell-id>.job/``. A job that is killed (time limit, preemption, ``scancel``) leaves its cell's
``run.json`` at ``running``: the next call of the sweep runs that cell again.

Settings come from the sweep file's ``executor`` mapping and the ``memostudy sweep`` options
(:class:`ExecutorConfig`)::

    executor: {kind: slurm, partition: gpu, gpus_per_job: 1, time_min: 240, cpus_per_job: 8, mem_gb: 32}
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from memostudy.errors import ConfigError

KINDS = ("inprocess", "local", "slurm")


@dataclass
class ExecutorConfig:
    """How a sweep runs its cells.

    Attributes:
        kind: ``inprocess`` (default: here, one after the other), ``local`` (one process per cell on this
            machine) or ``slurm`` (one Slurm job per cell).
        partition: Slurm partition (``--partition``); None = the cluster's default.
        gpus_per_job: GPUs of each job (Slurm ``--gpus-per-node``; ``local`` sets ``CUDA_VISIBLE_DEVICES``).
        cpus_per_job: CPU cores of each job (``--cpus-per-task``).
        mem_gb: memory of each job in GB (``--mem``); None = the cluster's default.
        time_min: time limit of each job in minutes (``--time``); a job past it is killed and rerun next call.
        max_parallel: at most this many jobs at once; None = every cell at once on Slurm, and as many as
            ``cpus_per_job`` fit in this machine's cores for ``local``.
        extra: more submitit parameters, passed as they are (e.g. ``{slurm_account: lab, slurm_qos: high}``).
    """

    kind: str = "inprocess"
    partition: str | None = None
    gpus_per_job: int = 0
    cpus_per_job: int = 2
    mem_gb: float | None = None
    time_min: int = 120
    max_parallel: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> ExecutorConfig:
        """From a sweep file's ``executor`` mapping (unknown keys are an error)."""
        raw = dict(raw or {})
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ConfigError(f"unknown executor setting(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
        return cls(**raw).validate()

    def validate(self) -> ExecutorConfig:
        """Raises ConfigError naming the first bad setting."""
        if self.kind not in KINDS:
            raise ConfigError(f"executor kind {self.kind!r}: use one of {', '.join(KINDS)}")
        for name in ("gpus_per_job", "cpus_per_job", "time_min"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < (0 if name == "gpus_per_job" else 1):
                raise ConfigError(f"executor {name} {v!r}: use a whole number >= {0 if name == 'gpus_per_job' else 1}")
        if self.max_parallel is not None and (not isinstance(self.max_parallel, int) or self.max_parallel < 1):
            raise ConfigError(f"executor max_parallel {self.max_parallel!r}: use a whole number >= 1")
        if self.mem_gb is not None and not float(self.mem_gb) > 0:
            raise ConfigError(f"executor mem_gb {self.mem_gb!r}: use a positive number")
        return self

    def submitit_parameters(self, name: str) -> dict[str, Any]:
        """The ``update_parameters`` of a submitit ``AutoExecutor`` for one cell's job."""
        p: dict[str, Any] = {"name": name, "timeout_min": self.time_min, "cpus_per_task": self.cpus_per_job,
                             "gpus_per_node": self.gpus_per_job, "nodes": 1, "tasks_per_node": 1}
        if self.mem_gb is not None:
            p["mem_gb"] = float(self.mem_gb)
        if self.partition is not None:
            p["slurm_partition"] = self.partition
        return p | dict(self.extra)

    def parallel(self) -> int | None:
        """How many jobs may run at once (None = no limit)."""
        if self.max_parallel is not None:
            return self.max_parallel
        if self.kind == "local":
            return max(1, (os.cpu_count() or 1) // self.cpus_per_job)
        return None


@dataclass
class Cell:
    """One cell to run: its position in the sweep, run folder name, notebook parameters and defaults hash."""

    index: int
    total: int
    cell_id: str
    params: dict[str, Any]
    fingerprint: str
    force: bool


def run_cell(notebook: str, params: dict[str, Any], root: str, cell_id: str, force: bool, fingerprint: str,
             progress: bool = True) -> tuple[str, str]:
    """Run one cell's notebook into ``root/cell_id``; on success record the defaults hash (``defaults.json``).

    Called in this process or inside a job. Returns ``(status, error)`` of the run.
    """
    from memostudy.study.runner import run_notebook

    res = run_notebook(notebook, params, reports_dir=root, run_id=cell_id, force=force, check_browser=False,
                       progress=progress)
    if res.status == "ok":
        (Path(root) / cell_id / "defaults.json").write_text(json.dumps({"fingerprint": fingerprint}))
    return res.status, res.error


def job_folder(root: Path, cell_id: str) -> Path:
    """Where a cell's job keeps its logs and submitit's files: beside the cell's run folder."""
    return root / f"{cell_id}.job"


def run_cells(cells: list[Cell], notebook: str, root: Path, cfg: ExecutorConfig, progress: bool = True,
              poll_s: float = 2.0) -> list[str]:
    """Run ``cells`` with ``cfg`` and wait for all of them; returns one line per failed cell.

    In process, the cells run one after the other. With submitit, each cell is one job (at most
    :meth:`ExecutorConfig.parallel` at once); a line is printed as each job is submitted and ends.
    """
    failed: list[str] = []
    if cfg.kind == "inprocess":
        for c in cells:
            print(f"[{c.index + 1}/{c.total}] {c.cell_id}: running {Path(notebook).name}", flush=True)
            status, error = run_cell(notebook, c.params, str(root), c.cell_id, c.force, c.fingerprint, progress)
            if status != "ok":
                failed.append(f"{c.cell_id}: {error}")
        return failed
    import submitit

    limit = cfg.parallel()
    pending, running = list(cells), []
    while pending or running:
        while pending and (limit is None or len(running) < limit):
            c = pending.pop(0)
            ex = submitit.AutoExecutor(folder=job_folder(root, c.cell_id), cluster=cfg.kind)
            ex.update_parameters(**cfg.submitit_parameters(f"memostudy-{root.name}"))
            job = ex.submit(run_cell, notebook, c.params, str(root), c.cell_id, c.force, c.fingerprint, progress)
            print(f"[{c.index + 1}/{c.total}] {c.cell_id}: {cfg.kind} job {job.job_id} submitted "
                  f"(log {job.paths.stdout})", flush=True)
            running.append((c, job))
        time.sleep(poll_s)
        for c, job in [r for r in running if r[1].done()]:
            running.remove((c, job))
            try:
                status, error = job.result()
            except Exception as e:  # killed, out of time, or the job itself crashed: rerun on the next call
                status, error = "failed", f"job {job.job_id} ended without finishing ({type(e).__name__}: " \
                                          f"{str(e).splitlines()[0] if str(e) else ''}); log {job.paths.stdout}"
            print(f"[{c.index + 1}/{c.total}] {c.cell_id}: {status}" + (f" ({error})" if error else ""), flush=True)
            if status != "ok":
                failed.append(f"{c.cell_id}: {error}")
    return failed
