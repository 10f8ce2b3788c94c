"""transfer.data.readers: every format round-trips; bad input is an ImageReadError naming the file."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageFile

from transfer.data.readers import LUMA_601, read_image, read_npz_split, supported_suffixes
from transfer.errors import ImageReadError, MedTransferError

RNG = np.random.default_rng(0)


def _u8(h: int = 12, w: int = 16, c: int | None = None) -> np.ndarray:
    shape = (h, w) if c is None else (h, w, c)
    return RNG.integers(0, 256, size=shape, dtype=np.uint8)


# --------------------------------------------------------------------------- PIL formats


def test_png_8bit_round_trip(tmp_path: Path) -> None:
    a = _u8()
    p = tmp_path / "a.png"
    Image.fromarray(a).save(p)
    img = read_image(p)
    assert img.array.dtype == np.float32 and img.array.shape == (12, 16)
    np.testing.assert_array_equal(img.array, a.astype(np.float32) / np.float32(255))
    assert img.original_size == (12, 16) and img.spacing is None and img.path == str(p)


def test_png_16bit_scaled_by_65535_not_by_max(tmp_path: Path) -> None:
    a = np.full((6, 9), 500, np.uint16)
    a[2, 3] = 1000
    a[0, 0] = 30000  # image max well below 65535: a max-scaling reader would differ
    p = tmp_path / "a16.png"
    Image.fromarray(a).save(p)
    assert Image.open(p).mode.startswith("I")  # really 16-bit on disk
    img = read_image(p)
    assert img.array[2, 3] == np.float32(1000) / np.float32(65535)
    assert img.array[0, 0] == np.float32(30000) / np.float32(65535)
    assert img.original_size == (6, 9)


def test_jpeg_approximately_round_trips(tmp_path: Path) -> None:
    yy, xx = np.mgrid[0:32, 0:48]
    a = (xx * 4 + yy * 2).astype(np.uint8)  # smooth, JPEG-friendly
    p = tmp_path / "a.jpg"
    Image.fromarray(a).save(p, quality=95)
    img = read_image(p)
    assert img.array.shape == (32, 48) and img.original_size == (32, 48)
    assert np.abs(img.array - a / 255.0).mean() < 0.01


def test_tiff_uint16_and_resolution(tmp_path: Path) -> None:
    a = RNG.integers(0, 65536, size=(7, 5), dtype=np.uint16)
    p = tmp_path / "a.tif"
    # 10 px/cm across (1 mm), 20 px/cm down (0.5 mm)
    tifffile.imwrite(p, a, resolution=(10, 20), resolutionunit="CENTIMETER")
    img = read_image(p)
    np.testing.assert_array_equal(img.array, a.astype(np.float32) / np.float32(65535))
    assert img.original_size == (7, 5)
    assert img.spacing == pytest.approx((0.5, 1.0))
    tifffile.imwrite(tmp_path / "nores.tif", a)  # tifffile writes unit NONE by default
    assert read_image(tmp_path / "nores.tif").spacing is None


def test_tiff_float_rgb_and_lzw(tmp_path: Path) -> None:
    f = RNG.random((6, 4)).astype(np.float32)
    tifffile.imwrite(tmp_path / "f.tiff", f)
    np.testing.assert_array_equal(read_image(tmp_path / "f.tiff").array, f)
    rgb = _u8(6, 4, 3)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    np.testing.assert_array_equal(read_image(tmp_path / "rgb.tif").array, rgb / np.float32(255))
    # LZW needs imagecodecs in tifffile; the reader falls back to PIL (the DRIVE images are LZW)
    Image.fromarray(rgb).save(tmp_path / "lzw.tif", compression="tiff_lzw")
    np.testing.assert_array_equal(read_image(tmp_path / "lzw.tif").array, rgb / np.float32(255))


def test_bmp_colour_and_luma(tmp_path: Path) -> None:
    a = _u8(5, 7, 3)
    p = tmp_path / "a.bmp"
    Image.fromarray(a).save(p)
    img = read_image(p)  # gray=None keeps real colour
    assert img.array.shape == (5, 7, 3)
    np.testing.assert_array_equal(img.array, a / np.float32(255))
    g = read_image(p, gray=True).array
    expected = (a / 255.0) @ np.array(LUMA_601)
    np.testing.assert_allclose(g, expected, atol=1e-6)
    assert read_image(p, gray=False).array.shape == (5, 7, 3)


def test_gif_palette_mask(tmp_path: Path) -> None:
    mask = np.zeros((9, 11), np.uint8)
    mask[2:6, 3:8] = 1
    im = Image.new("P", (11, 9))
    im.putpalette([0, 0, 0, 255, 255, 255] + [0, 0, 0] * 254)
    im.putdata(mask.ravel().tolist())
    p = tmp_path / "mask.gif"
    im.save(p)
    img = read_image(p)
    assert img.array.shape == (9, 11)  # gray palette collapses to one channel
    np.testing.assert_array_equal(img.array, mask.astype(np.float32))
    # a colour palette stays colour
    im.putpalette([0, 0, 0, 255, 0, 0] + [0, 0, 0] * 254)
    im.save(tmp_path / "red.gif")
    red = read_image(tmp_path / "red.gif").array
    assert red.shape == (9, 11, 3)
    np.testing.assert_array_equal(red[..., 0], mask.astype(np.float32))
    assert red[..., 1:].max() == 0


def test_three_identical_channels_collapse(tmp_path: Path) -> None:
    g = _u8(8, 6)
    p = tmp_path / "rgb_gray.png"
    Image.fromarray(np.stack([g, g, g], -1)).save(p)
    for gray in (None, True):
        img = read_image(p, gray=gray)
        assert img.array.shape == (8, 6)
        np.testing.assert_array_equal(img.array, g / np.float32(255))
    three = read_image(p, gray=False).array
    assert three.shape == (8, 6, 3)
    np.testing.assert_array_equal(three[..., 2], g / np.float32(255))


def test_gray_false_replicates_gray(tmp_path: Path) -> None:
    g = _u8(4, 5)
    Image.fromarray(g).save(tmp_path / "g.png")
    three = read_image(tmp_path / "g.png", gray=False).array
    assert three.shape == (4, 5, 3)
    for c in range(3):
        np.testing.assert_array_equal(three[..., c], g / np.float32(255))


def test_gray_jpeg_uses_luma_plane(tmp_path: Path) -> None:
    yy, xx = np.mgrid[0:16, 0:16]
    a = np.stack([xx * 12, yy * 10, 200 - xx * 5 - yy * 5], -1).astype(np.uint8)  # smooth colour
    p = tmp_path / "c.jpg"
    Image.fromarray(a).save(p, quality=95)
    g = read_image(p, gray=True).array  # JPEG's own Y plane
    luma = read_image(p, gray=False).array @ np.array(LUMA_601, np.float32)
    assert g.shape == (16, 16)
    # equal up to the decoder's rounding and gamut clipping of the reconstructed RGB
    assert np.abs(g - luma).max() < 2 / 255


# --------------------------------------------------------------------------- DICOM

pydicom = pytest.importorskip("pydicom")
from pydicom.data import get_testdata_file  # noqa: E402
from pydicom.pixels import apply_modality_lut  # noqa: E402


def _testfile(name: str) -> str:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom test file {name} not available offline")
    return str(path)


def test_dicom_ct_rescale_and_spacing() -> None:
    path = _testfile("CT_small.dcm")
    ds = pydicom.dcmread(path)
    hu = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    img = read_image(path)
    assert img.original_size == (128, 128) and img.array.shape == (128, 128)
    assert img.spacing == pytest.approx((0.661468, 0.661468))
    assert img.array.min() == 0.0 and img.array.max() == 1.0
    # no window in the file: min-max of the rescaled values, same ordering as pydicom's
    np.testing.assert_allclose(img.array, (hu - hu.min()) / (hu.max() - hu.min()), atol=1e-6)
    # a window in HU only makes sense after rescale (slope 1, intercept -1024 here)
    center, width = float(np.median(hu)), 400.0
    win = read_image(path, window=(center, width)).array
    expected = np.clip((hu - (center - 0.5)) / (width - 1) + 0.5, 0, 1)
    np.testing.assert_allclose(win, expected, atol=1e-6)
    assert 0 < (win == 0).mean() < 1 or 0 < (win == 1).mean() < 1  # the window clipped something


def test_dicom_file_window_is_applied() -> None:
    path = _testfile("MR_small.dcm")
    ds = pydicom.dcmread(path)
    assert float(ds.WindowCenter) == 600 and float(ds.WindowWidth) == 1600
    x = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    img = read_image(path)
    np.testing.assert_allclose(img.array, np.clip((x - 599.5) / 1599 + 0.5, 0, 1), atol=1e-6)
    assert img.spacing == pytest.approx((0.3125, 0.3125))


def test_dicom_monochrome1_inverted(tmp_path: Path) -> None:
    path = _testfile("CT_small.dcm")
    ds = pydicom.dcmread(path)
    m1 = copy.deepcopy(ds)
    m1.PhotometricInterpretation = "MONOCHROME1"
    p = tmp_path / "m1.dcm"
    m1.save_as(p)
    np.testing.assert_allclose(read_image(p).array, 1.0 - read_image(path).array, atol=1e-6)


def test_dicom_without_pixel_data(tmp_path: Path) -> None:
    ds = pydicom.dcmread(_testfile("CT_small.dcm"))
    del ds.PixelData
    p = tmp_path / "nopix.dcm"
    ds.save_as(p)
    with pytest.raises(ImageReadError, match="has no pixel data") as e:
        read_image(p)
    assert str(p) in str(e.value)


def test_dicom_colour() -> None:
    img = read_image(_testfile("SC_rgb_small_odd.dcm"))
    assert img.array.ndim == 3 and img.array.shape[-1] == 3
    assert read_image(_testfile("SC_rgb_small_odd.dcm"), gray=True).array.ndim == 2


# --------------------------------------------------------------------------- bad input


def _raises_naming(p: Path, match: str) -> ImageReadError:
    with pytest.raises(ImageReadError, match=match) as e:
        read_image(p)
    assert p.name in str(e.value)
    assert isinstance(e.value, MedTransferError)
    return e.value


def test_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    _raises_naming(p, "empty file")


def test_truncated_jpeg(tmp_path: Path) -> None:
    p = tmp_path / "cut.jpg"
    Image.fromarray(_u8(64, 64)).save(p, quality=95)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    _raises_naming(p, "truncated or corrupt JPEG")
    with pytest.raises(ImageReadError, match="JPEG"):
        read_image(p, gray=True)  # the luma-only decode path too


def test_truncated_jpeg_detected_even_if_pil_flag_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    p = tmp_path / "cut.jpg"
    Image.fromarray(_u8(64, 64)).save(p)
    p.write_bytes(p.read_bytes()[:300])
    _raises_naming(p, "truncated")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored


def test_random_bytes_png(tmp_path: Path) -> None:
    p = tmp_path / "noise.png"
    p.write_bytes(RNG.integers(0, 256, 500, dtype=np.uint8).tobytes())
    _raises_naming(p, "PNG")


def test_random_bytes_dicom_and_tiff(tmp_path: Path) -> None:
    for name in ("noise.dcm", "noise.tif"):
        p = tmp_path / name
        p.write_bytes(RNG.integers(0, 256, 500, dtype=np.uint8).tobytes())
        _raises_naming(p, "DICOM|TIFF")


def test_unsupported_suffix_and_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "image.xyz"
    p.write_bytes(b"abc")
    err = _raises_naming(p, "unsupported file type '.xyz'")
    assert ".png" in str(err) and ".dcm" in str(err)
    _raises_naming(tmp_path / "missing.png", "no such file")
    assert {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".dcm", ".dicom"} <= set(supported_suffixes())


def test_window_only_for_dicom(tmp_path: Path) -> None:
    Image.fromarray(_u8()).save(tmp_path / "a.png")
    with pytest.raises(ValueError, match="DICOM only"):
        read_image(tmp_path / "a.png", window=(100, 50))
    with pytest.raises(ValueError, match="width"):
        read_image(tmp_path / "a.png", window=(100, 0))


# --------------------------------------------------------------------------- npz


def test_npz_split(tmp_path: Path) -> None:
    p = tmp_path / "mnist.npz"
    imgs = _u8(4, 6)[None].repeat(3, 0)
    np.savez(p, train_images=imgs, train_labels=np.array([[0], [1], [1]], np.uint8), val_images=imgs[:1], val_labels=np.zeros((1, 3)))
    x, y = read_npz_split(p, "train")
    assert x.dtype == np.uint8 and x.shape == (3, 4, 6)
    assert y.dtype == np.int64 and y.tolist() == [0, 1, 1]
    with pytest.raises(ImageReadError) as e:
        read_npz_split(p, "test")
    msg = str(e.value)
    assert "mnist.npz" in msg and "test_images" in msg and "train_images" in msg
    with pytest.raises(ImageReadError, match="val_labels"):
        read_npz_split(p, "val")  # float labels
