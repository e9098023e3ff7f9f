"""What a Hydra multirun leaves behind once every job has ended: a status table and the comparison.

:class:`SweepReport` is a Hydra callback (``hydra.callbacks`` in ``conf/hydra/default.yaml``). At the
end of a multirun, with any launcher or sweeper, it reads each job's ``results.json`` from the sweep
folder (:func:`hrexp.reports.runs.load_run`), prints which jobs finished and which failed (and why),
writes ``sweep_status.json``, and writes the comparison report (``comparison.md``/``.csv``/``.png``,
see :mod:`hrexp.compare`) into the sweep folder, so a sweep ends in a table nobody types by hand.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import rich
from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from rich.table import Table

from hrexp.reports.comparison import write_report
from hrexp.reports.runs import Run, distinguishing_overrides, load_run
from hrexp.run_record import write_json

log = logging.getLogger(__name__)


def sweep_jobs(sweep_dir: Path) -> list[Run]:
    """Each job folder of a sweep (its numbered subfolders), read as the comparison reads a run, in job order."""
    jobs = sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    return [load_run(job, job.name) for job in jobs]


def job_status(run: Run) -> str:
    """The record's status (``finished``, ``failed``, ``running``), or ``no record`` when the job has
    none or an unreadable one (it died before writing it, e.g. killed, or mid-write)."""
    return run.record.status if run.record is not None else "no record"


class SweepReport(Callback):
    """At the end of a multirun: job statuses (table + ``sweep_status.json``) and the comparison report.

    Args:
        compare: Write the comparison report into the sweep folder.
    """

    def __init__(self, compare: bool = True):
        self.compare = compare

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        jobs = sweep_jobs(sweep_dir)
        rows = []
        table = Table(title=f"Sweep {sweep_dir}")
        for column in ("job", "status", "overrides", "note"):
            table.add_column(column)
        # The table shows what tells the jobs apart, not the overrides they all share.
        for job, distinct in zip(jobs, distinguishing_overrides([job.overrides for job in jobs])):
            status = job_status(job)
            # A failed job's first note is its error; a job without a record says why there is none.
            note = "; ".join(job.notes) if status != "finished" else ""
            rows.append({"job": job.name, "status": status, "overrides": job.overrides, "error": note or None})
            table.add_row(job.name, status, " ".join(distinct), note[:200])
        rich.print(table)
        failed = [r["job"] for r in rows if r["status"] != "finished"]
        if failed:
            log.error("sweep %s: %d of %d jobs did not finish: %s", sweep_dir, len(failed), len(rows), failed)
        write_json(sweep_dir / "sweep_status.json", {"sweep_dir": str(sweep_dir), "jobs": rows, "failed": failed})
        if self.compare and any(r["status"] == "finished" for r in rows):
            try:
                written = write_report([sweep_dir], out_dir=sweep_dir)
                rich.print(f"[bold]Comparison[/bold] written: {', '.join(str(p) for p in written)}")
            except Exception as err:  # the sweep's results are already on disk; say why, do not hide them
                log.error("comparison report for %s failed: %s (run `python -m hrexp.compare %s`)", sweep_dir, err,
                          sweep_dir, exc_info=True)
