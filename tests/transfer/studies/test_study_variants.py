"""``study.variants``: named config overrides as a grid factor (the ablation of one pipeline against another)."""
from __future__ import annotations

import pandas as pd
import pytest
import yaml

from transfer.cli import main
from transfer.studies.statistics import _pairs, compare_inits


def _args(settings: list[str], variants: str) -> list[str]:
    out = ["study"]
    for s in [*settings, "study.inits=[scratch]", f"study.variants={variants}"]:
        out += ["--set", s]
    return out


def test_variants_are_a_grid_factor_with_their_own_configs(tmp_path, tiny_npz, tiny_cae_study, capsys):
    settings = tiny_cae_study(tiny_npz, tmp_path / "s", "v", steps=2)
    args = _args(settings, "{base: {}, small: {data.image_size: [24, 24], train.lr: 0.003}}")
    assert main(args) == 0
    root = tmp_path / "s" / "v"
    res = pd.read_csv(root / "results.csv")
    assert list(res["run"]) == ["base-scratch-all-frac1-seed0", "small-scratch-all-frac1-seed0"]
    assert list(res["init"]) == ["scratch · base", "scratch · small"] and list(res["variant"]) == ["base", "small"]
    assert (res["test_seconds_per_image"] > 0).all() and (res["peak_memory_gib"] > 0.1).all()
    small = yaml.safe_load((root / "runs" / "small-scratch-all-frac1-seed0" / "config.yaml").read_text())
    base = yaml.safe_load((root / "runs" / "base-scratch-all-frac1-seed0" / "config.yaml").read_text())
    assert small["data"]["image_size"] == [24, 24] and small["train"]["lr"] == 0.003
    assert base["data"]["image_size"] == [32, 32] and base["train"]["lr"] != 0.003
    # the variant is compared with the first one listed, on the same init
    comp = pd.read_csv(root / "comparisons.csv")
    assert list(zip(comp["init"], comp["vs"])) == [("scratch · small", "scratch · base")]
    report = (root / "report.md").read_text()
    assert "Variant `small`: `data.image_size: [24, 24]`, `train.lr: 0.003`" in report
    assert "Variant `base`: this config as written" in report
    # a changed variant is a changed config for the cells already trained: refused, naming the key
    capsys.readouterr()
    assert main(_args(settings, "{base: {}, small: {data.image_size: [28, 28]}}")) == 2
    err = capsys.readouterr().err
    assert "study.variants" in err and "Traceback" not in err


def test_bad_variants_stop_the_study_before_any_run(tmp_path, tiny_npz, tiny_cae_study, capsys):
    settings = tiny_cae_study(tiny_npz, tmp_path / "s", "bad", steps=2)
    for variants, words in [("{a: {train.depth: head}}", ["study.variants.a.train.depth", "grid's own factors"]),
                            ("{a: {train.nope: 1}}", ["nope", "study.variants.a"]),
                            ("{a/b: {}}", ["study.variants.a/b", "letters, digits"]),
                            ("{a: {data.image_size: big}}", ["image_size", "study.variants.a"])]:
        capsys.readouterr()
        assert main(_args(settings, variants)) == 2, variants
        err = capsys.readouterr().err
        assert all(w in err for w in words) and "Traceback" not in err, (variants, err)
    assert not (tmp_path / "s" / "bad" / "runs").exists()


def test_pairs_compare_inits_within_a_variant_and_variants_within_an_init():
    rows = [("imagenet", v) for v in ("g", "r")] + [("scratch", v) for v in ("g", "r")] + [("cae", "r")]
    df = pd.DataFrame({"init": [f"{i} · {v}" for i, v in rows], "init_name": [i for i, _ in rows],
                       "variant": [v for _, v in rows]})
    assert _pairs(df) == [("imagenet · g", "scratch · g"),  # within g: imagenet vs scratch
                          ("cae · r", "imagenet · r"),  # within r: every init against imagenet and scratch
                          ("imagenet · r", "scratch · r"), ("cae · r", "scratch · r"),
                          ("imagenet · r", "imagenet · g"), ("scratch · r", "scratch · g")]  # across variants
    # without variants: the old rule (every init against imagenet and scratch)
    plain = pd.DataFrame({"init": ["imagenet", "scratch", "cae"]})
    assert _pairs(plain) == [("cae", "imagenet"), ("imagenet", "scratch"), ("cae", "scratch")]


def test_comparisons_state_the_difference_relative_to_the_baseline(tmp_path):
    """Over seeds: mean paired difference / the baseline's mean, as papers state "22% lower error"."""
    task = type("T", (), {"monitor": "mre_mm", "metric_range": staticmethod(lambda m: (0.0, float("inf")))})()
    df = pd.DataFrame({"init": ["imagenet"] * 3 + ["cae"] * 3, "depth": "all", "label_fraction": 1.0,
                       "seed": [0, 1, 2] * 2, "run": [f"r{k}" for k in range(6)],
                       "test_mre_mm": [2.0, 2.2, 1.8, 1.5, 1.7, 1.6]})
    comp = compare_inits(task, df, tmp_path, "ttest")
    row = comp.iloc[0]
    assert (row["init"], row["vs"]) == ("cae", "imagenet")
    assert row["difference"] == pytest.approx(-0.4) and row["relative"] == pytest.approx(-0.2)
