"""Medical image readers: one call, any supported format, float32 in [0, 1].

``read_image(path)`` picks a decoder by file suffix from :data:`IMAGE_DECODERS`
and returns an :class:`ImageData`. Every failure (missing, empty, truncated,
corrupt, unsupported file; DICOM without pixel data) is an
:class:`~transfer.errors.ImageReadError` whose message names the path and the
reason; no PIL / pydicom / tifffile exception escapes.

Intensity conventions (the array is always float32 in [0, 1]):

- 8-bit files are divided by 255, 16-bit PNG by 65535 (never by the image
  maximum, so intensities stay comparable between images). TIFF integers are
  divided by ``2**BitsPerSample - 1``; signed TIFF integers are min-max scaled;
  float TIFFs already in [0, 1] are kept, other floats are min-max scaled.
- DICOM: modality LUT / rescale slope and intercept, then a window (the
  ``window=(center, width)`` argument, else the file's VOI LUT or window) mapped
  to [0, 1] by the window's *fixed* output range (so the same window gives the
  same mapping on every image), else min-max; MONOCHROME1 is inverted so that
  high = bright (TIFF MinIsWhite likewise).
- Colour to gray uses ITU-R BT.601 luma (0.299 R + 0.587 G + 0.114 B), the same
  weights as PIL's ``convert("L")`` and JPEG's own luma.
"""
from __future__ import annotations

import io
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np

from transfer.errors import ImageReadError
from transfer.registry import Registry

__all__ = [
    "ImageData",
    "IMAGE_DECODERS",
    "LUMA_601",
    "decode_image_bytes",
    "read_image",
    "read_npz_split",
    "supported_suffixes",
]

class ImageSizeWarning(UserWarning):
    """An image beyond PIL's decompression-bomb warning limit (read, but worth a look)."""


#: ITU-R BT.601 luma weights (R, G, B).
LUMA_601 = (0.299, 0.587, 0.114)

Spacing = tuple[float, float] | None


@dataclass
class ImageData:
    """A decoded image.

    ``array``: float32 in [0, 1], (H, W) grayscale or (H, W, 3) RGB.
    ``original_size``: (H, W) of the file. ``spacing``: mm per pixel (row, col)
    when the file records it, else None.
    """

    array: np.ndarray
    original_size: tuple[int, int]
    spacing: Spacing
    path: str


class ImageDecoder(Protocol):
    """Decodes a file's bytes into (float32 array (H, W) or (H, W, 3) in [0, 1], spacing).

    Identical RGB channels may already be collapsed to (H, W).
    """

    def __call__(
        self, data: bytes, path: str, window: tuple[float, float] | None, gray: bool | None
    ) -> tuple[np.ndarray, Spacing]:
        """``gray`` is a hint (a decoder may produce gray directly); the caller applies the policy."""
        ...


#: file suffix (lower case, with dot) -> decoder
IMAGE_DECODERS: Registry[ImageDecoder] = Registry("image suffix")


def supported_suffixes() -> list[str]:
    return IMAGE_DECODERS.names()


def is_image_file(path: Path) -> bool:
    """A file whose suffix a registered decoder reads (the one list of image suffixes)."""
    return path.is_file() and path.suffix.lower() in IMAGE_DECODERS


def list_images(folder: Path) -> list[Path]:
    """Every readable image under ``folder`` (recursive), sorted; :func:`transfer.data.inventory.scan_folder`
    also reports the files it leaves out."""
    return sorted(p for p in folder.rglob("*") if is_image_file(p))


def is_dicom(path: str | Path) -> bool:
    """A file the DICOM decoder reads (the only one a window applies to)."""
    return Path(path).suffix.lower() in (".dcm", ".dicom")


# ----------------------------------------------------------------------------- helpers


