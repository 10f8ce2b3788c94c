"""Detection: VOC / COCO parsing and bad input, the model's depth semantics, stage-1 checkpoints, CLI smoke runs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from tasks.detection.formats import check_boxes, read_coco, read_voc
from transfer.cli import main
from transfer.errors import DatasetError

CLASSES = ["cell", "blob"]


def _xml(name: str, w: int, h: int, objects: list[tuple[str, list[float]]]) -> str:
    objs = "".join(
        f"<object><name>{c}</name><difficult>0</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for c, b in objects)
    return (f"<annotation><folder>JPEGImages</folder><filename>{name}</filename><size><width>{w}</width>"
            f"<height>{h}</height><depth>3</depth></size>{objs}</annotation>")


def make_voc(root: Path, n: int = 12, h: int = 96, w: int = 128, seed: int = 0) -> Path:
    """A tiny VOC dataset: bright squares ('cell') and dimmer wide bars ('blob') on noise; lists train/val/test."""
    rng = np.random.default_rng(seed)
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    (root / "ImageSets" / "Main").mkdir(parents=True)
    ids = []
    for i in range(n):
        a = (rng.random((h, w, 3)) * 60).astype(np.uint8)
        objs = []
        for cls, (bw, bh), val in (("cell", (20, 20), 250), ("blob", (36, 14), 160)):
            x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            a[y:y + bh, x:x + bw] = val
            objs.append((cls, [x, y, x + bw, y + bh]))
        stem = f"img_{i:03d}"
        Image.fromarray(a).save(root / "JPEGImages" / f"{stem}.jpg", quality=95)
        (root / "Annotations" / f"{stem}.xml").write_text(_xml(f"{stem}.jpg", w, h, objs))
        ids.append(stem)
    for split, sel in (("train", ids[:8]), ("val", ids[8:10]), ("test", ids[10:])):
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(sel) + "\n")
    return root


# -- formats -------------------------------------------------------------------


def test_voc_split_list_reads_boxes_and_images(tmp_path):
    voc = make_voc(tmp_path / "voc")
    res = read_voc(voc / "ImageSets/Main/train.txt", CLASSES)
    assert len(res.items) == 8 and not res.skipped
    it = res.items[0]
    assert it.image == voc / "JPEGImages/img_000.jpg" and it.size == (96, 128)
    assert it.boxes.shape == (2, 4) and it.labels.tolist() == [0, 1]
    # the folder form finds the same images
    assert len(read_voc(voc, CLASSES).items) == 12


def test_voc_unknown_class_names_file_and_object(tmp_path):
    voc = make_voc(tmp_path / "voc")
    p = voc / "Annotations/img_001.xml"
    p.write_text(p.read_text().replace("<name>blob</name>", "<name>Platelet</name>"))
    with pytest.raises(DatasetError, match=r"img_001\.xml, object 2 \(Platelet\).*'Platelet'.*not declared"):
        read_voc(voc / "ImageSets/Main/train.txt", CLASSES)


def test_voc_file_that_does_not_parse(tmp_path):
    voc = make_voc(tmp_path / "voc")
    (voc / "Annotations/img_002.xml").write_text("<annotation><object>")
    with pytest.raises(DatasetError, match=r"img_002\.xml: not a valid VOC XML"):
        read_voc(voc / "ImageSets/Main/train.txt", CLASSES)
    res = read_voc(voc / "ImageSets/Main/train.txt", CLASSES, on_bad="skip")
    assert len(res.items) == 7 and "img_002.xml" in res.skipped[0].path


def test_voc_image_without_annotation_and_the_reverse(tmp_path):
    voc = make_voc(tmp_path / "voc")
    (voc / "Annotations/img_003.xml").unlink()  # listed image, no annotation
    with pytest.raises(DatasetError, match=r"train\.txt, line 4: image img_003 has no annotation"):
        read_voc(voc / "ImageSets/Main/train.txt", CLASSES)
    (voc / "JPEGImages/img_004.jpg").unlink()  # annotation, no image
    res = read_voc(voc / "ImageSets/Main/train.txt", CLASSES, on_bad="skip")
    reasons = {Path(s.path.split(",")[0]).name: s.reason for s in res.skipped}
    assert len(res.items) == 6 and "no annotation" in reasons["train.txt"]
    assert "annotation without image" in reasons["img_004.xml"]
    # folder form: an image no annotation names is reported too
    res = read_voc(voc, CLASSES, on_bad="skip")
    assert any(s.path.endswith("img_003.jpg") and "image without annotation" in s.reason for s in res.skipped)
    (voc / "Annotations/img_004.xml").unlink()
    with pytest.raises(DatasetError, match=r"img_003\.jpg: image without annotation"):
        read_voc(voc, CLASSES)


def test_zero_size_box_is_skipped_and_reported_or_an_error(tmp_path):
    voc = make_voc(tmp_path / "voc")
    p = voc / "Annotations/img_000.xml"
    p.write_text(_xml("img_000.jpg", 128, 96, [("cell", [10, 10, 30, 30]), ("cell", [181, 50, 181, 50])]))
    item = read_voc(voc / "ImageSets/Main/train.txt", CLASSES).items[0]
    skipped, counts = [], {}
    kept = check_boxes(item, 96, 128, "skip", skipped, counts)
    assert len(kept.labels) == 1 and counts["boxes_dropped"] == 1
    assert "img_000.xml, object 2 (cell)" in skipped[0].path and "zero" in skipped[0].reason
    with pytest.raises(DatasetError, match=r"img_000\.xml, object 2 \(cell\): box .* zero"):
        check_boxes(item, 96, 128, "error", [], {})


def test_box_outside_image_is_clipped_and_counted(tmp_path):
    voc = make_voc(tmp_path / "voc")
    p = voc / "Annotations/img_000.xml"
    p.write_text(_xml("img_000.jpg", 128, 96, [("cell", [-5, 10, 30, 100]), ("blob", [200, 10, 220, 20])]))
    item = read_voc(voc / "ImageSets/Main/train.txt", CLASSES).items[0]
    skipped, counts = [], {}
    kept = check_boxes(item, 96, 128, "skip", skipped, counts)
    assert kept.boxes.tolist() == [[0, 10, 30, 96]] and counts["boxes_clipped"] == 1
    assert counts["boxes_dropped"] == 1 and "outside" in skipped[0].reason  # entirely outside: nothing to clip to
    with pytest.raises(DatasetError, match="declares image size"):
        check_boxes(item, 90, 128, "skip", [], {})


def _coco(tmp_path: Path, voc: Path) -> Path:
    images, anns = [], []
    for i, stem in enumerate(["img_000", "img_001"]):
        images.append({"id": i + 1, "file_name": f"{stem}.jpg", "width": 128, "height": 96})
    anns.append({"id": 7, "image_id": 1, "category_id": 3, "bbox": [10, 20, 30, 40]})
    doc = {"images": images, "annotations": anns, "categories": [{"id": 3, "name": "cell"}, {"id": 4, "name": "blob"}]}
    p = voc / "JPEGImages" / "coco.json"
    p.write_text(json.dumps(doc))
    return p


def test_coco_reads_boxes_and_reports_bad_references(tmp_path):
    voc = make_voc(tmp_path / "voc")
    p = _coco(tmp_path, voc)
    res = read_coco(p, CLASSES, p.parent)
    assert len(res.items) == 2 and res.items[0].boxes.tolist() == [[10, 20, 40, 60]]
    assert res.items[0].labels.tolist() == [0] and res.counts["images_without_boxes"] == 1
    doc = json.loads(p.read_text())
    doc["annotations"].append({"id": 8, "image_id": 99, "category_id": 3, "bbox": [1, 1, 2, 2]})
    p.write_text(json.dumps(doc))
    with pytest.raises(DatasetError, match=r"coco\.json, annotation id 8: image_id 99"):
        read_coco(p, CLASSES, p.parent)
    doc["annotations"].pop()
    doc["categories"].append({"id": 5, "name": "Platelets"})
    p.write_text(json.dumps(doc))
    with pytest.raises(DatasetError, match=r"category id 5 names class 'Platelets'"):
        read_coco(p, CLASSES, p.parent)
    p.write_text("{")
    with pytest.raises(DatasetError, match="not valid JSON"):
        read_coco(p, CLASSES, p.parent)


# -- model: depth semantics and checkpoints -------------------------------------------


def _cfg(tmp_path, backbone="tiny_resnet", depth="head", **extra):
    from transfer.config import Config, load_config

    sets = [f"backbone.name={backbone}", "init=scratch", "backbone.in_chans=3", "data.format=voc",
            f"data.root={tmp_path}", "data.image_size=[64, 96]", "task.name=detection",
            "task.detection.classes=[cell, blob]", f"train.depth={depth}", "train.lr=0.01",
            *[f"{k}={v}" for k, v in extra.items()]]
    return load_config(Config, None, sets)


def _batch(n=2, h=64, w=96):
    boxes = torch.tensor([[[0.1, 0.1, 0.3, 0.4], [0.5, 0.5, 0.9, 0.7]]] * n)
    labels = torch.tensor([[0, 1]] * n)
    labels[0, 1] = -1  # padding
    return {"image": torch.rand(n, 3, h, w), "boxes": boxes, "labels": labels}


@pytest.mark.parametrize("backbone,detector", [("tiny_resnet", "faster_rcnn"), ("tiny_efficientnet", "fcos"),
                                               ("tiny_resnet", "retinanet")])
def test_frozen_stages_get_no_gradient_at_depth_head(tmp_path, backbone, detector):
    from transfer.api import TASKS
    from transfer.runs.depth import setup_depth
    from transfer.weights import build_backbone

    cfg = _cfg(tmp_path, backbone, **{"task.detection.detector": detector})
    task = TASKS.get("detection")(cfg)
    bb, _ = build_backbone(backbone, "scratch", in_chans=3)
    model = task.build_model(bb)
    # the head owns the pyramid and detector, never a backbone parameter
    bb_ids = {id(p) for p in model.backbone.parameters()}
    assert not bb_ids & {id(p) for p in model.head.parameters()}
    assert len(list(model.parameters())) == len(bb_ids) + len(list(model.head.parameters()))
    if backbone == "tiny_efficientnet":
        assert model.fpn_stages == ["blocks2", "blocks4", "blocks6"] and model.unused_stages == ["conv_head"]
    stages, opt, train_mode = setup_depth(model, cfg, "head")
    assert stages == []
    bn_before = {k: v.clone() for k, v in model.backbone.state_dict().items() if "running" in k}
    w_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    train_mode()
    out = model.training_step(_batch())
    assert torch.isfinite(out["loss"])
    opt.zero_grad()
    out["loss"].backward()
    opt.step()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.head.parameters())
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, w_before[k]), k  # weights and BatchNorm statistics unchanged
    assert bn_before


def test_depth_trains_named_stages_only(tmp_path):
    from transfer.api import TASKS
    from transfer.runs.depth import setup_depth
    from transfer.weights import build_backbone

    cfg = _cfg(tmp_path, "tiny_efficientnet", depth="blocks5-head")
    task = TASKS.get("detection")(cfg)
    bb, _ = build_backbone("tiny_efficientnet", "scratch", in_chans=3)
    model = task.build_model(bb)
    stages, opt, train_mode = setup_depth(model, cfg, "blocks5-head")
    assert stages == ["blocks5", "blocks6"]  # conv_head is above the deepest pyramid map: unused, frozen
    train_mode()
    model.training_step(_batch())["loss"].backward()
    by_stage = model.backbone.stage_parameters()
    for s, params in by_stage.items():
        got = any(p.grad is not None for _, p in params)
        assert got == (s in stages), s


def test_stage1_checkpoint_loads_into_detection_model(tmp_path):
    from transfer.api import TASKS
    from transfer.weights import build_backbone

    pool = tmp_path / "pool"
    pool.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray((rng.random((40, 40, 3)) * 255).astype(np.uint8)).save(pool / f"{i}.png")
    assert main(["pretrain", "--name", "simclr", "--set", "backbone.name=tiny_resnet", "--set", "init=scratch",
                 "--set", "backbone.in_chans=3", "--set", "pretrain.method=simclr", "--set", "pretrain.epochs=1",
                 "--set", "pretrain.warmup_epochs=0", "--set", "pretrain.batch_size=4", "--set", "train.max_steps=1",
                 "--set", f"data.root={tmp_path}", "--set", "pretrain.pool=pool", "--set", "data.image_size=[32, 32]",
                 "--set", f"tracking.out_dir={tmp_path / 'runs'}", "--set", "tracking.wandb_mode=disabled",
                 "--set", "tracking.progress=false"]) == 0
    ckpt = tmp_path / "runs" / "simclr" / "backbone.pt"
    bb, rep = build_backbone("tiny_resnet", str(ckpt), in_chans=3)
    assert not rep.missing and not rep.unexpected
    model = TASKS.get("detection")(_cfg(tmp_path)).build_model(bb)
    stages = torch.load(ckpt, weights_only=True)["stages"]
    sd = model.state_dict()
    for stage, params in stages.items():
        for k, v in params.items():
            assert torch.equal(sd[f"backbone.{k}"], v), (stage, k)


# -- CLI -----------------------------------------------------------------------------


def _common(tmp_path, data_root):
    return ["--set", "backbone.name=tiny_resnet", "--set", "init=scratch", "--set", "backbone.in_chans=3",
            "--set", "train.epochs=2", "--set", "train.max_steps=2", "--set", "train.batch_size=4",
            "--set", f"tracking.out_dir={tmp_path / 'runs'}", "--set", "tracking.wandb_mode=disabled",
            "--set", "tracking.progress=false", "--set", "data.format=voc", "--set", f"data.root={data_root}",
            "--set", "data.image_size=[64, 96]", "--set", "task.name=detection",
            "--set", "task.detection.classes=[cell, blob]", "--set", "task.detection.min_score=0",
            "--set", "task.detection.score_threshold=0", "--set", "task.detection.max_detections=5"]


def test_detection_finetune_evaluate_predict(tmp_path, capsys):
    voc = make_voc(tmp_path / "voc")
    p = voc / "Annotations/img_001.xml"
    p.write_text(p.read_text().replace("<xmax>", "<xmax>1", 1))  # a box past the right border: clipped, counted
    args = ["finetune", "--name", "det", *_common(tmp_path, voc), "--set", "data.train=ImageSets/Main/train.txt",
            "--set", "data.val=ImageSets/Main/val.txt", "--set", "data.test=ImageSets/Main/test.txt",
            "--set", "train.depth=layer3-head", "--set", "data.augment.hflip=true", "--set", "task.detection.vflip=true"]
    assert main(args) == 0
    run = tmp_path / "runs" / "det"
    for f in ("summary.json", "model.pt", "predictions_test.csv", "test_froc.png", "test_boxes_worst.png"):
        assert (run / f).exists(), f
    s = json.loads((run / "summary.json").read_text())
    assert s["trainable_stages"] == ["layer3", "layer4"] and s["n_test"] == 2
    t = s["test"]
    assert 0 <= t["map_50"] <= 1 and set(t["froc"]) == {"0.125", "0.25", "0.5", "1", "2", "4", "8"}
    assert set(t["per_class"]) == {"cell", "blob"} and t["n_boxes"] == 4
    assert s["val"]["data"]["boxes"] == 4
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1] and "val_map_50" in rows[0] and "train_loss_classifier" in rows[0]
    pred_test = pd.read_csv(run / "predictions_test.csv")
    assert list(pred_test.columns) == ["image", "kind", "class", "score", "x1", "y1", "x2", "y2", "hit"]
    assert (pred_test["kind"] == "image").sum() == 2 and (pred_test["kind"] == "true").sum() == 4
    # predictions are in original pixels (128 x 96)
    boxes = pred_test[pred_test["kind"] == "pred"][["x1", "y1", "x2", "y2"]].to_numpy()
    assert len(boxes) and boxes.min() >= 0 and boxes[:, [0, 2]].max() <= 128 + 1e-3 and boxes[:, [1, 3]].max() <= 96 + 1e-3
    truth = pred_test[pred_test["kind"] == "true"][["x1", "y1", "x2", "y2"]].to_numpy()
    ann = read_voc(voc / "ImageSets/Main/test.txt", CLASSES).items
    assert np.allclose(truth, np.concatenate([a.boxes for a in ann]), atol=1e-3)

    out = tmp_path / "pred.csv"
    assert main(["predict", str(run), str(voc / "JPEGImages/img_010.jpg"), str(voc / "JPEGImages/img_011.jpg"),
                 "--out", str(out)]) == 0
    pred = pd.read_csv(out)
    # image: the file name, as in predictions_test.csv (the tables join on it); path: as given on the command line
    assert list(pred.columns) == ["image", "path", "class", "score", "x1", "y1", "x2", "y2"]
    mine = pred_test[pred_test["kind"] == "pred"]
    assert len(pred) == len(mine) and list(pred["image"]) == list(mine["image"])
    assert np.allclose(pred[["x1", "y1", "x2", "y2"]].to_numpy(), mine[["x1", "y1", "x2", "y2"]].to_numpy(), atol=1e-3)

    capsys.readouterr()
    assert main(["evaluate", str(run), "--data", "ImageSets/Main/test.txt"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["map_50"] == pytest.approx(t["map_50"], abs=1e-6)

    from transfer.api import TASKS
    from transfer.config import Config, load_config

    task = TASKS.get("detection")(load_config(Config, run / "config.yaml"))
    res = task.paired_comparison(pred_test, pred_test)
    assert res["difference"] == 0 and res["metric"] == "f1_per_image"


def test_detection_bad_annotation_stops_the_run_with_file_and_object(tmp_path, capsys):
    voc = make_voc(tmp_path / "voc")
    p = voc / "Annotations/img_002.xml"
    p.write_text(p.read_text().replace("<name>cell</name>", "<name>RBC</name>"))
    args = ["finetune", *_common(tmp_path, voc), "--set", "data.train=ImageSets/Main/train.txt"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "img_002.xml, object 1 (RBC)" in err and "Traceback" not in err


def test_detection_bench_finetune(tmp_path, capsys):
    voc = make_voc(tmp_path / "voc")
    assert main(["bench", "finetune", *_common(tmp_path, voc)[:-6], "--set", "data.train=ImageSets/Main/train.txt",
                 "--set", "data.val=ImageSets/Main/val.txt", "--steps", "1", "--warmup", "1", "--rounds", "1"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["task"] == "detection" and res["engine_images_per_s"] > 0 and res["bare_images_per_s"] > 0


@pytest.mark.realdata
def test_bccd_lists_load_and_report_the_two_zero_size_boxes(real_data, tmp_path):
    from transfer.api import TASKS
    from transfer.config import Config, load_config

    root = real_data("bccd")
    cfg = load_config(Config, Path(__file__).resolve().parents[2] / "configs" / "bccd_detection.yaml",
                      [f"data.root={root.parent}", "tracking.progress=false"])
    task = TASKS.get("detection")(cfg)
    sizes = {w: len(task.load_split(getattr(cfg.data, w), w)) for w in ("train", "val", "test")}
    assert sizes == {"train": 205, "val": 87, "test": 72}
    assert sorted(Path(s.path.split(",")[0]).name for s in task.skipped) == ["BloodImage_00338.xml",
                                                                            "BloodImage_00343.xml"]
    assert sum(d["boxes"] for d in task.info["data"].values()) == 4888 - 2
