"""Box annotations: Pascal VOC XML and COCO JSON, read into one list of :class:`Annotated` images.

Coordinates: boxes are (x1, y1, x2, y2) in original image pixels, read as
written (VOC's xmin..xmax, COCO's x..x+w), and written back out in the same
convention, so a round trip changes nothing.

Problems are never dropped silently. Fatal ones (a file that does not parse,
a class not declared in ``task.detection.classes``, a box with missing or
non-numeric coordinates) raise :class:`~transfer.errors.DatasetError` naming
the file and the object; with ``data.on_bad: skip`` an unreadable annotation
file, an annotation without its image and an image without its annotation are
skipped instead and reported. Box-level fixes (:func:`check_boxes`) are counted.
"""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from transfer.data.datasets import Skipped
from transfer.data.readers import list_images
from transfer.errors import DatasetError

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")


@dataclass
class Annotated:
    """One image and its boxes (original pixels)."""

    image: Path
    source: str  #: the annotation file (and entry) the boxes came from, for messages
    boxes: np.ndarray  #: (M, 4) float64 x1, y1, x2, y2
    labels: np.ndarray  #: (M,) int64 class index into the declared classes
    objects: list[str] = field(default_factory=list)  #: per box, how to name it in a message
    size: tuple[int, int] | None = None  #: (H, W) declared by the annotation, if any


@dataclass
class ParseResult:
    items: list[Annotated]
    skipped: list[Skipped]
    counts: dict[str, int]


def _skip_or_raise(on_bad: str, skipped: list[Skipped], path: str, reason: str) -> None:
    if on_bad != "skip":
        raise DatasetError(f"{path}: {reason}")
    skipped.append(Skipped(path, reason))


def _class_index(name: str, classes: list[str], where: str) -> int:
    if name not in classes:
        raise DatasetError(f"{where} names class {name!r}, which is not declared in task.detection.classes "
                           f"{classes}")
    return classes.index(name)


# -- Pascal VOC --------------------------------------------------------------------


def _voc_layout(spec: Path, image_dir: Path | None) -> tuple[list[tuple[str, str]], Path, Path, bool]:
    """(id, where it was listed) pairs, the annotation folder, the image folder, and whether ids came from a list.

    ``spec``: a split list (``ImageSets/Main/train.txt``: one id per line), a VOC
    root (holding ``Annotations/``) or an annotation folder.
    """
    if spec.is_file():
        root = spec.parent
        while root != root.parent and not (root / "Annotations").is_dir():
            root = root.parent
        if not (root / "Annotations").is_dir():
            raise DatasetError(f"{spec}: no Annotations folder above this split list")
        ids = []
        first_line: dict[str, int] = {}
        for n, line in enumerate(spec.read_text().splitlines(), 1):
            tok = line.split()
            if not tok:
                continue
            if tok[0] in first_line:  # it would train (or be scored) twice
                raise DatasetError(f"'{spec}', lines {first_line[tok[0]]} and {n}: image id {tok[0]!r} is listed "
                                   "twice; list each image once")
            first_line[tok[0]] = n
            ids.append((tok[0], f"{spec}, line {n}"))
        if not ids:
            raise DatasetError(f"{spec}: the split list names no image")
        return ids, root / "Annotations", image_dir or root / "JPEGImages", True
    if spec.is_dir():
        ann = spec / "Annotations" if (spec / "Annotations").is_dir() else spec
        xmls = sorted(ann.glob("*.xml"))
        if not xmls:
            raise DatasetError(f"{spec}: no VOC annotation (*.xml) here or in {spec / 'Annotations'}")
        root = ann.parent
        return [(p.stem, str(p)) for p in xmls], ann, image_dir or root / "JPEGImages", False
    raise DatasetError(f"{spec}: VOC split list or folder not found")


def _num(obj: ET.Element, key: str, where: str) -> float:
    el = obj.find(f"bndbox/{key}")
    if el is None or el.text is None:
        raise DatasetError(f"{where}: bndbox has no {key}")
    try:
        return float(el.text)
    except ValueError:
        raise DatasetError(f"{where}: bndbox {key} is not a number: {el.text!r}") from None


