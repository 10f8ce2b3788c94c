"""Where a study's jobs run: in this process (``local``), or through submitit (Slurm job arrays, or submitit's
own local and debug executors). No scheduler of our own: submitit submits, waits and collects.

A job is a top-level function and its arguments (they are pickled for submitit); every job is idempotent
(a finished cell is read back, not retrained), so a resubmitted array redoes only what did not finish.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from transfer.config import Config
from transfer.errors import MedTransferError

Job = Callable[..., Any]


class StudyJobError(MedTransferError):
    """A submitted job failed; the message names its log."""


def run_local(cfg: Config, root: Path, fn: Job, args: Sequence[tuple], name: str,
              progress: Callable[[str], None]) -> list[Any]:
    """Each job in turn, in this process."""
    return [fn(*a) for a in args]


def run_submitit(cfg: Config, root: Path, fn: Job, args: Sequence[tuple], name: str,
                 progress: Callable[[str], None]) -> list[Any]:
    """All jobs as one job array (``map_array``), then wait for them; results in the order of ``args``."""
    import submitit

    executor, folder = make_executor(cfg, root, name)
    jobs = executor.map_array(fn, *zip(*args))
    progress(f"submitted {len(jobs)} {name} job(s) to submitit's {executor.cluster} executor "
             f"(job ids {jobs[0].job_id}..{jobs[-1].job_id}; logs in {folder})")
    results: dict[str, Any] = {}
    for job in submitit.helpers.as_completed(jobs):
        try:
            results[job.job_id] = job.result()
        except Exception as e:  # submitit's FailedJobError / UncompletedJobError carry the job's traceback or log
            first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise StudyJobError(f"{name} job {job.job_id} failed ({first}); its log: {job.paths.stderr}") from None
        progress(f"{name} job {job.job_id} done: {results[job.job_id]}")
    return [results[j.job_id] for j in jobs]


def make_executor(cfg: Config, root: Path, name: str) -> tuple[Any, Path]:
    """submitit's ``AutoExecutor`` with ``study.submitit``'s parameters (a wrong ``slurm_*`` name is submitit's own
    error naming the valid ones), and the folder of its pickles and logs."""
    import submitit

    sc = cfg.study.submitit
    folder = Path(sc.folder) if sc.folder else root / "submitit"
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster=sc.cluster)
    executor.update_parameters(name=f"{cfg.study.name}-{name}", **sc.parameters())
    return executor, folder


#: ``study.executor`` -> how its jobs run
EXECUTORS: dict[str, Callable[..., list[Any]]] = {"local": run_local, "submitit": run_submitit}


def run_jobs(cfg: Config, root: Path, fn: Job, args: Sequence[tuple], name: str,
             progress: Callable[[str], None]) -> list[Any]:
    """``fn(*a)`` for each ``a`` in ``args`` on ``study.executor``; returns their results in order."""
    if not args:
        return []
    return EXECUTORS[cfg.study.executor](cfg, root, fn, args, name, progress)
