"""Colormaps, overlays, segmentation masks, the untrained-weights watermark, colorbars.

Pure functions of numpy arrays (cv2 for drawing, matplotlib only for `colorbar_figure`): RGB
uint8 in, RGB uint8 out, inputs never modified. Colormap names are valid for both cv2 and
matplotlib, so overlays and colorbars agree. Heatmaps are float maps in 0..1 (values outside
are clipped, NaN counts as 0).
"""

from __future__ import annotations

import cv2
import numpy as np

# name -> OpenCV colormap id; "gray" is the identity ramp.
_CV2_COLORMAPS = {
    "jet": cv2.COLORMAP_JET,  # pytorch-grad-cam's show_cam_on_image default
    "turbo": cv2.COLORMAP_TURBO,
    "viridis": cv2.COLORMAP_VIRIDIS,
    "inferno": cv2.COLORMAP_INFERNO,
    "magma": cv2.COLORMAP_MAGMA,
    "plasma": cv2.COLORMAP_PLASMA,
    "cividis": cv2.COLORMAP_CIVIDIS,
    "hot": cv2.COLORMAP_HOT,
    "bone": cv2.COLORMAP_BONE,
}
COLORMAPS: tuple[str, ...] = (*_CV2_COLORMAPS, "gray")
DEFAULT_COLORMAP = "jet"
UNTRAINED_TEXT = "UNTRAINED WEIGHTS"


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an H x W x 3 uint8 RGB image, got {rgb.dtype} {rgb.shape}")
    return rgb


def _check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in 0..1, got {alpha}")
    return alpha


def _unit_map(heatmap: np.ndarray) -> np.ndarray:
    m = np.asarray(heatmap, dtype=np.float32)
    if m.ndim != 2:
        raise ValueError(f"expected a 2-D heatmap, got shape {m.shape}")
    return np.clip(np.nan_to_num(m, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)


def _lut(colormap: str) -> np.ndarray:
    """256 x 3 uint8 RGB lookup table of a colormap."""
    if colormap == "gray":
        ramp = np.arange(256, dtype=np.uint8)
        return np.stack([ramp] * 3, axis=1)
    try:
        code = _CV2_COLORMAPS[colormap]
    except KeyError:
        raise ValueError(f"unknown colormap {colormap!r}; choose one of {', '.join(COLORMAPS)}") from None
    bgr = cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None], code)[:, 0, :]
    return np.ascontiguousarray(bgr[:, ::-1])


def colorize(heatmap: np.ndarray, colormap: str = DEFAULT_COLORMAP) -> np.ndarray:
    """H x W map in 0..1 -> H x W x 3 uint8 RGB through the colormap."""
    m = _unit_map(heatmap)
    return _lut(colormap)[np.rint(m * 255).astype(np.uint8)]


