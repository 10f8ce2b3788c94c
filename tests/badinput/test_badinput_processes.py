"""The bad-input cases that need real processes: Ctrl-C, a resume on changed data, two starts of one run at once,
and the warnings a real console shows.

Each starts the real command line (``python -m transfer.cli``) as a subprocess on generated files, waits on files
(never on the clock), and checks the exit status and the console: one line, never a traceback.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transfer.runs import run_lock as lock_module
from transfer.runs.run_lock import LOCK_FILE, RunLockedError, run_lock

REPO = Path(__file__).resolve().parents[2]
SIZE = 32


def _png(path: Path, seed: int, size: int = SIZE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.random.default_rng(seed).random((size, size)) * 255).astype(np.uint8)).save(path)


def _class_folders(root: Path, n: int, first: int = 0) -> None:
    for ci, c in enumerate(("a", "b")):
        for i in range(first, first + n):
            _png(root / c / f"{i}.png", ci * 1000 + i)


def _env(tmp: Path) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "disabled",
           "MEDTRANSFER_CACHE": str(tmp / "cache"), "CUDA_VISIBLE_DEVICES": ""}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def _finetune(tmp: Path, *sets: str) -> list[str]:
    """A run far too long to finish (one step per epoch, no early stop): it is stopped by the test."""
    sets = ("backbone.name=tiny_resnet", "init=scratch", "train.epochs=100000", "train.patience=100000",
            "train.max_steps=1", "train.batch_size=4", f"data.image_size=[{SIZE}, {SIZE}]", "backbone.in_chans=1",
            "task.classification.bootstrap=10", "data.format=folder", f"data.root={tmp}", "data.train=train",
            f"tracking.out_dir={tmp / 'runs'}", "tracking.wandb_mode=disabled", "tracking.progress=false",
            "tracking.log_media=false", f"data.cache_dir={tmp / 'cache'}", *sets)
    return [sys.executable, "-m", "transfer.cli", "finetune", "--name", "r", *[a for s in sets for a in ("--set", s)]]


def _as_at_a_terminal() -> None:
    """SIGINT back to its default in the child, as for a command typed at a terminal. A background job of a
    non-interactive shell (``bash -c 'pytest ... &'``, as CI runners and nohup'd runs start) inherits SIGINT
    *ignored*, and Python keeps an ignored SIGINT ignored: the child would never see the test's Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(argv: list[str], tmp: Path, log: str) -> subprocess.Popen:
    return subprocess.Popen(argv, cwd=REPO, env=_env(tmp), stdout=open(tmp / f"{log}.out", "w"),
                            stderr=open(tmp / f"{log}.err", "w"), preexec_fn=_as_at_a_terminal)


def _run(argv: list[str], tmp: Path) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=REPO, env=_env(tmp), capture_output=True, text=True, timeout=300)