def read_voc(spec: Path, classes: list[str], image_dir: Path | None = None, on_bad: str = "error") -> ParseResult:
    """Images and boxes of a VOC split list or folder (see :func:`_voc_layout`)."""
    ids, ann_dir, img_dir, listed = _voc_layout(spec, image_dir)
    items: list[Annotated] = []
    skipped: list[Skipped] = []
    counts = {"images_without_boxes": 0}
    for stem, listed_at in ids:
        xml = ann_dir / f"{stem}.xml"
        if not xml.is_file():
            _skip_or_raise(on_bad, skipped, listed_at, f"image {stem} has no annotation ({xml} not found)")
            continue
        try:
            root = ET.parse(xml).getroot()
        except ET.ParseError as e:
            _skip_or_raise(on_bad, skipped, str(xml), f"not a valid VOC XML file ({e})")
            continue
        if root.tag != "annotation":
            _skip_or_raise(on_bad, skipped, str(xml), f"not a VOC annotation (root element <{root.tag}>)")
            continue
        fname = (root.findtext("filename") or "").strip()
        cands = [img_dir / fname] if fname else []
        cands += [img_dir / f"{stem}{s}" for s in _IMAGE_SUFFIXES]
        image = next((c for c in cands if c.is_file()), None)
        if image is None:
            _skip_or_raise(on_bad, skipped, str(xml), f"annotation without image: {cands[0]} not found")
            continue
        size = None
        w, h = root.findtext("size/width"), root.findtext("size/height")
        try:
            if w and h and int(float(w)) > 0 and int(float(h)) > 0:
                size = (int(float(h)), int(float(w)))
        except ValueError:
            raise DatasetError(f"{xml}: <size> is not numeric: width {w!r}, height {h!r}") from None
        boxes, labels, names = [], [], []
        for k, obj in enumerate(root.findall("object"), 1):
            name = (obj.findtext("name") or "").strip()
            where = f"{xml}, object {k} ({name or 'no name'})"
            labels.append(_class_index(name, classes, where))
            boxes.append([_num(obj, key, where) for key in ("xmin", "ymin", "xmax", "ymax")])
            names.append(where)
        if not boxes:
            counts["images_without_boxes"] += 1
        items.append(Annotated(image, str(xml), np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
                               np.asarray(labels, dtype=np.int64), names, size))
    if not listed:
        # the reverse direction: images in the image folder that no annotation file names
        named = {it.image.resolve() for it in items}
        stems = {stem for stem, _ in ids}  # an annotation that failed is already reported
        if img_dir.is_dir():
            for p in list_images(img_dir):
                if p.resolve() not in named and p.stem not in stems:
                    _skip_or_raise(on_bad, skipped, str(p), f"image without annotation (no {ann_dir / (p.stem + '.xml')})")
    return ParseResult(items, skipped, counts)


# -- COCO ----------------------------------------------------------------------------


def read_coco(path: Path, classes: list[str], image_dir: Path, on_bad: str = "error") -> ParseResult:
    """Images and boxes of a COCO instances JSON; image files relative to ``image_dir``.

    An image entry with no annotation is a negative image (kept, counted); an
    annotation naming an image id or category id that the file does not
    define is an error.
    """
    if not path.is_file():
        raise DatasetError(f"{path}: COCO JSON not found")
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(doc, dict):
        raise DatasetError(f"'{path}': the top level is a JSON {type(doc).__name__}, not the object of a COCO "
                           "instances file ({\"images\": [...], \"annotations\": [...], \"categories\": [...]})")
    for key in ("images", "annotations", "categories"):
        if not isinstance(doc.get(key), list):
            raise DatasetError(f"'{path}': no {key!r} list (not a COCO instances file)")
        bad = next((n for n, e in enumerate(doc[key]) if not isinstance(e, dict)), None)
        if bad is not None:
            raise DatasetError(f"'{path}': {key}[{bad}] is {doc[key][bad]!r}, not an object")
    # an id used twice would make the second entry replace the first: its boxes would land on another file
    _unique_ids(doc["images"], "images", path, lambda e: f"file_name {e.get('file_name')!r}")
    _unique_ids(doc["categories"], "categories", path, lambda e: f"name {e.get('name')!r}")
    _unique_ids(doc["annotations"], "annotations", path,
                lambda e: f"image_id {e.get('image_id')!r}, bbox {e.get('bbox')!r}")
    cats: dict[int, int] = {}
    for c in doc["categories"]:
        cats[c["id"]] = _class_index(str(c.get("name", "")).strip(), classes, f"{path}, category id {c.get('id')}")
    images: dict[int, dict] = {}
    for im in doc["images"]:
        if "id" not in im or "file_name" not in im:
            raise DatasetError(f"'{path}': image entry {im} lacks id or file_name")
        images[im["id"]] = im
    per: dict[int, list[tuple[list[float], int, str]]] = {i: [] for i in images}
    for n, a in enumerate(doc["annotations"]):
        where = f"{path}, annotation id {a.get('id', f'#{n}')}"
        if a.get("image_id") not in images:
            raise DatasetError(f"{where}: image_id {a.get('image_id')!r} is not among the file's images")
        if a.get("category_id") not in cats:
            raise DatasetError(f"{where}: category_id {a.get('category_id')!r} is not among the file's categories")
        bb = a.get("bbox")
        if not (isinstance(bb, list) and len(bb) == 4 and all(isinstance(v, (int, float)) for v in bb)):
            raise DatasetError(f"{where}: bbox must be [x, y, width, height] numbers, got {bb!r}")
        x, y, w, h = (float(v) for v in bb)
        per[a["image_id"]].append(([x, y, x + w, y + h], cats[a["category_id"]], where))
    items: list[Annotated] = []
    skipped: list[Skipped] = []
    counts = {"images_without_boxes": 0}
    for i, im in images.items():
        image = Path(im["file_name"])
        image = image if image.is_absolute() else image_dir / image
        if not image.is_file():
            _skip_or_raise(on_bad, skipped, f"{path}, image id {i}", f"annotation without image: {image} not found")
            continue
        rows = per[i]
        if not rows:
            counts["images_without_boxes"] += 1
        size = (int(im["height"]), int(im["width"])) if im.get("height") and im.get("width") else None
        items.append(Annotated(image, f"{path}, image id {i}",
                               np.asarray([r[0] for r in rows], dtype=np.float64).reshape(-1, 4),
                               np.asarray([r[1] for r in rows], dtype=np.int64), [r[2] for r in rows], size))
    return ParseResult(items, skipped, counts)


