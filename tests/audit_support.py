"""A dataset with synthetic stored measures (no model pass): what a batch with measures leaves,
built in milliseconds for the Audit tests."""
from __future__ import annotations

import shutil
from pathlib import Path

import fiftyone as fo
import numpy as np
from cam_support import skimage_data
from fo_helpers import coded_identity, unique_name

from camcore.identity import HeatmapIdentity
from camcore.store import measures as measure_store

IDENTITY = coded_identity(model="efficientnet_lite0", method="gradcam", layer="head", target="predicted")
CLASSES = ("cat", "cup", "person")
ABOUT = "t=0.5;obj=objects;f=1"


def audited_dataset(folder: Path, n: int = 60, seed: int = 0, about: str = ABOUT) -> tuple[fo.Dataset, dict]:
    """n samples (one image each, repeated), heatmap labels with a class, and measures:
    (dataset, {measure: field})."""
    folder.mkdir(parents=True, exist_ok=True)
    image = folder / "chelsea.png"
    shutil.copy(skimage_data("chelsea.png"), image)
    rng = np.random.default_rng(seed)
    ds = fo.Dataset(unique_name("audit"))
    ds.add_samples([fo.Sample(filepath=str(image)) for _ in range(n)])
    return ds, add_run(ds, IDENTITY, seed, about)


def add_run(ds: fo.Dataset, identity: HeatmapIdentity, seed: int = 0, about: str = ABOUT) -> dict:
    """Synthetic heatmap labels and measures of one more run; {measure: field}."""
    rng = np.random.default_rng(seed)
    n = len(ds)
    fields = measure_store.declare_measure_fields(ds, identity)
    ids = ds.values("id")
    classes = [CLASSES[i % len(CLASSES)] for i in range(n)]
    ds.set_values(identity.field_name, [fo.Heatmap(map=np.zeros((4, 4), np.uint8), target=c) for c in classes])
    share = rng.random(n).round(4)
    values = {
        "share": share.tolist(), "bg": (share < 0.5).tolist(), "conf": rng.random(n).round(4).tolist(),
        "score": rng.normal(size=n).tolist(), "keep": rng.normal(size=n).tolist(),
        "remove": rng.normal(size=n).tolist(), "about": [about] * n,
    }
    measure_store.write_measures(ds, {fields[m]: dict(zip(ids, v, strict=True)) for m, v in values.items()})
    return fields
