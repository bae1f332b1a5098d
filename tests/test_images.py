"""load_image: whatever the file, 8-bit upright RGB or one clear ImageError."""

from __future__ import annotations

import struct
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from camcore.errors import ImageError
from camcore.images import MAX_PIXELS, MAX_WORKING_SIDE, from_array, load_image


def _error(path, *fragments: str) -> str:
    with pytest.raises(ImageError) as err:
        load_image(path)
    msg = str(err.value)
    assert "\n" not in msg, "an ImageError is one line"
    for fragment in fragments:
        assert fragment.lower() in msg.lower(), f"{fragment!r} not in {msg!r}"
    return msg


def _noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ---------------------------------------------------------------- unusable files


def test_missing_file(tmp_path):
    _error(tmp_path / "nope.jpg", "not found", "nope.jpg")


def test_directory_is_not_an_image(tmp_path):
    _error(tmp_path, "not a file")


def test_zero_byte_file(tmp_path):
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    _error(p, "empty", "0 bytes")


def test_text_file_named_jpg(tmp_path):
    p = tmp_path / "notes.jpg"
    p.write_text("this is not a JPEG\n" * 20)
    _error(p, "not an image", "notes.jpg")


def test_truncated_jpeg(tmp_path):
    full = tmp_path / "full.jpg"
    Image.fromarray(_noise(96, 128)).save(full, quality=90)
    data = full.read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) // 2])
    _error(cut, "cannot decode", "cut.jpg")


def test_truncated_png(tmp_path):
    full = tmp_path / "full.png"
    Image.fromarray(_noise(64, 64)).save(full)
    cut = tmp_path / "cut.png"
    cut.write_bytes(full.read_bytes()[:300])
    _error(cut, "cut.png")


def test_corrupt_png_data(tmp_path):
    p = tmp_path / "bad.png"
    Image.fromarray(_noise(64, 64)).save(p)
    data = bytearray(p.read_bytes())
    data[120:180] = bytes(60)  # inside the IDAT chunk: its CRC no longer matches
    p.write_bytes(bytes(data))
    _error(p, "bad.png")


def test_1x1_png_is_too_small(tmp_path):
    p = tmp_path / "dot.png"
    Image.new("RGB", (1, 1), (10, 20, 30)).save(p)
    _error(p, "1x1", "too small")


def test_thin_image_is_too_small(tmp_path):
    p = tmp_path / "line.png"
    Image.new("RGB", (300, 4)).save(p)
    _error(p, "300x4", "too small")


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims width x height (1-bit grayscale) with a token of data: cheap
    to write, and only its header should ever be read."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (1 + (width + 7) // 8) * 4)  # 4 rows of the many it claims
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


@pytest.mark.parametrize("width, height", [(12000, 9000), (20000, 10000)])
def test_huge_image_header_is_refused_without_decoding(tmp_path, width, height):
    """108 MP is over our 100 MP limit (PIL only warns there); 200 MP is over PIL's hard limit too."""
    assert width * height > MAX_PIXELS
    p = tmp_path / "bomb.png"
    _png_header_only(p, width, height)
    start = time.perf_counter()
    msg = _error(
        p,
        "decompression bomb",
        "bomb.png"
        if width * height > 2 * Image.MAX_IMAGE_PIXELS
        else f"{width}x{height} ({width * height / 1e6:.0f} megapixels)",
    )
    assert time.perf_counter() - start < 2.0, "the size must be refused from the header, before decoding"
    assert msg