def _fail(path: str, reason: str) -> ImageReadError:
    return ImageReadError(f"{path}: {reason}")


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def _minmax(a: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1] (NaN/inf -> 0 first; a constant image -> zeros)."""
    a = np.nan_to_num(a.astype(np.float64, copy=False), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros(a.shape, np.float32)
    return ((a - lo) / (hi - lo)).astype(np.float32)


def _scale_unsigned(a: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned integers with ``bits`` significant bits -> float32 [0, 1] (value / (2**bits - 1))."""
    out = a.astype(np.float32)
    out /= np.float32(2**bits - 1)
    if bits < 8 * a.dtype.itemsize:  # e.g. 12-bit data in uint16 may hold stray higher values
        np.clip(out, 0.0, 1.0, out=out)
    return out


def _no_window(path: str, window: tuple[float, float] | None, fmt: str) -> None:
    if window is not None:
        raise ValueError(f"{path}: window=(center, width) applies to DICOM only, not {fmt}")


def _collapse_identical(a: np.ndarray) -> np.ndarray:
    """(H, W, 3) with R == G == B -> (H, W), checked on the integers before any float copy."""
    if a.ndim == 3 and a.shape[-1] == 3 and np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2]):
        return a[..., 0]
    return a


def _drop_alpha(a: np.ndarray) -> np.ndarray:
    """(H, W, 2|4) gray/RGB + alpha -> (H, W) / (H, W, 3)."""
    if a.ndim == 3 and a.shape[-1] == 2:
        return a[..., 0]
    if a.ndim == 3 and a.shape[-1] == 4:
        return a[..., :3]
    return a


# ----------------------------------------------------------------------------- PIL formats

# WebP: PIL reads it natively, so a .webp in a class or predict folder is read rather than left out
_PIL_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".gif": "GIF", ".webp": "WEBP"}
_FORMAT_NAMES = {**_PIL_FORMATS, ".tif": "TIFF", ".tiff": "TIFF"}
_truncation_lock = threading.Lock()
_truncation_depth = 0
_truncation_saved = False


@contextmanager
def _strict_truncation() -> Iterator[None]:
    """Make PIL raise on truncated files even if someone set LOAD_TRUNCATED_IMAGES.

    The flag is a PIL module global; it is only touched when it is True (not the
    default), and restored when the last concurrent reader leaves.
    """
    from PIL import ImageFile

    global _truncation_depth, _truncation_saved
    if not ImageFile.LOAD_TRUNCATED_IMAGES and _truncation_depth == 0:
        yield
        return
    with _truncation_lock:
        if _truncation_depth == 0:
            _truncation_saved = ImageFile.LOAD_TRUNCATED_IMAGES
            ImageFile.LOAD_TRUNCATED_IMAGES = False
        _truncation_depth += 1
    try:
        yield
    finally:
        with _truncation_lock:
            _truncation_depth -= 1
            if _truncation_depth == 0:
                ImageFile.LOAD_TRUNCATED_IMAGES = _truncation_saved


def _pil_to_array(im, path: str) -> np.ndarray:  # noqa: ANN001 (PIL.Image.Image)
    """A loaded PIL image -> float32 (H, W) or (H, W, 3) in [0, 1]."""
    mode = im.mode
    if mode.startswith("I;16") or (mode == "I" and im.format == "PNG"):
        # 16-bit gray: scale by the format's full range, not the image maximum. (Pillow reads
        # 48-bit RGB PNGs as 8-bit RGB, keeping the high bytes: no 16-bit colour PNG here.)
        return _scale_unsigned(np.asarray(im), 16)
    if mode == "1":
        return np.asarray(im, dtype=np.float32)
    if mode == "L":
        return _scale_unsigned(np.asarray(im), 8)
    if mode in ("RGB", "LA", "RGBA"):
        return _scale_unsigned(_collapse_identical(_drop_alpha(np.asarray(im))), 8)
    if mode in ("P", "PA"):
        # palette (GIF masks): look the colours up; a gray palette collapses to (H, W)
        rgba = np.asarray(im.convert("RGBA"))
        return _scale_unsigned(_collapse_identical(rgba[..., :3]), 8)
    if mode == "F":
        a = np.asarray(im, dtype=np.float32)
        return a if np.isfinite(a).all() and a.min() >= 0 and a.max() <= 1 else _minmax(a)
    if mode == "I":
        return _minmax(np.asarray(im))
    # CMYK, YCbCr, LAB, HSV, ...
    return _scale_unsigned(np.asarray(im.convert("RGB")), 8)


