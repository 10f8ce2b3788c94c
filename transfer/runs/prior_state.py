"""What a run directory already holds when a run starts: a finished run of this config, or resume states to check."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from transfer.data.fingerprint import DataFingerprint, data_changes
from transfer.distributed import is_main_process
from transfer.engine import ResumeStateError, check_resume_config, read_resume_state
from transfer.errors import RunInterrupted
from transfer.runs.run_lock import run_lock
from transfer.tracking import Run, completed_summary, discard_run_state


def prior_run(run_dir: Path, output: str, config: dict[str, Any], job: str) -> dict[str, Any] | None:
    """The summary of a finished run of ``config`` in ``run_dir`` (``summary.json`` + ``output``), else None.

    Before anything is written, every resume state there (``last*.pt``) must be readable and of this config; a
    finished run of another config is refused too (both one-line errors naming the changed keys).
    """
    done = completed_summary(run_dir, (output,), config, job)
    if done is not None:
        return {**done, "already_complete": True}
    for path in sorted(Path(run_dir).glob("last*.pt")):
        check_resume_config(read_resume_state(path, mmap=True), path, config)
    return None


def check_resume_data(run_dir: Path, data: DataFingerprint) -> None:
    """Refuse to resume on other data than the resume states were trained on, naming what changed.

    A state written before the data was recorded (no ``data``) cannot be checked and is resumed as before.
    """
    for path in sorted(Path(run_dir).glob("last*.pt")):
        old = read_resume_state(path, mmap=True).get("data")
        if old is None:
            continue
        changes = data_changes(old, data)
        if changes:
            raise ResumeStateError(f"'{path}': the data changed since this run was interrupted "
                                   f"({'; '.join(changes)}); put the data back to resume, start over with "
                                   "--restart, or use a new run name (--name)")


def saved_progress(run_dir: Path) -> tuple[int, str] | None:
    """(epochs saved, resume-state file name) of the newest resume state in ``run_dir``; None without one."""
    states = sorted(Path(run_dir).glob("last*.pt"), key=lambda p: p.stat().st_mtime)
    if not states:
        return None
    try:
        return int(read_resume_state(states[-1], mmap=True)["epoch"]) + 1, states[-1].name
    except ResumeStateError:
        return None


def interrupted(run: Run) -> RunInterrupted:
    """Ctrl-C: record it in ``failed.json`` and say what the rerun will do (the saved state is complete: resume
    states are written atomically, so a Ctrl-C during a save leaves the previous one)."""
    progress = saved_progress(run.dir)
    if progress is None:
        msg = "interrupted before the first epoch was saved; rerun the same command to start again"
    else:
        msg = (f"interrupted after epoch {progress[0]} (saved in '{run.dir / progress[1]}'); rerun the same "
               "command to resume")
    run.fail(KeyboardInterrupt(msg), status="interrupted", epochs_saved=progress[0] if progress else 0)
    return RunInterrupted(msg)


@contextmanager
def claimed_run(run_dir: Path, output: str, config: dict[str, Any], job: str, data: DataFingerprint,
                restart: bool) -> Iterator[dict[str, Any] | None]:
    """Hold ``run_dir`` for this start of a run (:func:`~transfer.runs.run_lock.run_lock`) and settle what it holds.

    Yields the summary of a run of ``config`` that another start finished meanwhile (the caller returns it), else
    None once the resume states are checked against ``data`` (or, with ``restart``, discarded by rank 0). Checked
    again under the lock: another start may have finished the run, or left resume states, since the caller looked.
    """
    with run_lock(run_dir):  # one start of a run at a time; a second one is refused, naming the first
        if not restart:
            if (done := prior_run(run_dir, output, config, job)) is not None:
                yield done
                return
            check_resume_data(run_dir, data)
        elif is_main_process():
            discard_run_state(run_dir)
        yield None


@contextmanager
def recorded(run: Run) -> Iterator[Run]:
    """The body of a run: Ctrl-C becomes :func:`interrupted` (exit 130, what the rerun will do), any other error is
    recorded in ``failed.json`` and raised, and the run (its W&B mirror) is finished either way."""
    try:
        yield run
    except KeyboardInterrupt:
        raise interrupted(run) from None
    except Exception as e:
        run.fail(e)
        raise
    finally:
        run.finish()