def _unique_ids(entries: list[dict], key: str, path: Path, describe) -> None:  # noqa: ANN001 (entry -> str)
    """Refuse two entries of ``key`` (``images``, ``categories``, ``annotations``) with one id, naming both."""
    first: dict[object, int] = {}
    for n, e in enumerate(entries):
        if "id" not in e:
            continue  # reported where the id is needed
        i = e["id"]
        if i in first:
            m = first[i]
            raise DatasetError(f"'{path}': {key} id {i!r} is used twice, by {key}[{m}] ({describe(entries[m])}) "
                               f"and {key}[{n}] ({describe(e)}); give each entry its own id")
        first[i] = n


# -- box checks ---------------------------------------------------------------------


def check_boxes(item: Annotated, height: int, width: int, degenerate: str, skipped: list[Skipped],
                counts: dict[str, int]) -> Annotated:
    """Clip boxes to the image (counted) and drop boxes of zero width or height (reported, or an error).

    ``counts`` gains ``boxes_clipped`` and ``boxes_dropped``; each dropped box
    is a :class:`Skipped` entry naming the file and object.
    """
    if item.size is not None and item.size != (height, width):
        raise DatasetError(f"{item.source}: declares image size {item.size[1]}x{item.size[0]} but "
                           f"{item.image.name} is {width}x{height}")
    b = item.boxes
    keep = np.ones(len(b), dtype=bool)
    for k in range(len(b)):
        x1, y1, x2, y2 = b[k]
        if not np.all(np.isfinite(b[k])):
            raise DatasetError(f"{item.objects[k]}: box coordinates are not finite: {b[k].tolist()}")
        if x2 <= x1 or y2 <= y1:
            reason = f"box {b[k].tolist()} has zero or negative width or height"
            if degenerate == "error":
                raise DatasetError(f"{item.objects[k]}: {reason}")
            skipped.append(Skipped(item.objects[k], f"{reason}; box skipped"))
            keep[k] = False
            continue
        c = np.array([min(max(x1, 0), width), min(max(y1, 0), height), min(max(x2, 0), width),
                      min(max(y2, 0), height)])
        if np.any(c != b[k]):
            if c[2] <= c[0] or c[3] <= c[1]:
                skipped.append(Skipped(item.objects[k], f"box {b[k].tolist()} lies outside the {width}x{height} "
                                                        "image; box skipped"))
                keep[k] = False
                continue
            counts["boxes_clipped"] = counts.get("boxes_clipped", 0) + 1
            b[k] = c
    counts["boxes_dropped"] = counts.get("boxes_dropped", 0) + int((~keep).sum())
    return Annotated(item.image, item.source, b[keep], item.labels[keep],
                     [o for o, k in zip(item.objects, keep) if k], item.size)
