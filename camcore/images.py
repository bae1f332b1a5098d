"""Loading and validating images: whatever the file, the engine gets 8-bit RGB, upright as the
FiftyOne App shows it (EXIF orientation applied), or a clear ImageError."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from camcore.errors import ImageError

MAX_PIXELS = 100_000_000  # above this: a decompression bomb, refused
MIN_SIDE = 8  # a CAM of a few pixels says nothing
MAX_WORKING_SIDE = 4096  # larger images are downscaled once, so heatmaps stay a sane size


@dataclass(frozen=True)
class LoadedImage:
    rgb: np.ndarray  # H x W x 3 uint8
    path: str
    original_size: tuple[int, int]  # (height, width) of the file, after EXIF rotation
    notes: tuple[str, ...] = ()  # what was done to it (downscaled, alpha dropped, ...)

    @property
    def size(self) -> tuple[int, int]:
        return self.rgb.shape[0], self.rgb.shape[1]


def _to_rgb(img: Image.Image, notes: list[str]) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit / float grayscale: scale the actual range to 8 bits instead of clipping to white.
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        notes.append(f"{img.mode} image scaled to 8 bits")
        img = Image.fromarray(arr.astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Composite on white: transparent pixels have undefined colour underneath.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        notes.append("transparency composited on white")
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode == "CMYK":
        notes.append("CMYK converted to RGB")
    return img.convert("RGB")


def load_image(path: str | Path) -> LoadedImage:
    """Read an image file into 8-bit RGB, or raise ImageError naming the problem."""
    p = Path(path)
    if not p.exists():
        raise ImageError(f"Image file not found: {p}")
    if not p.is_file():
        raise ImageError(f"Not a file: {p}")
    if p.stat().st_size == 0:
        raise ImageError(f"Image file is empty (0 bytes): {p}")
    notes: list[str] = []
    try:
        with warnings.catch_warnings():
            # PIL warns above 89.5 MP; our own MAX_PIXELS check below (before decoding) is the limit.
            # (Turning that warning into an error made the real limit 89.5 MP and the check dead code.)
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(p) as img:
                w, h = img.size
                if w * h > MAX_PIXELS:
                    raise ImageError(
                        f"Image is {w}x{h} ({w * h / 1e6:.0f} megapixels), over the "
                        f"{MAX_PIXELS / 1e6:.0f} MP limit: refused as a possible decompression bomb. "
                        "Downscale it first."
                    )
                if getattr(img, "n_frames", 1) > 1:
                    notes.append("first frame of a multi-frame file")
                img.load()  # decode now: truncated files fail here, not later
                upright = ImageOps.exif_transpose(img)
                if upright is not img and upright.size != img.size:
                    notes.append("EXIF orientation applied")
                rgb_img = _to_rgb(upright, notes)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"Image refused as a possible decompression bomb: {p} ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"Not an image file (or an unsupported format): {p}") from exc
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt data
        raise ImageError(f"Cannot decode image {p}: {exc}") from exc
    return from_array(np.asarray(rgb_img), str(p), notes)


def from_array(rgb: np.ndarray, path: str = "<array>", notes: list[str] | None = None) -> LoadedImage:
    """Validate an in-memory RGB array (and downscale huge ones once)."""
    notes = list(notes or [])
    if rgb.ndim == 2:
        rgb = np.stack([rgb] * 3, axis=-1)
    if rgb.ndim != 3 or rgb.shape[2] not in (3, 4):
        raise ImageError(f"Expected an H x W x 3 RGB image, got shape {rgb.shape}.")
    rgb = np.ascontiguousarray(rgb[:, :, :3])
    if rgb.dtype != np.uint8:
        raise ImageError(f"Expected 8-bit RGB pixels, got {rgb.dtype}.")
    h, w = rgb.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise ImageError(f"Image is {w}x{h} pixels: too small to explain (at least {MIN_SIDE} px a side).")
    original = (h, w)
    if max(h, w) > MAX_WORKING_SIDE:
        import cv2

        scale = MAX_WORKING_SIDE / max(h, w)
        size = (max(MIN_SIDE, round(w * scale)), max(MIN_SIDE, round(h * scale)))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        notes.append(f"downscaled from {w}x{h} to {size[0]}x{size[1]} for computing")
    return LoadedImage(rgb=rgb, path=path, original_size=original, notes=tuple(notes))
