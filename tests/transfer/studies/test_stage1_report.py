"""The study report's stage-1 section: curves per method and whether each ended flat."""
from __future__ import annotations

import json

import pandas as pd

from transfer.studies.report import md_table
from transfer.studies.stage1_report import last_quarter_share, stage1_section


def _write_run(root, method, losses, metric=None, selection=None):
    d = root / "pretrain" / method
    d.mkdir(parents=True)
    rows = [{"epoch": e, "train_loss": v, "train_momentum": 0.99, **({metric: 0.1 * e} if metric else {})}
            for e, v in enumerate(losses)]
    (d / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (d / "summary.json").write_text(json.dumps({"pool_size": 150, "seconds": 120.0,
                                                **({"selection": selection} if selection else {})}))


def test_last_quarter_share_of_the_decrease():
    assert last_quarter_share(pd.Series([10.0, 6.0, 4.0, 3.0, 2.0])) == 1 / 8  # 3 -> 2 of 10 -> 2
    assert last_quarter_share(pd.Series([-0.1, -0.5, -0.5, -0.5, -0.5])) == 0.0  # negative losses work too
    assert last_quarter_share(pd.Series([1.0, 1.0, 1.0])) != last_quarter_share(pd.Series([1.0, 1.0, 1.0]))  # NaN


def test_stage1_section_table_and_plot(tmp_path):
    _write_run(tmp_path, "cae", [1.0, 0.5, 0.3, 0.2, 0.1], "train_psnr")  # still falling: 0.2 -> 0.1 of 0.9
    _write_run(tmp_path, "byol", [0.0, -0.5, -0.6, -0.6, -0.6], "train_pretext_acc",  # flat
               {"kept": "best", "epoch": 1, "by": "val_linear_probe_acc", "value": 0.9312, "epochs_trained": 5,
                "stopped_on_plateau": True})
    out = tmp_path / "rep" / "r.md"
    out.parent.mkdir()
    text = "\n".join(stage1_section(tmp_path, out, md_table))
    assert ("| byol | 5 | 150 | 0.000 | -0.600 | 0.0% | yes | pretext_acc 0.400 | "
            "epoch 1 of 5: linear_probe_acc 0.931, plateau stop | 2.000 |") in text
    assert "| cae | 5 | 150 | 1.000 | 0.100 | 11.1% | no | psnr 0.400 | last | 2.000 |" in text
    assert "momentum" not in text  # a schedule value, not the method's metric
    assert (out.parent / "r_stage1.png").stat().st_size > 0 and "![r_stage1](r_stage1.png)" in text
    assert stage1_section(tmp_path / "none", out, md_table) == []


def test_task_sections_show_one_seed_per_cell_when_there_are_several():
    from transfer.studies.report import _task_sections

    class Echo:
        def report_sections(self, runs, table):
            return ["## runs", "", ", ".join(runs)]

    df = pd.DataFrame({"run": ["a-seed0", "a-seed1", "b-seed0", "b-seed1"], "seed": [0, 1, 0, 1]})
    summaries = {r: {} for r in df["run"]}
    lines = _task_sections(Echo(), df, summaries)
    assert lines[-1] == "a-seed0, b-seed0" and lines[2].startswith("Seed 0 of each cell")
    assert _task_sections(Echo(), df[df["seed"] == 1], summaries)[-1] == "a-seed1, b-seed1"  # one seed: all runs


def test_curves_spanning_more_than_tenfold_get_a_log_axis():
    from matplotlib.figure import Figure

    from transfer.studies.study_plots import log_scale_if_wide

    ax = Figure().add_subplot()
    ax.plot([0, 1, 2], [30.0, 2.0, 1.5])
    log_scale_if_wide(ax)
    assert ax.get_yscale() == "log"
    flat = Figure().add_subplot()
    flat.plot([0, 1], [0.8, 0.9])  # an AUC curve stays linear
    log_scale_if_wide(flat)
    assert flat.get_yscale() == "linear"


def test_a_rising_stage1_loss_is_named_not_judged(tmp_path):
    _write_run(tmp_path, "moco", [3.7, 4.2, 4.5, 4.6, 4.6], "train_pretext_acc")
    out = tmp_path / "r.md"
    text = "\n".join(stage1_section(tmp_path, out, md_table))
    assert "| moco | 5 | 150 | 3.700 | 4.600 | - | loss rose |" in text and "nan" not in text