def _one_frame(path: str, fmt: str, frames: int) -> None:
    """Refuse a file of several frames: reading its first one in silence would train on a part of the file (a GIF
    animation, a TIFF stack, a cine DICOM), and which frame is meant cannot be guessed."""
    if frames > 1:
        raise _fail(path, f"{fmt} file has {frames} frames; medtransfer reads single-frame images only "
                          "(save the frame you mean as its own file)")


def _read_pil(
    data: bytes, path: str, window: tuple[float, float] | None, gray: bool | None
) -> tuple[np.ndarray, Spacing]:
    return _decode_pil(data, path, window, gray, single_frame=True)


def _decode_pil(
    data: bytes, path: str, window: tuple[float, float] | None, gray: bool | None, *, single_frame: bool
) -> tuple[np.ndarray, Spacing]:
    from PIL import Image, UnidentifiedImageError

    fmt = _FORMAT_NAMES.get(Path(path).suffix.lower(), "image")
    _no_window(path, window, fmt)
    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as e:
        raise _fail(path, f"not a valid {fmt} file (cannot identify image data)") from e
    except Image.DecompressionBombError as e:
        raise _fail(path, f"image larger than PIL's decompression-bomb limit ({e})") from e
    except Exception as e:  # noqa: BLE001 - a library boundary: wrap everything
        raise _fail(path, f"corrupt {fmt} header ({_describe(e)})") from e
    actual = im.format or fmt
    w, h = im.size
    if Image.MAX_IMAGE_PIXELS and w * h > Image.MAX_IMAGE_PIXELS:
        # PIL's own DecompressionBombWarning names no file (the command line silences it for this one)
        warnings.warn(f"{path}: {w}x{h} px is beyond PIL's decompression-bomb warning limit of "
                      f"{Image.MAX_IMAGE_PIXELS} px; read anyway (a very large image, or a damaged header)",
                      ImageSizeWarning, stacklevel=2)
    try:
        if single_frame:
            _one_frame(path, actual, getattr(im, "n_frames", 1))
        if gray is True and im.format == "JPEG" and im.mode in ("RGB", "YCbCr"):
            # decode only the luma plane: JPEG's Y is BT.601 luma, and 5x faster than RGB
            # (a 1935x2400 cephalogram: 6 ms instead of 34 ms)
            im.draft("L", im.size)
        with _strict_truncation():
            im.load()  # force the full decode (first frame for GIF), so truncation shows here
        return _pil_to_array(im, path), None
    except (MemoryError, ImageReadError):
        raise
    except Exception as e:  # noqa: BLE001
        raise _fail(path, f"truncated or corrupt {actual} ({_describe(e)})") from e
    finally:
        im.close()


for _s in _PIL_FORMATS:
    IMAGE_DECODERS.register(_s)(_read_pil)


# ----------------------------------------------------------------------------- TIFF

_MM_PER_RESUNIT = {2: 25.4, 3: 10.0, 4: 1.0, 5: 1e-3}  # inch, cm, (tifffile's) mm, um


def _tiff_spacing(page) -> Spacing:  # noqa: ANN001 (tifffile.TiffPage)
    """mm per pixel (row, col) from X/YResolution + ResolutionUnit; None when absent or unitless."""
    tags = page.tags
    if "XResolution" not in tags or "YResolution" not in tags:
        return None
    unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2  # TIFF default: inch
    mm = _MM_PER_RESUNIT.get(unit)
    if mm is None:
        return None

    def per_unit(tag: str) -> float:
        v = tags[tag].value
        num, den = (v if isinstance(v, tuple) else (v, 1))
        return float(num) / float(den) if den else 0.0

    xres, yres = per_unit("XResolution"), per_unit("YResolution")
    if not (xres > 0 and yres > 0):
        return None
    return (mm / yres, mm / xres)


