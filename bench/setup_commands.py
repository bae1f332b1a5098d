"""Which MongoDB commands a push and a batch's set-up send at 5 and at 500 CAM fields, with the
bytes sent and returned and each one's round trip (issue 22 item 1): a pymongo CommandListener
around bench/scale.py's own steps (its datasets, its `--raw-drop` repeats), the third repeat shown.

    .venv/bin/python bench/setup_commands.py --fields 5,500
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import bson
from pymongo import monitoring

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scale  # noqa: E402  (beside this file; it puts camcore and tests/ on the path)

SHOWN = 2  # the repeat shown: warm


class Recorder(monitoring.CommandListener):
    def __init__(self) -> None:
        self.on = False
        self.rows: list[list] = []
        self._sent: dict[int, list] = {}

    def started(self, event) -> None:
        if self.on:
            target = event.command.get(event.command_name)
            self._sent[event.request_id] = [event.command_name, target if isinstance(target, str) else "",
                                            len(bson.encode(event.command)), 0, 0.0]

    def succeeded(self, event) -> None:
        row = self._sent.pop(event.request_id, None)
        if row is not None:
            row[3], row[4] = len(bson.encode(event.reply)), event.duration_micros / 1000
            self.rows.append(row)

    def failed(self, event) -> None:
        self._sent.pop(event.request_id, None)


RECORDER = Recorder()
monitoring.register(RECORDER)
SEEN: dict[tuple[str, int], list] = {}


def watched(step: str, fn):
    def run(ds, rep: int) -> float:
        fields = len([f for f in ds._doc._data["sample_fields"] if f.name.startswith("cam_")])
        RECORDER.on, RECORDER.rows = rep == SHOWN, []
        try:
            return fn(ds, rep)
        finally:
            if rep == SHOWN:
                SEEN[(step, fields)] = RECORDER.rows
            RECORDER.on = False
    return run


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fields", default="5,500")
    args = ap.parse_args(argv)
    folder, mongod = scale.bench_database(None, "setup-commands-")
    scale.time_push = watched("push", scale.time_push)
    scale.time_batch_setup = watched("batch set-up", scale.time_batch_setup)
    try:
        scale.run_fields([int(x) for x in args.fields.split(",")], SHOWN + 1, folder / "images", raw_drop=True)
    finally:
        if mongod is not None:
            from mongod_support import stop_mongod

            stop_mongod(mongod)
    for (step, fields), rows in sorted(SEEN.items()):
        total = defaultdict(float)
        print(f"\n{step} at {fields} CAM fields: {len(rows)} commands")
        for name, coll, sent, back, ms in rows:
            print(f"  {name:<16} {coll:<28} sent {sent:>7,} B  back {back:>7,} B  {ms:6.2f} ms")
            total["sent"] += sent
            total["back"] += back
            total["ms"] += ms
        print(f"  in all: sent {total['sent']:,.0f} B, back {total['back']:,.0f} B, {total['ms']:.2f} ms round trips")


if __name__ == "__main__":
    main()