def test_pil_warning_threshold_is_not_our_limit(tmp_path, monkeypatch):
    """PIL warns above its MAX_IMAGE_PIXELS (89.5 MP by default) and refuses above twice that;
    our documented limit is MAX_PIXELS (100 MP). An image between PIL's warning and our limit
    must load. Scaled down: PIL's threshold set to 1 MP, a 1.2 MP image."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)
    p = tmp_path / "between.png"
    Image.new("RGB", (1200, 1000), (1, 2, 3)).save(p)
    img = load_image(p)
    assert img.original_size == (1000, 1200) and (img.rgb[0, 0] == (1, 2, 3)).all()


def test_real_1bit_image_over_the_limit(tmp_path):
    p = tmp_path / "big1bit.png"
    Image.new("1", (11000, 9200)).save(p)  # 101.2 MP, 12.6 MB in memory, tiny on disk
    _error(p, "11000x9200", "megapixels")


# ---------------------------------------------------------------- converted to RGB


def test_plain_rgb_png_round_trips_exactly(tmp_path):
    rgb = _noise(40, 60)
    p = tmp_path / "rgb.png"
    Image.fromarray(rgb).save(p)
    img = load_image(p)
    assert img.rgb.dtype == np.uint8 and img.rgb.flags.c_contiguous
    np.testing.assert_array_equal(img.rgb, rgb)
    assert img.size == img.original_size == (40, 60) and img.notes == () and img.path == str(p)


def test_grayscale_png(tmp_path):
    gray = np.tile(np.arange(0, 250, 5, dtype=np.uint8), (20, 1))  # 20 x 50
    p = tmp_path / "gray.png"
    Image.fromarray(gray, "L").save(p)
    img = load_image(p)
    assert img.rgb.shape == (20, 50, 3)
    for c in range(3):
        np.testing.assert_array_equal(img.rgb[:, :, c], gray)


def test_rgba_png_composited_on_white(tmp_path):
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 0] = 200  # red everywhere underneath
    rgba[:, :8, 3] = 255  # left half opaque
    rgba[:, 8:, 3] = 0  # right half fully transparent
    p = tmp_path / "rgba.png"
    Image.fromarray(rgba, "RGBA").save(p)
    img = load_image(p)
    assert img.rgb.shape == (16, 16, 3)
    assert (img.rgb[:, :8] == (200, 0, 0)).all()
    assert (img.rgb[:, 8:] == 255).all(), "transparent pixels must become white, not their hidden color"
    assert any("transparency" in n for n in img.notes)


def test_palette_png_with_transparency(tmp_path):
    p = tmp_path / "pal.png"
    im = Image.new("P", (12, 12), 1)
    im.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    im.paste(0, (0, 0, 6, 12))
    im.save(p, transparency=0)
    img = load_image(p)
    assert (img.rgb[:, :6] == 255).all() and (img.rgb[:, 6:] == (0, 0, 255)).all()


def test_16bit_grayscale_png_scaled_not_clipped(tmp_path):
    ramp = np.tile(np.linspace(1000, 60000, 64).astype(np.uint16), (16, 1))
    p = tmp_path / "deep.png"
    assert cv2.imwrite(str(p), ramp)
    with Image.open(p) as im:
        assert im.mode.startswith("I"), f"PIL should read a 16-bit PNG as I/I;16, got {im.mode}"
    img = load_image(p)
    g = img.rgb[:, :, 0]
    assert g.min() == 0 and g.max() == 255, "the actual 16-bit range must map onto 0..255"
    assert (np.diff(g[0].astype(int)) >= 0).all() and len(np.unique(g)) > 50
    assert (img.rgb[:, :, 0] == img.rgb[:, :, 2]).all()
    assert any("8 bits" in n for n in img.notes)


def test_16bit_rgb_png(tmp_path):
    rgb16 = np.zeros((8, 8, 3), np.uint16)
    rgb16[..., 0] = 65535  # red, full scale
    p = tmp_path / "rgb48.png"
    assert cv2.imwrite(str(p), rgb16[..., ::-1].copy())  # cv2 writes BGR
    img = load_image(p)
    assert img.rgb.shape == (8, 8, 3)
    assert (img.rgb[..., 0] > 240).all() and (img.rgb[..., 1:] < 15).all()


def test_cmyk_jpeg(tmp_path):
    p = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (32, 24), (0, 255, 255, 0)).save(p, quality=95)  # pure red in CMYK
    with Image.open(p) as im:
        assert im.mode == "CMYK"
    img = load_image(p)
    assert img.rgb.shape == (24, 32, 3)
    r, g, b = (float(img.rgb[..., c].mean()) for c in range(3))
    assert r > 200 and g < 60 and b < 60, f"CMYK red came out as {(r, g, b)}"
    assert any("CMYK" in n for n in img.notes)


def test_exif_rotated_jpeg_is_upright(tmp_path):
    stored = np.full((20, 40, 3), 255, np.uint8)  # 40 wide, 20 high as stored
    stored[:6, :6] = (255, 0, 0)  # red marker at the stored top-left
    p = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation 6: rotate 90 degrees clockwise to display
    Image.fromarray(stored).save(p, exif=exif, quality=95)
    img = load_image(p)
    assert img.rgb.shape == (40, 20, 3), "orientation 6 must swap width and height"
    assert img.original_size == (40, 20)
    corner = img.rgb[:5, -5:].reshape(-1, 3).mean(axis=0)  # stored top-left -> displayed top-right
    assert corner[0] > 200 and corner[1] < 80 and corner[2] < 80, f"marker not at the top-right: {corner}"
    assert img.rgb[-5:, :5].min() > 200
    assert any("EXIF" in n for n in img.notes)


def test_multiframe_gif_uses_the_first_frame(tmp_path):
    p = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(p, save_all=True, append_images=frames[1:])
    img = load_image(p)
    assert img.rgb.shape == (16, 16, 3) and img.rgb[..., 0].mean() > 200
    assert any("first frame" in n for n in img.notes)


def test_very_wide_image_is_downscaled_once(tmp_path):
    p = tmp_path / "wide.png"
    Image.new("RGB", (6000, 60), (0, 128, 0)).save(p)
    img = load_image(p)
    assert max(img.size) == MAX_WORKING_SIDE and img.size == (41, 4096)
    assert img.original_size == (60, 6000)
    assert any("downscaled" in n for n in img.notes)
    assert (img.rgb[..., 1] == 128).all()


def test_from_array_validates():
    assert from_array(np.zeros((10, 12), np.uint8)).rgb.shape == (10, 12, 3)
    assert from_array(np.zeros((10, 12, 4), np.uint8)).rgb.shape == (10, 12, 3)
    with pytest.raises(ImageError, match="8-bit"):
        from_array(np.zeros((10, 12, 3), np.float32))
    with pytest.raises(ImageError, match="shape"):
        from_array(np.zeros((10, 12, 2), np.uint8))
    with pytest.raises(ImageError, match="too small"):
        from_array(np.zeros((4, 12, 3), np.uint8))
