"""What a run directory already holds when a run starts: a finished run of this config, or resume states to check."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from transfer.engine import check_resume_config, read_resume_state
from transfer.tracking import completed_summary


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
