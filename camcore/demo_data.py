"""The embedded demo dataset, built offline from photos that installed packages ship.

Never imports streamlit and never downloads. The media are copied (as plain 8-bit RGB)
into ``paths.demo_media_dir()`` so the dataset never points into site-packages.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import fiftyone as fo
from PIL import Image

from camcore import paths
from camcore.errors import CamError, StoreError

DEMO_DATASET_NAME = "cam-explorer-demo"
QUICKSTART_NAME = "quickstart"
_QUICKSTART_HOST = ("drive.google.com", 443)  # where the zoo's quickstart archive comes from
_INFO_KEY = "cam_explorer_demo"
_FORMAT_VERSION = 2  # bump when the demo contents change, to force a rebuild

_LOCK = threading.RLock()  # Streamlit sessions may all ask for the demo at first load


@dataclass(frozen=True)
class DemoImage:
    package: str  # the installed package that ships the file
    relpath: str  # path inside that package
    name: str  # file name in our media folder
    label: str  # ground_truth class
    tag: str
    box: tuple[float, float, float, float]  # the object, [x, y, w, h] relative (hand-drawn): bias checks


DEMO_IMAGES: tuple[DemoImage, ...] = (
    DemoImage("skimage", "data/astronaut.png", "astronaut.png", "person", "people", (0.03, 0.02, 0.69, 0.98)),
    DemoImage("matplotlib", "mpl-data/sample_data/grace_hopper.jpg", "grace_hopper.jpg", "person", "people",
              (0.05, 0.03, 0.87, 0.97)),
    DemoImage("skimage", "data/camera.png", "cameraman.png", "person", "grayscale", (0.0, 0.12, 0.63, 0.88)),
    DemoImage("skimage", "data/chelsea.png", "chelsea.png", "cat", "animals", (0.27, 0.23, 0.55, 0.75)),
    DemoImage("skimage", "data/horse.png", "horse.png", "horse", "animals", (0.04, 0.02, 0.94, 0.95)),
    DemoImage("skimage", "data/coffee.png", "coffee.png", "cup", "objects", (0.28, 0.02, 0.42, 0.58)),
    DemoImage("skimage", "data/rocket.jpg", "rocket.jpg", "rocket", "vehicles", (0.46, 0.30, 0.08, 0.65)),
    DemoImage("skimage", "data/motorcycle_left.png", "motorcycle.png", "motorcycle", "vehicles",
              (0.15, 0.28, 0.78, 0.64)),
)


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _source_path(item: DemoImage) -> Path:
    spec = importlib.util.find_spec(item.package)  # locate without importing (skimage is slow)
    if spec is None or not spec.submodule_search_locations:
        raise StoreError(f"demo image {item.name} needs the package {item.package!r}, which is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / item.relpath
    if not path.is_file():
        raise StoreError(f"demo image {item.name} is missing from the installed {item.package!r}: {path}")
    return path


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("RGBA", "LA", "P"):
        # horse.png is a silhouette on a transparent background: flatten onto white.
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def _materialise(item: DemoImage, media_dir: Path) -> Path:
    """Write the media file if missing (atomically); return its absolute path."""
    dest = media_dir / item.name
    if dest.is_file():
        return dest
    src = _source_path(item)
    fd, tmp = tempfile.mkstemp(dir=media_dir, prefix=".tmp-", suffix=dest.suffix)
    os.close(fd)
    try:
        with Image.open(src) as im:
            if im.format == "JPEG" and im.mode == "RGB" and dest.suffix == ".jpg":
                shutil.copyfile(src, tmp)  # already plain RGB JPEG: no lossy re-encode
            else:
                _to_rgb(im).save(tmp, format="PNG" if dest.suffix == ".png" else "JPEG", quality=95)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def _healthy(dataset: fo.Dataset, expected: dict[str, DemoImage]) -> bool:
    if dataset.media_type != "image" or len(dataset) != len(expected):
        return False
    if (dataset.info or {}).get(_INFO_KEY, {}).get("version") != _FORMAT_VERSION:
        return False
    filepaths = dataset.values("filepath")
    return set(filepaths) == set(expected) and all(os.path.isfile(p) for p in filepaths)


def _build(name: str, expected: dict[str, DemoImage]) -> fo.Dataset:
    dataset = fo.Dataset(name, persistent=True)
    dataset.add_samples([
        fo.Sample(
            filepath=path,
            tags=[item.tag],
            ground_truth=fo.Classification(label=item.label),
            objects=fo.Detections(detections=[fo.Detection(label=item.label, bounding_box=list(item.box))]),
            source=f"{item.package}/{item.relpath}",
        )
        for path, item in expected.items()
    ])
    dataset.compute_metadata()  # width/height let the App and the store check sizes
    # Written last: a build that died half-way has no version and is rebuilt next time.
    dataset.info = {_INFO_KEY: {"version": _FORMAT_VERSION, "source": "images that installed packages ship"}}
    dataset.save()
    return dataset


def ensure_demo_dataset(name: str = DEMO_DATASET_NAME) -> fo.Dataset:
    """The persistent demo dataset, built on first use and rebuilt when broken.

    Missing media files are rewritten from the packages first (so heatmaps and findings
    pushed onto the demo survive); the dataset itself is rebuilt only when its samples
    no longer match the demo images.
    """
    try:
        with _LOCK:
            media_dir = paths.demo_media_dir()
            expected = {str(_materialise(item, media_dir)): item for item in DEMO_IMAGES}
            if fo.dataset_exists(name):
                dataset = fo.load_dataset(name)
                if _healthy(dataset, expected):
                    return dataset
                dataset.delete()
            try:
                return _build(name, expected)
            except ValueError:
                # Another process created it between our check and our build: use theirs if sound.
                if fo.dataset_exists(name) and _healthy(fo.load_dataset(name), expected):
                    return fo.load_dataset(name)
                raise
    except CamError:
        raise
    except Exception as exc:
        raise StoreError(f"could not build the demo dataset {name!r}: {_one_line(exc)}") from exc


def _reachable(host: tuple[str, int], timeout: float = 3.0) -> bool:
    """TCP connect with a hard deadline (DNS included), run in a daemon thread."""
    ok: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection(host, timeout=timeout):
                ok.append(True)
        except OSError:
            pass

    worker = threading.Thread(target=probe, daemon=True)
    worker.start()
    worker.join(timeout)
    return bool(ok)


def load_quickstart() -> fo.Dataset:
    """FiftyOne's zoo "quickstart" (200 images, needs the internet the first time).

    Raises StoreError at once when offline instead of letting the download retry.
    """
    import fiftyone.zoo as foz

    try:
        if fo.dataset_exists(QUICKSTART_NAME):
            return fo.load_dataset(QUICKSTART_NAME)
        try:  # downloaded earlier: loads from disk with no network
            return foz.load_zoo_dataset(QUICKSTART_NAME, download_if_necessary=False, persistent=True)
        except Exception:  # not downloaded (FileNotFoundError) or a partial download
            pass
        if not _reachable(_QUICKSTART_HOST):
            raise StoreError(
                "the FiftyOne quickstart dataset needs the internet (it downloads from "
                f"{_QUICKSTART_HOST[0]}), which is not reachable; use the demo dataset instead"
            )
        return foz.load_zoo_dataset(QUICKSTART_NAME, persistent=True)
    except CamError:
        raise
    except Exception as exc:
        raise StoreError(f"could not load the quickstart dataset: {_one_line(exc)}") from exc
