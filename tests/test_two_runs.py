"""Two heatmap runs side by side (camcore.store.audit.most_changed / class_changes) on the demo set:
a trained EfficientNet-Lite0 against its untrained twin, measured on the demo's object boxes."""
from __future__ import annotations

import pytest
from fo_helpers import unique_name

from camcore import batch, demo_data
from camcore.batch import BatchOptions
from camcore.errors import StoreError
from camcore.measures import MeasureOptions
from camcore.store import audit

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def twins():
    ds = demo_data.ensure_demo_dataset().clone(unique_name("twins"))
    measures = MeasureOptions(object_field="objects", faithfulness=False, object_label="*")
    for weights in ("auto", "untrained"):
        report = batch.run_batch(ds, BatchOptions("efficientnet_lite0", weights=weights, methods=["gradcam"],
                                                  layers=["head"], measures=measures))
        assert not report.failed
    runs = {r.heatmap: r for r in audit.runs(ds)}
    (untrained,) = [r for name, r in runs.items() if name.endswith("_untr")]
    (trained,) = [r for name, r in runs.items() if not name.endswith("_untr")]
    yield ds, untrained, trained
    ds.delete()


def test_the_trained_model_looks_at_the_object_more_than_its_untrained_twin(twins):
    ds, untrained, trained = twins
    changes = audit.most_changed(ds, untrained, trained)
    assert len(changes) == audit.count_both(ds, untrained, trained) > 0
    sizes = [abs(c.change) for c in changes]
    assert sizes == sorted(sizes, reverse=True)  # most changed first
    shares = {c.sample_id: (c.share_a, c.share_b) for c in changes}
    first = changes[0]
    assert (first.share_a, first.share_b) == shares[first.sample_id]
    mean_a = sum(a for a, _ in shares.values()) / len(shares)
    mean_b = sum(b for _, b in shares.values()) / len(shares)
    assert mean_b > mean_a  # trained: more of the heatmap on the object
    rows = audit.class_changes(ds, untrained, trained)
    assert sum(n for _c, n, _m, _b, _w in rows) == len(changes)
    assert sum(b for *_x, b, _w in rows) > sum(w for *_x, w in rows)  # more classes got better than worse
    with pytest.raises(StoreError, match="two different heatmap runs"):
        audit.most_changed(ds, trained, trained)
