"""Issue 24: a detector's batch with several box rules (top:<k>, a field's boxes) runs one forward
per image, kept with its graph, and one backward per box for the gradient methods; the stored maps
equal a fresh pass's per box. Real FiftyOne (the tests' own mongod), SSDlite untrained on the CPU."""
from __future__ import annotations

import numpy as np
import pytest
from detector_support import PassCounter
from fo_helpers import unique_name
from PIL import Image

from camcore import batch
from camcore.engine import Explainer
from camcore.images import load_image
from camcore.measures import MeasureOptions
from camcore.models import load_model
from camcore.store import measures as measure_store

SSD = "ssdlite320_mobilenet_v3_large"
METHODS = ("gradcam", "eigencam")
LAYERS = ("fpn", "features1")


def _images(folder) -> list[str]:
    paths = []
    for i in range(2):
        rng = np.random.default_rng(i)
        rgb = (rng.random((96, 128, 3)) * 60).astype(np.uint8)
        rgb[20 + 10 * i:60, 30:90 - 10 * i] = (220, 40, 40)
        paths.append(str(folder / f"s{i}.png"))
        Image.fromarray(rgb).save(paths[-1])
    return paths


def test_top3_over_two_images_runs_two_forwards_and_one_backward_per_box(tmp_path, monkeypatch):
    import fiftyone as fo

    paths = _images(tmp_path)
    ds = fo.Dataset(unique_name("det-boxes"))
    ds.add_samples([fo.Sample(filepath=p) for p in paths])
    model = load_model(SSD, "untrained", "cpu")  # the one the batch loads (models load once per process)
    pushed: list = []
    push = batch.BatchRun.push

    def recorded(self, items):
        pushed.extend(items)
        return push(self, items)
    monkeypatch.setattr(batch.BatchRun, "push", recorded)
    options = batch.BatchOptions(model=SSD, weights="untrained", methods=METHODS, layers=LAYERS, device="cpu",
                                 heatmap_dir=str(tmp_path / "hm"), measures=MeasureOptions())
    try:
        runs = batch.box_batches(ds, options, "top:3@0")
        assert [str(r.target_rule) for r in runs] == ["det:0@0", "det:1@0", "det:2@0"]
        passes = PassCounter(model.module, monkeypatch)
        try:
            report = batch.run_batches(ds, runs)
        finally:
            passes.handle.remove()
        assert report.done == 6 and not report.failed and len(report.fields) == 3 * len(METHODS) * len(LAYERS)
        assert passes.images == 2, f"top:3 over 2 images: one forward per image, not {passes.images}"
        assert passes.backwards == 6, "one backward per box (Grad-CAM; Eigen-CAM needs none)"
        # the stored maps are a fresh pass's per box, to 1e-5
        by_id = {s.id: s.filepath for s in ds}
        assert len(pushed) == 6
        for sid, result in pushed:
            rule = result.heatmaps[0].identity.target
            fresh = Explainer(model, load_image(by_id[sid]), rule, LAYERS)
            assert fresh.target.box_ref == result.target.box_ref and fresh.target.boxes == result.target.boxes
            for h in result.heatmaps:
                want, what = fresh.heatmap(h.method, h.layer), f"{rule} {h.method} {h.layer}"
                np.testing.assert_allclose(h.raw, want.raw, atol=1e-5, rtol=1e-5, err_msg=what)
                np.testing.assert_allclose(h.map, want.map, atol=1e-5, err_msg=what)
        # every rule's measures are stored beside its maps (the explained box's score as conf)
        runs_measured = measure_store.measure_runs(ds)
        assert len(runs_measured) == len(report.fields)
        for sample in ds:
            for heatmap, fields in runs_measured.items():
                assert sample[fields["conf"]] == pytest.approx(sample[heatmap].box_score), heatmap
        # each rule's fields resume on their own
        again = batch.run_batches(ds, runs)
        assert again.done == 0 and again.skipped == 6, again.to_dict()
    finally:
        ds.delete()
