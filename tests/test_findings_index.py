"""Issue 23 design 5: the Findings page's reads (labels, the view of some, its count, a page) read
the samples that hold findings through the index on their labels, never every sample: asserted on
MongoDB's own profiler (documents examined, plans), not on time. bench/findings.py measures it at
10^6 samples."""
from __future__ import annotations

import fiftyone as fo
from fo_helpers import unique_name, write_images

from camcore.store import findings

SAMPLES = 400
WITH_FINDINGS = 6


def test_the_findings_pages_reads_examine_only_samples_with_findings(tmp_path):
    [path] = write_images(tmp_path, ["a.png"])
    ds = fo.Dataset(unique_name("findings-index"))
    ds.add_samples([fo.Sample(filepath=path) for _ in range(SAMPLES)])
    ids = ds.values("id")
    for i in range(WITH_FINDINGS):
        findings.add_finding(ds, ids[i * (SAMPLES // WITH_FINDINGS)], ("bias", "watermark")[i % 2], note=f"n{i}")
    db = ds._sample_collection.database
    labels = findings.finding_labels(ds)  # makes the index: not profiled
    assert labels == ["bias", "watermark"]
    db.command("profile", 2)
    try:
        view = findings.findings_view(ds, ["bias"])
        total = findings.count_findings(view)
        rows = findings.list_findings(view, skip=0, limit=20)
        again = findings.finding_labels(ds)
    finally:
        db.command("profile", 0)
    try:
        ops = [op for op in db["system.profile"].find({"ns": f"{db.name}.{ds._sample_collection_name}"})]
        assert (total, len(rows), again) == (3, 3, labels)
        assert {r["tag"] for r in rows} == {"bias"} and all(r["note"] for r in rows)
        assert ops, "nothing profiled"
        scans = [op.get("planSummary") for op in ops if "COLLSCAN" in str(op.get("planSummary"))]
        assert not scans, f"{len(scans)} of {len(ops)} reads scanned every sample"
        examined = sum(int(op.get("docsExamined", 0)) for op in ops)
        assert examined <= len(ops) * WITH_FINDINGS, f"{examined} documents examined by {len(ops)} reads"
    finally:
        db["system.profile"].drop()
        ds.delete()
