"""A process forked while a run's lock is held (a DataLoader worker) does not hold the lock: once the run's own
process is gone, the next start takes the run over even while that child still lives."""
from __future__ import annotations

import os
import signal
import time

import pytest

from transfer.runs.run_lock import run_lock


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_does_not_keep_the_run_locked(tmp_path):
    run_dir = tmp_path / "r"
    read, write = os.pipe()
    holder = os.fork()
    if holder == 0:  # the run: takes the lock, forks a long-lived 'worker', then waits to be killed
        with run_lock(run_dir):
            worker = os.fork()
            if worker == 0:
                time.sleep(30)
                os._exit(0)
            os.write(write, str(worker).encode())
            time.sleep(30)
        os._exit(0)
    worker = int(os.read(read, 32))
    os.kill(holder, signal.SIGKILL)
    os.waitpid(holder, 0)
    try:
        os.kill(worker, 0)  # the orphaned worker still runs ...
        with run_lock(run_dir):  # ... and the run can be started again
            pass
    finally:
        os.kill(worker, signal.SIGKILL)
