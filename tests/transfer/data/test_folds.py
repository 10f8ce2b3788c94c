"""Cross-validation folds: a deterministic, disjoint, covering, balanced assignment; the committed ISBI 2015 file is
what ``medtransfer folds make`` writes; ``data.fold`` k tests on fold k and trains on the others."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import KFold

from transfer.api import TASKS
from transfer.cli import main
from transfer.config import Config
from transfer.config.io import ConfigError, load_config
from transfer.data.folds import fold_split, make_folds, read_folds
from transfer.errors import DatasetError
from transfer.runs.splits import prepare_data

REPO = Path(__file__).resolve().parents[3]
COMMITTED = REPO / "configs" / "folds" / "isbi2015_4fold.csv"
ISBI_IMAGES = [f"{i:03d}.jpg" for i in range(1, 301)]


def test_folds_are_deterministic_disjoint_covering_and_balanced():
    names = [f"img{i:03d}.png" for i in range(103)]
    folds = make_folds(names, 4, seed=0)
    again = make_folds(list(reversed(names)), 4, seed=0)  # the listing order does not matter
    pd.testing.assert_frame_equal(folds, again)
    assert sorted(folds["image"]) == sorted(names)  # covering, each image once: disjoint
    assert folds["image"].is_unique
    sizes = folds["fold"].value_counts()
    assert sorted(sizes.index) == [0, 1, 2, 3] and sizes.max() - sizes.min() <= 1
    assert not make_folds(names, 4, seed=1)["fold"].equals(folds["fold"])  # the seed matters


def test_folds_are_sklearn_kfold_on_the_sorted_names():
    names = sorted(f"{i}.jpg" for i in range(37))
    folds = make_folds(names, 3, seed=5).set_index("image")["fold"]
    for k, (_, test) in enumerate(KFold(n_splits=3, shuffle=True, random_state=5).split(names)):
        assert sorted(folds[folds == k].index) == sorted(names[i] for i in test)


def test_make_folds_names_its_problems():
    with pytest.raises(DatasetError, match="'a.png' is listed more than once"):
        make_folds(["x/a.png", "y/a.png", "b.png"], 2, 0)
    with pytest.raises(DatasetError, match="3 images cannot make 4 folds"):
        make_folds(["a", "b", "c"], 4, 0)


def _listing(path: Path, images: list[str]) -> Path:
    path.write_text("image_path,1_x,1_y\n" + "".join(f"{i},1,1\n" for i in images))
    return path


def test_the_committed_isbi_file_is_what_the_command_makes(tmp_path, capsys):
    """The command on listings of 001-300 (here two synthetic CSVs with the challenge's split: the file depends on the
    image names only) writes the committed file, byte for byte."""
    train = _listing(tmp_path / "train_senior.csv", ISBI_IMAGES[:150])
    test = _listing(tmp_path / "test1_senior.csv", ISBI_IMAGES[150:])
    out = tmp_path / "folds.csv"
    assert main(["folds", "make", str(train), str(test), "--k", "4", "--seed", "0", "--out", str(out)]) == 0
    assert "300 images in 4 folds of 75, 75, 75, 75" in capsys.readouterr().out
    assert out.read_bytes() == COMMITTED.read_bytes()


@pytest.mark.realdata
def test_the_committed_isbi_file_covers_the_real_listings(real_data, tmp_path):
    root = real_data("isbi2015_ceph")
    out = tmp_path / "folds.csv"
    assert main(["folds", "make", str(root / "train_senior.csv"), str(root / "test1_senior.csv"),
                 "--out", str(out)]) == 0
    assert out.read_bytes() == COMMITTED.read_bytes()


def test_read_folds_checks_the_file(tmp_path):
    cases = {
        "name,fold\na.png,0\n": "has the columns image, fold",
        "image,fold\na.png,0\nb.png,x\n": r"line 3 \(b.png\): fold 'x' is not an integer",
        "image,fold\na.png,0\nb.png,1.5\n": r"line 3 \(b.png\): fold 1.5 is not an integer",
        "image,fold\na.png,0\na.png,1\n": "lines 2, 3: image a.png is listed more than once",
        "image,fold\na.png,0\nb.png,2\n": "folds are 0..2 but fold 1 has no image",
    }
    for i, (text, message) in enumerate(cases.items()):
        path = tmp_path / f"f{i}.csv"
        path.write_text(text)
        with pytest.raises(DatasetError, match=message):
            read_folds(path)


def test_fold_split_holds_out_one_fold_and_names_what_does_not_match(tmp_path):
    folds = pd.Series([0, 1, 2, 0, 1, 2], index=[f"{c}.png" for c in "abcdef"])
    ids = ["dir/a.png", "b.png", "c.png", "d.png", "e.png", "f.png"]  # ids may be paths: matched by file name
    train, test = fold_split(ids, folds, 1, "f.csv")
    assert test.tolist() == [1, 4] and train.tolist() == [0, 2, 3, 5]
    assert set(train).isdisjoint(test)
    with pytest.raises(DatasetError, match=r"data.fold: 3 is out of range: f.csv has folds 0..2"):
        fold_split(ids, folds, 3, "f.csv")
    with pytest.raises(DatasetError, match=r"f.csv: image g.png \(of the training listings\) has no fold"):
        fold_split([*ids, "g.png"], folds, 0, "f.csv")
    with pytest.raises(DatasetError, match=r"f.csv: 1 image\(s\) of the folds file are in no listing.*e.g. f.png"):
        fold_split(ids[:5], folds, 0, "f.csv")
    # an image skipped as unreadable (and reported) is not a mismatch
    assert fold_split(ids[:5], folds, 0, "f.csv", skipped=["/data/f.png"])[1].tolist() == [0, 3]


def _fold_config(root: Path, folds: Path, *more: str) -> Config:
    return load_config(Config, None, [
        "task.name=landmarks", "data.format=landmark_csv", f"data.root={root}", "data.train=[train.csv, test.csv]",
        "data.image_dir=images", "data.image_size=[32, 32]", "backbone.in_chans=1", "tracking.progress=false",
        f"data.folds={folds}", *more])


def test_a_fold_trains_on_the_other_folds_and_tests_on_its_own(tiny_landmarks):
    images = [f"{i:03d}.png" for i in range(12)]  # 9 in train.csv, 3 in test.csv
    folds_file = tiny_landmarks / "folds.csv"
    make_folds(images, 3, seed=0).to_csv(folds_file, index=False)
    assignment = read_folds(folds_file)
    for k in range(3):
        cfg = _fold_config(tiny_landmarks, folds_file, f"data.fold={k}")
        splits = prepare_data(TASKS.get("landmarks")(cfg), cfg)
        test, trained = set(splits.test.ids), set(splits.train.ids) | set(splits.val.ids)
        assert test == set(assignment[assignment == k].index)
        assert trained == set(assignment[assignment != k].index)  # both CSVs' rows, every other fold
        assert test.isdisjoint(trained)
        assert splits.info["fold"] == k and splits.info["n_folds"] == 3 and splits.info["n_test"] == 4


def test_fold_errors_name_the_key_or_the_file(tiny_landmarks):
    folds_file = tiny_landmarks / "folds.csv"
    make_folds([f"{i:03d}.png" for i in range(9)], 3, seed=0).to_csv(folds_file, index=False)  # test.csv's missing
    cfg = _fold_config(tiny_landmarks, folds_file, "data.fold=0")
    with pytest.raises(DatasetError, match=r"folds.csv: image 009.png \(of the training listings\) has no fold"):
        prepare_data(TASKS.get("landmarks")(cfg), cfg)
    cfg = _fold_config(tiny_landmarks, folds_file, "data.fold=3", "data.train=train.csv")
    with pytest.raises(DatasetError, match="data.fold: 3 is out of range"):
        prepare_data(TASKS.get("landmarks")(cfg), cfg)
    for more, key in ((["data.fold=null"], "data.folds: needs data.fold"),
                      (["data.folds=null", "data.fold=1"], "data.fold: needs data.folds"),
                      (["data.fold=-1"], "data.fold: must be >= 0"),
                      (["data.fold=0", "data.test=test.csv"], "data.test: data.fold takes the test split"),
                      (["data.fold=0", "data.train=[]"], "data.train: a list must name one or more listings")):
        with pytest.raises(ConfigError, match=key):
            _fold_config(tiny_landmarks, folds_file, *more)


def test_a_list_of_listings_is_refused_by_a_task_that_reads_one(tiny_npz):
    cfg = load_config(Config, None, ["data.format=npz", f"data.root={tiny_npz.parent}",
                                     "data.train=[tiny.npz#train, tiny.npz#val]", "tracking.progress=false"])
    with pytest.raises(ConfigError, match=r"data.train: task classification reads one listing per split"):
        prepare_data(TASKS.get("classification")(cfg), cfg)


@pytest.mark.realdata
def test_isbi_cross_validation_config_holds_out_a_quarter(real_data):
    """The committed CV config at fold 2: test = the 75 images of fold 2, from both challenge listings."""
    root = real_data("isbi2015_ceph").parent
    cfg = load_config(Config, REPO / "configs" / "isbi2015_landmarks_refine_cv.yaml", [
        f"data.root={root}", f"data.folds={COMMITTED}", "data.fold=2", "data.image_size=[40, 32]",
        "task.landmarks.refine=false", "tracking.progress=false"])
    splits = prepare_data(TASKS.get("landmarks")(cfg), cfg)
    assignment = read_folds(COMMITTED)
    assert sorted(splits.test.ids) == sorted(assignment[assignment == 2].index)
    assert splits.info["n_train"] + splits.info["n_val"] == 225 and splits.info["n_test"] == 75
    ids = np.array(splits.test.ids)
    assert (ids <= "150.jpg").any() and (ids > "150.jpg").any()  # the fold mixes both listings


def test_a_labelled_stage1_pool_under_folds_must_be_named(tiny_landmarks):
    """data.train lists the held-out fold too: stage 1 may not take its pool from there."""
    from transfer.runs.pool import load_pool

    folds_file = tiny_landmarks / "folds.csv"
    make_folds([f"{i:03d}.png" for i in range(12)], 3, seed=0).to_csv(folds_file, index=False)
    cfg = _fold_config(tiny_landmarks, folds_file, "data.fold=0", "pretrain.pool_format=labelled")
    with pytest.raises(ConfigError, match="pretrain.pool: a labelled pool taken from data.train would hold every fold"):
        load_pool(cfg)


def test_a_study_report_says_the_test_split_is_a_fold():
    from transfer.studies.report import _data_desc

    cfg = load_config(Config, None, ["data.train=[a.csv, b.csv]", "data.folds=f.csv", "data.fold=1"])
    desc = _data_desc(cfg.data, "20% of train")
    assert "`a.csv`, `b.csv` dealt into the folds of `f.csv`" in desc and "None" not in desc
    plain = _data_desc(load_config(Config, None, ["data.train=a.csv", "data.test=t.csv"]).data, "v")
    assert plain == "`a.csv` (train), v (validation), `t.csv`"


def test_split_seed_fixes_the_validation_part_and_the_fraction_across_training_seeds(tiny_landmarks):
    def splits(*more: str):
        cfg = load_config(Config, None, [
            "task.name=landmarks", "data.format=landmark_csv", f"data.root={tiny_landmarks}", "data.train=train.csv",
            "data.image_dir=images", "data.image_size=[32, 32]", "backbone.in_chans=1", "tracking.progress=false",
            "data.val_fraction=0.34", "data.label_fraction=0.5", *more])
        s = prepare_data(TASKS.get("landmarks")(cfg), cfg)
        return list(s.val.ids), list(s.train.ids), s.info["split_seed"]

    by_seed = {seed: splits(f"seed={seed}") for seed in range(4)}
    assert len({tuple(v) for v, _, _ in by_seed.values()}) > 1  # without it, each seed carves its own part
    assert [s for _, _, s in by_seed.values()] == [0, 1, 2, 3]
    fixed = [splits(f"seed={seed}", "data.split_seed=0") for seed in range(4)]
    assert all(f == (*by_seed[0][:2], 0) for f in fixed)  # seed 0's validation part and training subset, every seed
