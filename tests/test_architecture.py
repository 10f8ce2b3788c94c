"""The import rules of DESIGN.md, as import-linter contracts in pyproject.toml: they hold, and they can fail."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("transfer", "tasks", "ssl_pretrain")


def _lint(root: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` on the packages under ``root`` (a copy of the repository's packages and pyproject)."""
    lint = Path(sys.executable).with_name("lint-imports")
    if not lint.exists():
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(lint), "--config", str(root / "pyproject.toml"), "--no-cache"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    for pkg in PACKAGES:
        shutil.copytree(REPO / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_contracts_hold(repo_copy):
    r = _lint(repo_copy)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout


@pytest.mark.parametrize("module,imported,contract", [
    ("transfer/engine.py", "tasks.classification.task", "The core knows no plug-in"),
    ("transfer/weights.py", "transfer.runs.finetune", "The core knows no plug-in"),
    ("tasks/landmarks/task.py", "ssl_pretrain.simclr", "Layers"),
    ("transfer/runs/finetune.py", "transfer.studies.grid", "Layers"),
])
def test_a_forbidden_import_breaks_a_contract(repo_copy, module, imported, contract):
    path = repo_copy / module
    path.write_text(path.read_text() + f"\nimport {imported}  # a forbidden dependency\n")
    r = _lint(repo_copy)
    assert r.returncode != 0
    assert f"{contract}" in r.stdout and "BROKEN" in r.stdout
