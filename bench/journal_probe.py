"""What MongoDB's journal takes for one update of a document that grows (issue 22 item 1).

A throw-away mongod (tests/mongod_support.py) holds one document shaped like a FiftyOne dataset
document at N CAM fields (N schema entries of ~1 kB, N registry entries, N colour scales, a sidebar
group of N paths). For each kind of update, five of them: WiredTiger's "log bytes written" per
update (the journal, snappy-compressed by default) and its cursor calls (`modify` = a delta,
`update` = the record written whole), from serverStatus.

    .venv/bin/python bench/journal_probe.py --fields 5,50,500
"""
from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
from pathlib import Path

import bson
import pymongo

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from mongod_support import start_mongod, stop_mongod  # noqa: E402

REPEATS = 5


def entry(i: int) -> dict:
    """A compact heatmap schema entry: about the size of the real one (~1.4 kB with its sub-fields)."""
    subs = [{"name": f"sub{j}", "ftype": "fiftyone.core.fields.StringField", "db_field": f"sub{j}"}
            for j in range(7)]
    return {"name": f"cam_{i:05d}", "ftype": "fiftyone.core.fields.EmbeddedDocumentField",
            "embedded_doc_type": "fiftyone.core.labels.Heatmap", "db_field": f"cam_{i:05d}",
            "fields": subs, "description": f"GradCAM on layer{i % 4} of model {i}, " + "d" * 100}


def document(n: int) -> dict:
    names = [f"cam_{i:05d}" for i in range(n)]
    return {"_id": 1, "name": "ds", "sample_fields": [entry(i) for i in range(n)],
            "info": {"reg": {name: {"meaning": "gradcam"} for name in names}},
            "app_config": {"colorscales": [{"path": p, "name": "jet"} for p in names],
                           "groups": [{"name": "cams", "paths": names}]},
            "last_modified_at": datetime.datetime.utcnow(), "pad": "a" * 64}


def updates(n: int):
    """(label, update for repeat k): one new field appended, a same-size change, a set-up's update."""
    now = datetime.datetime.utcnow

    def setup(k: int) -> dict:
        new = [f"new{k}_{i}" for i in range(3)]
        return {"$set": {**{f"sample_fields.{n + 3 * k + i}": entry(10_000 + 3 * k + i) for i in range(3)},
                         **{f"info.reg.{p}": {"meaning": "gradcam"} for p in new}, "last_modified_at": now()},
                "$push": {"app_config.colorscales": {"$each": [{"path": p, "name": "jet"} for p in new]},
                          "app_config.groups.0.paths": {"$each": new}}}

    return [
        ("same size: $set last_modified_at and a 64-char string", lambda k: {
            "$set": {"last_modified_at": now(), "pad": chr(98 + k) * 64}}),
        ("grows: a set-up's update (3 entries appended, registry, App config)", setup),
        ("shrinks: $unset of one registry entry", lambda k: {"$unset": {f"info.reg.cam_{k:05d}": ""}}),
    ]


def probe(coll, db, n: int) -> None:
    def stats() -> tuple[int, int, int]:
        wt = db.command("serverStatus")["wiredTiger"]
        return (wt["log"]["log bytes written"], wt["cursor"]["cursor modify calls"],
                wt["cursor"]["cursor update calls"])

    coll.drop()
    doc = document(n)
    coll.insert_one(doc)
    print(f"{n} fields: document {len(bson.encode(doc)) / 1e3:.0f} kB")
    for label, update in updates(n):
        before = stats()
        for k in range(REPEATS):
            coll.update_one({"_id": 1}, update(k))
        after = stats()
        print(f"  {label}: journal {(after[0] - before[0]) / REPEATS:,.0f} B an update; "
              f"WiredTiger modify calls {after[1] - before[1]}, update calls {after[2] - before[2]}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fields", default="5,50,500")
    args = parser.parse_args(argv)
    proc, uri = start_mongod(Path(tempfile.mkdtemp(prefix="journal-probe-")))
    try:
        client = pymongo.MongoClient(uri)
        db = client.probe
        print("mongod", db.command("buildInfo")["version"])
        for n in (int(x) for x in args.fields.split(",")):
            probe(db.doc, db, n)
        client.close()
    finally:
        stop_mongod(proc, disconnect_fiftyone=False)


if __name__ == "__main__":
    main()