def _tiff_to_array(page, path: str) -> np.ndarray:  # noqa: ANN001
    a = page.asarray()
    axes = page.axes
    # keep Y, X and samples (S); take index 0 of anything else (e.g. planes)
    for i in reversed(range(a.ndim)):
        if axes[i] not in "YXS":
            a = np.take(a, 0, axis=i)
    axes = "".join(c for c in axes if c in "YXS")
    if "S" not in axes:
        a, axes = a[..., None], axes + "S"
    a = np.moveaxis(a, [axes.index("Y"), axes.index("X"), axes.index("S")], [0, 1, 2])

    photometric = int(page.photometric)
    if photometric == 3 and page.colormap is not None:  # PALETTE: indices -> 16-bit RGB
        cmap = np.asarray(page.colormap)  # (3, 2**bits)
        return _scale_unsigned(_collapse_identical(cmap[:, a[..., 0]].transpose(1, 2, 0)), 16)
    samples = a.shape[-1]
    if samples not in (1, 2, 3, 4):
        raise _fail(path, f"unsupported TIFF with {samples} samples per pixel (expected 1 to 4)")
    a = _drop_alpha(a)  # gray + alpha -> (H, W); RGBA -> RGB
    a = _collapse_identical(a[..., 0] if a.ndim == 3 and a.shape[-1] == 1 else a)

    if a.dtype == bool:
        out = a.astype(np.float32)
    elif np.issubdtype(a.dtype, np.unsignedinteger):
        bits = int(page.bitspersample)
        bits = bits if 0 < bits <= 8 * a.dtype.itemsize else 8 * a.dtype.itemsize
        out = _scale_unsigned(a, bits)
    elif np.issubdtype(a.dtype, np.floating):
        f = a.astype(np.float32)
        ok = np.isfinite(f).all() and f.size and f.min() >= 0 and f.max() <= 1
        out = f if ok else _minmax(f)
    else:  # signed integers (e.g. CT exports): no fixed range to divide by
        out = _minmax(a)
    if photometric == 0:  # MINISWHITE
        out = 1.0 - out
    return out


@IMAGE_DECODERS.register(".tif")
@IMAGE_DECODERS.register(".tiff")
def _read_tiff(
    data: bytes, path: str, window: tuple[float, float] | None, gray: bool | None
) -> tuple[np.ndarray, Spacing]:
    import tifffile

    _no_window(path, window, "TIFF")
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            if not len(tif.pages):
                raise _fail(path, "TIFF has no pages")
            # pages flagged as reduced-resolution copies (a pyramid) or transparency masks (NewSubfileType bits 0
            # and 2) are views of the first page, not frames of their own
            _one_frame(path, "TIFF", sum(1 for pg in tif.pages if not int(pg.subfiletype) & 0b101))
            page = tif.pages[0]  # the full-resolution page
            spacing = _tiff_spacing(page)
            try:
                return _tiff_to_array(page, path), spacing
            except ValueError as e:
                if "imagecodecs" not in str(e):
                    raise
        # tifffile needs the optional imagecodecs package for LZW, Deflate, JPEG... (the DRIVE
        # images are LZW): PIL decodes those natively (and applies MinIsWhite itself)
        return _decode_pil(data, path, None, gray, single_frame=False)[0], spacing  # frames counted above
    except ImageReadError:
        raise
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001
        raise _fail(path, f"truncated or corrupt TIFF ({_describe(e)})") from e


# ----------------------------------------------------------------------------- DICOM


def _dicom_spacing(ds) -> Spacing:  # noqa: ANN001 (pydicom Dataset)
    """PixelSpacing, else ImagerPixelSpacing, else the enhanced multi-frame shared group."""
    candidates = [ds.get("PixelSpacing"), ds.get("ImagerPixelSpacing")]
    try:
        candidates.append(ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing)
    except (AttributeError, IndexError, KeyError, TypeError):
        pass
    for value in candidates:
        try:
            row, col = (float(v) for v in value)
        except (TypeError, ValueError):
            continue
        if row > 0 and col > 0:
            return (row, col)
    return None


