"""``medtransfer bench pool`` on a tiny synthetic pool: one row per path, every figure present and positive."""
from __future__ import annotations

import json

from transfer.cli import main


def test_bench_pool_prints_both_paths(tmp_path, capsys):
    out = tmp_path / "rows.json"
    assert main(["bench", "pool", "--images", "24", "--size", "32", "--work-dir", str(tmp_path), "--batch-size", "8",
                 "--step-batch", "4", "--steps", "1", "--backbone", "tiny_resnet", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [(r["n"], r["mode"]) for r in rows] == [(24, "stream"), (24, "memory")]
    for r in rows:
        for k in ("prep_warm", "data_w0", "data_w2", "step", "peak_rss_gib"):
            assert r[k] > 0, (r["mode"], k)
    assert rows[0]["prep_cold"] > 0 and rows[0]["step_workers"] >= 1 and rows[1]["step_workers"] == 0
    assert "| 24 | stream |" in capsys.readouterr().out
    assert len(list((tmp_path / "pool24" / "pool").glob("*.png"))) == 24