def _wait_for_saved_epoch(proc: subprocess.Popen, run: Path, tmp: Path, log: str) -> None:
    """Until the run has saved a resume state (so it holds its lock and is well inside its epochs)."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if (run / "last.pt").is_file() and (run / "metrics.jsonl").is_file():
            return
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (exit {proc.returncode}) before it saved an epoch:\n"
                                 + (tmp / f"{log}.err").read_text()[-3000:])
        time.sleep(0.01)
    proc.kill()
    raise AssertionError("no saved epoch within 240 s")


def _one_error_line(text: str) -> str:
    assert "Traceback" not in text, text
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def test_ctrl_c_then_resume_on_changed_data(tmp_path):
    """Ctrl-C: one line with the saved epoch, exit 130, failed.json says 'interrupted'. Then 10 images are added
    to the training folder: the rerun of the same command is refused, naming what changed and the ways out."""
    _class_folders(tmp_path / "train", 6)
    argv, run = _finetune(tmp_path), tmp_path / "runs" / "r"
    proc = _start(argv, tmp_path, "first")
    try:
        _wait_for_saved_epoch(proc, run, tmp_path, "first")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 130, (tmp_path / "first.err").read_text()[-3000:]
    finally:  # a run that missed its Ctrl-C would otherwise train on after the test, for 100,000 epochs
        if proc.poll() is None:
            proc.kill()
    err = (tmp_path / "first.err").read_text()
    line = _one_error_line(err)
    failed = json.loads((run / "failed.json").read_text())
    n = failed["epochs_saved"]
    assert failed["status"] == "interrupted" and n >= 1
    assert line == (f"medtransfer: interrupted after epoch {n} (saved in '{run / 'last.pt'}'); rerun the same "
                    "command to resume")

    _class_folders(tmp_path / "train", 5, first=6)  # 10 more images: n_train and the carved validation change
    r = _run(argv, tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    line = _one_error_line(r.stderr)
    assert line.startswith(f"medtransfer: error: '{run / 'last.pt'}': the data changed since this run was "
                           "interrupted (train: "), line
    assert "added: " in line and ".png" in line and "val: " in line, line
    assert line.endswith("put the data back to resume, start over with --restart, or use a new run name (--name)")
    assert not (run / "summary.json").exists()


def test_sigterm_stops_a_run_as_ctrl_c_does(tmp_path):
    """kill / a batch scheduler's SIGTERM: the run records failed.json ('interrupted', the epochs saved) and says so
    in one line, exit 143 (128 + SIGTERM), instead of vanishing with a resume state and no word."""
    _class_folders(tmp_path / "train", 6)
    argv, run = _finetune(tmp_path), tmp_path / "runs" / "r"
    proc = _start(argv, tmp_path, "first")
    try:
        _wait_for_saved_epoch(proc, run, tmp_path, "first")
        proc.terminate()
        assert proc.wait(timeout=120) == 143, (tmp_path / "first.err").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    line = _one_error_line((tmp_path / "first.err").read_text())
    failed = json.loads((run / "failed.json").read_text())
    n = failed["epochs_saved"]
    assert failed["status"] == "interrupted" and n >= 1
    assert line == (f"medtransfer: interrupted after epoch {n} (saved in '{run / 'last.pt'}'); rerun the same "
                    "command to resume")


def test_two_starts_of_one_run(tmp_path):
    """A second start of a running run is refused in one line naming the holder, and writes nothing; once the
    holder is killed (SIGKILL: no chance to clean up), its lock file is stale and the next start takes it."""
    _class_folders(tmp_path / "train", 4)
    argv, run = _finetune(tmp_path), tmp_path / "runs" / "r"
    first = _start(argv, tmp_path, "first")
    try:
        _wait_for_saved_epoch(first, run, tmp_path, "first")
        r = _run(argv, tmp_path)
        assert r.returncode == 2, r.stdout + r.stderr
        line = _one_error_line(r.stderr)
        assert line.startswith(f"medtransfer: error: '{run}': this run is already running (pid {first.pid} on "
                               f"{socket.gethostname()}, started "), line
        assert line.endswith("wait for it to end, or use another run name (--name)"), line
        assert first.poll() is None, "the second start stopped the first"
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    epochs = [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines() if x.endswith("}")]
    assert len(epochs) == len(set(epochs)), "an epoch was logged twice"
    assert json.loads((run / LOCK_FILE).read_text())["pid"] == first.pid  # left behind by the killed holder
    with run_lock(run):  # stale: taken over without a word
        assert json.loads((run / LOCK_FILE).read_text())["pid"] == os.getpid()


def test_warnings_are_one_line_each(tmp_path):
    """PIL's DecompressionBombWarning (a lowered limit stands in for a 90-megapixel file) names the file, and an
    unwritable decode cache is said once for all splits: each one line, without the warning's source line."""
    _class_folders(tmp_path / "train", 4)
    _class_folders(tmp_path / "test", 2, first=10)
    _png(tmp_path / "train" / "a" / "big.png", 99, size=48)  # 2304 px, over the limit of 2000
    (tmp_path / "not_a_folder").write_text("a file where the cache folder should be")
    argv = _finetune(tmp_path, "train.epochs=1", "data.test=test", f"data.cache_dir={tmp_path / 'not_a_folder' / 'c'}")
    code = ("import sys, PIL.Image; PIL.Image.MAX_IMAGE_PIXELS = 2000; from transfer.cli import main; "
            "raise SystemExit(main(sys.argv[1:]))")
    r = _run([sys.executable, "-c", code, *argv[3:]], tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and "Warning:" not in r.stderr, r.stderr
    warnings = [x for x in r.stderr.splitlines() if x.startswith("warning: ")]
    big = [x for x in warnings if "big.png" in x]
    cache = [x for x in warnings if "decode cache" in x]
    assert len(big) == 1 and "48x48 px is beyond PIL's decompression-bomb warning limit of 2000 px" in big[0], warnings
    assert cache == [f"warning: {tmp_path / 'not_a_folder' / 'c'}: cannot write the decode cache (Not a "
                     "directory); decoding without caching"], warnings
    assert not any(x.startswith((" ", "\t")) for x in r.stderr.splitlines()), r.stderr


def test_lock_record_without_flock(tmp_path, monkeypatch):
    """Where the filesystem has no flock, the lock file's record decides: a live pid of this host holds the run,
    a dead one is stale, another host's cannot be checked (the message says which file to delete)."""
    monkeypatch.setattr(lock_module, "fcntl", None)
    run = tmp_path / "r"
    run.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    for holder, held in (({"pid": os.getppid(), "host": host}, True), ({"pid": int(dead.stdout), "host": host}, False),
                         ({"pid": 1, "host": "elsewhere"}, True)):
        (run / LOCK_FILE).write_text(json.dumps({**holder, "started": "2025-01-01T00:00:00"}))
        if held:
            with pytest.raises(RunLockedError, match="this run is already running") as e:
                with run_lock(run):
                    pass
            assert ("delete" in str(e.value)) == (holder["host"] != host)
        else:
            with run_lock(run):
                assert json.loads((run / LOCK_FILE).read_text())["pid"] == os.getpid()
            assert (run / LOCK_FILE).read_text() == ""  # released