def _linear_window(a: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 LINEAR window, output in [0, 1]."""
    a = a.astype(np.float64, copy=False)
    if width == 1:  # degenerate window: a threshold at center - 0.5
        return (a > center - 0.5).astype(np.float32)
    return np.clip((a - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0).astype(np.float32)


def _file_voi(a: np.ndarray, ds) -> np.ndarray:  # noqa: ANN001
    """The file's VOI LUT (or window), mapped to [0, 1] by the LUT's fixed output range."""
    from pydicom.pixels import apply_voi_lut

    if ds.get("VOILUTSequence") and a.dtype.kind == "f" and np.array_equal(a, np.round(a)):
        a = a.astype(np.int64)  # a LUT indexes integers; rescale gave integral floats
    out = apply_voi_lut(a, ds, index=0)
    # probe with extreme inputs: the output range of this VOI, independent of the image
    with np.errstate(over="ignore"):
        lo, hi = (float(v) for v in apply_voi_lut(np.array([-(2**40), 2**40], np.int64), ds, index=0))
    if hi == lo:
        return _minmax(out)
    return ((out.astype(np.float64) - lo) / (hi - lo)).clip(0.0, 1.0).astype(np.float32)


def _has_voi(ds) -> bool:  # noqa: ANN001
    return bool(ds.get("VOILUTSequence")) or ("WindowCenter" in ds and "WindowWidth" in ds)


@IMAGE_DECODERS.register(".dcm")
@IMAGE_DECODERS.register(".dicom")
def _read_dicom(
    data: bytes, path: str, window: tuple[float, float] | None, gray: bool | None
) -> tuple[np.ndarray, Spacing]:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_color_lut, apply_modality_lut

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except InvalidDicomError as e:
        # files without the 128-byte preamble + "DICM" exist; accept them if they hold pixels
        try:
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
            if "PixelData" not in ds:
                raise ValueError("no pixel data")
        except Exception:  # noqa: BLE001
            raise _fail(path, f"not a DICOM file ({e})") from e
    except Exception as e:  # noqa: BLE001
        raise _fail(path, f"truncated or corrupt DICOM header ({_describe(e)})") from e

    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise _fail(path, "DICOM file has no pixel data (no PixelData element)")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    try:
        _one_frame(path, "DICOM", int(ds.get("NumberOfFrames", 1) or 1))
        a = ds.pixel_array
        if photometric.startswith("MONOCHROME"):
            if a.ndim != 2:
                raise ValueError(f"expected a 2-D grayscale frame, got shape {a.shape}")
            a = apply_modality_lut(a, ds)
            if window is not None:
                out = _linear_window(a, float(window[0]), float(window[1]))
            elif _has_voi(ds):
                out = _file_voi(a, ds)
            else:
                out = _minmax(a)
            if photometric == "MONOCHROME1":  # 0 = white: invert so that high = bright
                out = 1.0 - out
        else:
            if window is not None:
                raise _fail(path, f"window= given but the DICOM image is colour ({photometric})")
            if photometric == "PALETTE COLOR":
                a = apply_color_lut(a, ds)
                out = _scale_unsigned(a, 8 * a.dtype.itemsize)
            elif a.ndim == 3 and a.shape[-1] == 3:  # RGB, or YBR that pydicom converted to RGB
                out = _scale_unsigned(a, int(ds.get("BitsStored", 8 * a.dtype.itemsize)))
            else:
                raise ValueError(f"unsupported PhotometricInterpretation {photometric} with shape {a.shape}")
    except ImageReadError:
        raise
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        ts_name = f", transfer syntax {ts.name}" if ts is not None else ""
        raise _fail(path, f"cannot decode DICOM pixel data ({_describe(e)}{ts_name})") from e
    return np.ascontiguousarray(out, dtype=np.float32), _dicom_spacing(ds)


# ----------------------------------------------------------------------------- entry points


def _check_window(window: tuple[float, float]) -> None:
    try:
        center, width = (float(v) for v in window)
    except (TypeError, ValueError) as e:
        raise ValueError(f"window must be (center, width), got {window!r}") from e
    if not (np.isfinite(center) and np.isfinite(width) and width >= 1):
        raise ValueError(f"window width must be >= 1 (DICOM LINEAR window), got {window!r}")


def _apply_gray(a: np.ndarray, gray: bool | None) -> np.ndarray:
    if a.ndim == 2:
        return np.stack([a, a, a], axis=-1) if gray is False else a
    identical = np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2])
    if gray is False:
        return a
    if identical:  # e.g. the ISBI JPEGs: 3 identical channels are gray
        return np.ascontiguousarray(a[..., 0])
    if gray is None:
        return a
    luma = a @ np.asarray(LUMA_601, dtype=np.float32)
    return np.clip(luma, 0.0, 1.0, out=luma)


def decode_image_bytes(
    data: bytes, path: str | Path, *, gray: bool | None = None, window: tuple[float, float] | None = None
) -> ImageData:
    """Decode ``data`` (the bytes of the file at ``path``; the suffix picks the format).

    ``gray``: True -> (H, W) (BT.601 luma for colour), False -> (H, W, 3)
    (gray replicated), None -> as stored, with 3 identical channels collapsed
    to (H, W). ``window=(center, width)`` (DICOM only) overrides the file's VOI.
    """
    path = str(path)
    if window is not None:
        _check_window(window)
    suffix = Path(path).suffix.lower()
    if suffix not in IMAGE_DECODERS:
        raise _fail(path, f"unsupported file type {suffix or '(no suffix)'!r}; supported: {', '.join(supported_suffixes())}")
    if not data:
        raise _fail(path, "empty file")
    a, spacing = IMAGE_DECODERS.get(suffix)(data, path, window, gray)
    original_size = (int(a.shape[0]), int(a.shape[1]))
    a = np.ascontiguousarray(_apply_gray(a, gray), dtype=np.float32)
    return ImageData(array=a, original_size=original_size, spacing=spacing, path=path)


def read_file_bytes(path: str | Path) -> bytes:
    """The file's bytes; a missing or unreadable file is an ImageReadError naming it."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError as e:
        raise _fail(str(path), "no such file") from e
    except IsADirectoryError as e:
        raise _fail(str(path), "is a directory, not an image file") from e
    except OSError as e:
        raise _fail(str(path), f"cannot read file ({_describe(e)})") from e


def read_image(
    path: str | Path, *, gray: bool | None = None, window: tuple[float, float] | None = None
) -> ImageData:
    """Read one image file as float32 in [0, 1] (see the module docstring for conventions)."""
    suffix = Path(path).suffix.lower()
    if suffix not in IMAGE_DECODERS:  # before touching the file
        raise _fail(str(path), f"unsupported file type {suffix or '(no suffix)'!r}; supported: {', '.join(supported_suffixes())}")
    return decode_image_bytes(read_file_bytes(path), path, gray=gray, window=window)


def read_npz_split(path: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """MedMNIST-style ``.npz``: (images uint8 (N, H, W) or (N, H, W, 3), labels int64 (N,) or (N, K)).

    Labels stored as (N, 1) are flattened to (N,); (N, K) multi-label stays.
    """
    path = str(path)
    ik, lk = f"{split}_images", f"{split}_labels"
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = sorted(npz.files)
            missing = [k for k in (ik, lk) if k not in keys]
            if missing:
                raise _fail(path, f"missing key {' and '.join(map(repr, missing))}; keys present: {', '.join(keys) or '(none)'}")
            images, labels = npz[ik], npz[lk]
    except ImageReadError:
        raise
    except FileNotFoundError as e:
        raise _fail(path, "no such file") from e
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001
        raise _fail(path, f"not a readable .npz file ({_describe(e)})") from e

    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if not (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] == 3)):
        raise _fail(path, f"{ik!r} has shape {images.shape}; expected (N, H, W) or (N, H, W, 3)")
    if images.dtype != np.uint8:
        if not np.issubdtype(images.dtype, np.integer) or images.size and (images.min() < 0 or images.max() > 255):
            raise _fail(path, f"{ik!r} has dtype {images.dtype}; expected uint8")
        images = images.astype(np.uint8)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim not in (1, 2) or not np.issubdtype(labels.dtype, np.integer):
        raise _fail(path, f"{lk!r} has shape {labels.shape} and dtype {labels.dtype}; expected integer (N,) or (N, K)")
    if len(labels) != len(images):
        raise _fail(path, f"{ik!r} has {len(images)} rows but {lk!r} has {len(labels)}")
    return images, labels.astype(np.int64)
