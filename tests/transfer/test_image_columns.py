"""One naming of images in every predictions table: ``image`` the file name, ``path`` as given beside it."""
from __future__ import annotations

import pandas as pd

from transfer.runs.image_columns import with_image_columns


def test_paths_become_file_names_with_the_path_kept_second():
    df = pd.DataFrame({"image": ["data/a/001.png", "/abs/b/002.png"], "score": [0.1, 0.2]})
    out = with_image_columns(df)
    assert list(out.columns) == ["image", "path", "score"]
    assert list(out["image"]) == ["001.png", "002.png"] and list(out["path"]) == list(df["image"])
    assert list(df.columns) == ["image", "score"]  # the task's frame is not changed in place


def test_bare_names_and_npz_rows_stay_as_they_are():
    df = pd.DataFrame({"image": ["001.png", "tiny.npz#test:3"], "score": [0.1, 0.2]})
    out = with_image_columns(df)
    assert list(out.columns) == ["image", "score"] and list(out["image"]) == list(df["image"])
