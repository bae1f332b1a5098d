"""The embedded demo dataset, built offline from photos that installed packages ship.

Never imports streamlit and never downloads. The media are copied (as plain 8-bit RGB)
into ``paths.demo_media_dir()`` so the dataset never points into site-packages.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

import fiftyone as fo
from PIL import Image

from camcore import files, paths
from camcore.errors import CamError, StoreError, first_line

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
    with files.replacing(dest) as tmp, Image.open(src) as im:
        if im.format == "JPEG" and im.mode == "RGB" and dest.suffix == ".jpg":
            shutil.copyfile(src, tmp)  # already plain RGB JPEG: no lossy re-encode
        else:
            _to_rgb(im).save(tmp, format="PNG" if dest.suffix == ".png" else "JPEG", quality=95)
    return dest


def _source(item: DemoImage) -> str:
    return f"{item.package}/{item.relpath}"


def _demo_sample(path: str, item: DemoImage) -> fo.Sample:
    return fo.Sample(
        filepath=path,
        tags=[item.tag],
        ground_truth=fo.Classification(label=item.label),
        objects=fo.Detections(detections=[fo.Detection(label=item.label, bounding_box=list(item.box))]),
        source=_source(item),
    )


def _ours(dataset: fo.Dataset) -> bool:
    """Built by us: it carries our info key, or (a build that died before writing it) every
    sample is a demo image."""
    if _INFO_KEY in (dataset.info or {}):
        return True
    if not dataset.has_sample_field("source"):
        return len(dataset) == 0
    sources = {_source(item) for item in DEMO_IMAGES}
    return all(src in sources for src in dataset.values("source"))


def _healthy(dataset: fo.Dataset, expected: dict[str, DemoImage]) -> bool:
    if (dataset.info or {}).get(_INFO_KEY, {}).get("version") != _FORMAT_VERSION:
        return False
    filepaths = set(dataset.values("filepath"))
    return all(path in filepaths for path in expected)  # the user's own extra samples are fine


def _repair(dataset: fo.Dataset, expected: dict[str, DemoImage]) -> None:
    """Bring the demo images back in place: re-point demo samples whose media moved (another
    CAM_EXPLORER_HOME, a file changed by hand), add the missing ones. Sample ids, pushed
    heatmaps, findings and the user's own samples all stay."""
    by_source = {_source(item): path for path, item in expected.items()}
    by_name = {Path(path).name: path for path in expected}
    ids, filepaths = dataset.values(["id", "filepath"])
    sources = dataset.values("source") if dataset.has_sample_field("source") else [None] * len(ids)
    present: set[str] = set()
    moves: dict[str, str] = {}
    for sid, filepath, source in zip(ids, filepaths, sources, strict=True):
        # A sample is a demo image by its source; by name only when its own file is gone.
        want = by_source.get(source) or (None if os.path.isfile(filepath) else by_name.get(Path(filepath).name))
        if want is None or want in present:
            continue
        present.add(want)
        if filepath != want:
            moves[sid] = want
    if moves:
        dataset.set_values("filepath", moves, key_field="id")
        dataset.select(list(moves)).compute_metadata(overwrite=True)
    missing = [path for path in expected if path not in present]
    if missing:
        dataset.add_samples([_demo_sample(path, expected[path]) for path in missing])
    dataset.compute_metadata()  # width/height let the App and the store check sizes
    # Written last: a repair that died half-way is redone next time.
    dataset.info = {**(dataset.info or {}),
                    _INFO_KEY: {"version": _FORMAT_VERSION, "source": "images that installed packages ship"}}
    dataset.save()


def ensure_demo_dataset(name: str = DEMO_DATASET_NAME) -> fo.Dataset:
    """The persistent demo dataset, built on first use and repaired in place when broken.

    Missing media files are rewritten from the packages, missing demo samples are added and
    moved ones re-pointed, so heatmaps and findings pushed onto the demo (and samples the user
    added) survive. A dataset of that name that we did not build is never touched.
    """
    try:
        with _LOCK:
            media_dir = paths.demo_media_dir()
            expected = {str(_materialise(item, media_dir)): item for item in DEMO_IMAGES}
            if fo.dataset_exists(name):
                dataset = fo.load_dataset(name)
                if not _ours(dataset) or dataset.media_type not in ("image", None):
                    raise StoreError(
                        f"a dataset named {name!r} exists that CAM Explorer did not build; it is left "
                        "untouched. Pick it in the sidebar's dataset list, or rename it to get the demo back"
                    )
                if not _healthy(dataset, expected):
                    _repair(dataset, expected)
                return dataset
            try:
                dataset = fo.Dataset(name, persistent=True)
            except ValueError:
                # Another process created it between our check and ours: use theirs, repaired.
                dataset = fo.load_dataset(name)
            _repair(dataset, expected)
            return dataset
    except CamError:
        raise
    except Exception as exc:
        raise StoreError(f"could not build the demo dataset {name!r}: {first_line(exc)}") from exc


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
        raise StoreError(f"could not load the quickstart dataset: {first_line(exc)}") from exc