def overlay(
    rgb: np.ndarray, heatmap: np.ndarray, alpha: float = 0.5, colormap: str = DEFAULT_COLORMAP
) -> np.ndarray:
    """Blend the colorized heatmap over the image: (1 - alpha) * image + alpha * colors.

    A heatmap of another size is resized (bilinear) to the image first.
    """
    rgb = _check_rgb(rgb)
    alpha = _check_alpha(alpha)
    m = _unit_map(heatmap)
    if m.shape != rgb.shape[:2]:
        m = cv2.resize(m, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_LINEAR)
    colors = colorize(m, colormap).astype(np.float32)
    out = (1.0 - alpha) * rgb.astype(np.float32) + alpha * colors
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def palette(n: int) -> np.ndarray:
    """n x 3 uint8 colors: the PASCAL VOC palette (class 0 black), distinct for any n."""
    out = np.zeros((n, 3), np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        out[i] = (r, g, b)
    return out


def segmentation_overlay(
    rgb: np.ndarray,
    mask: np.ndarray,
    alpha: float = 0.5,
    num_classes: int | None = None,
    background: int | None = 0,
) -> np.ndarray:
    """Color each class of an integer mask (the `palette` colors) over the image.

    num_classes: the model's class count (colors are the same whatever it is; classes at or
    above it are an error). Pixels of class `background` (None: none) keep the image as is.
    A mask of another size is resized with nearest-neighbour first.
    """
    rgb = _check_rgb(rgb)
    alpha = _check_alpha(alpha)
    mask = np.asarray(mask)
    if mask.ndim != 2 or not np.issubdtype(mask.dtype, np.integer):
        raise ValueError(f"expected a 2-D integer class mask, got {mask.dtype} {mask.shape}")
    if mask.size and mask.min() < 0:
        raise ValueError("class mask has negative values")
    top = int(mask.max()) + 1 if mask.size else 1
    if num_classes is not None and top > num_classes:
        raise ValueError(f"class mask holds class {top - 1}, but the model has {num_classes} classes")
    if mask.shape != rgb.shape[:2]:
        mask = cv2.resize(
            mask.astype(np.int32), (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_NEAREST
        )
    colors = palette(max(top, num_classes or 0))[mask].astype(np.float32)
    blended = (1.0 - alpha) * rgb.astype(np.float32) + alpha * colors
    out = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    if background is not None:
        keep = mask == background
        out[keep] = rgb[keep]
    return out


def watermark_untrained(rgb: np.ndarray, text: str = UNTRAINED_TEXT, outside: bool = False) -> np.ndarray:
    """Mark an image made with random weights: a red band with white text and a red frame, so it
    never passes for a trained model's output.

    outside=False: the band is painted over the top rows (the image keeps its size; files).
    outside=True: the band is added above the image, which stays whole (H grows by the band).
    """
    rgb = _check_rgb(rgb)
    h, w = rgb.shape[:2]
    band = max(16, round(h * 0.07))
    if outside:
        out = np.empty((h + band, w, 3), np.uint8)
        out[band:] = rgb
    else:
        band = min(h, band)
        out = rgb.copy()
    out[:band] = (200, 0, 0)
    H = out.shape[0]
    cv2.rectangle(out, (0, 0), (w - 1, H - 1), (200, 0, 0), max(2, round(min(h, w) * 0.01)))
    font = cv2.FONT_HERSHEY_DUPLEX
    (tw, th), _ = cv2.getTextSize(text, font, 1.0, 1)
    scale = min(0.92 * w / tw, 0.62 * band / th)
    thickness = max(1, round(scale * 1.4))
    (tw, th), _ = cv2.getTextSize(text, font, scale, thickness)
    org = (max(0, (w - tw) // 2), min(band - 1, (band + th) // 2))
    cv2.putText(out, text, org, font, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return out


def colorbar_figure(raw: np.ndarray, colormap: str = DEFAULT_COLORMAP, title: str = ""):
    """A matplotlib Figure of a raw (unnormalised) map with a colorbar in its own units.

    Built on matplotlib.figure.Figure, not pyplot: no global state, safe from any thread.
    """
    from matplotlib.figure import Figure

    if colormap not in COLORMAPS:
        raise ValueError(f"unknown colormap {colormap!r}; choose one of {', '.join(COLORMAPS)}")
    m = np.asarray(raw, dtype=np.float32)
    if m.ndim != 2:
        raise ValueError(f"expected a 2-D map, got shape {m.shape}")
    fig = Figure(figsize=(4.0, 3.2), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(np.nan_to_num(m), cmap=colormap, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)
    return fig


BOX_COLOR = (200, 200, 200)  # every detection: light grey
EXPLAINED_COLOR = (255, 230, 0)  # the explained box(es): yellow, thicker


def draw_boxes(rgb: np.ndarray, boxes: list[tuple[tuple[float, float, float, float], str, bool]]) -> np.ndarray:
    """The image with boxes drawn: (x1, y1, x2, y2 in the image's pixels, caption, explained).
    Explained boxes are thick and yellow, drawn last (on top); the caption (label and score) sits
    on a dark strip above the box, so it reads on any image. Drawn into pixels: never markup."""
    out = np.ascontiguousarray(_check_rgb(rgb).copy())
    height, width = out.shape[:2]
    thick = max(1, round(min(height, width) / 250))
    scale = max(0.35, min(height, width) / 900)
    for box, caption, explained in sorted(boxes, key=lambda b: b[2]):
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        color = EXPLAINED_COLOR if explained else BOX_COLOR
        cv2.rectangle(out, (x1, y1), (x2, y2), color, thick * (3 if explained else 1))
        if caption:
            (tw, th), base = cv2.getTextSize(caption, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
            ty = y1 - 2 if y1 - th - base - 2 >= 0 else min(height - 1, y1 + th + base + 2)
            cv2.rectangle(out, (x1, ty - th - base), (min(width - 1, x1 + tw + 2), ty + 1), (0, 0, 0), -1)
            cv2.putText(out, caption, (x1 + 1, ty - base + 1), cv2.FONT_HERSHEY_SIMPLEX, scale, color, 1,
                        cv2.LINE_AA)
    return out
