"""Hardening, fault rows: disk full while writing heatmaps, GPU out of memory in Score-CAM,
MongoDB stopped in the middle of a push."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import fiftyone as fo
import numpy as np
import pytest
import torch

from camcore import perturbation, store
from camcore.errors import CamError
from fo_helpers import make_heatmap, make_result, unique_name, write_images

SIZE = (24, 32)


@pytest.fixture
def dataset(tmp_path):
    files = write_images(tmp_path / "img", ["a.png"], size=SIZE)
    ds = fo.Dataset(unique_name("faults"))
    ds.add_samples([fo.Sample(filepath=p) for p in files])
    ds.compute_metadata()
    yield ds
    ds.delete()


# ---------------------------------------------------------------- disk full


def test_disk_full_while_writing_heatmaps(dataset, full_disk):
    sample = dataset.first()
    result = make_result(SIZE, [make_heatmap(SIZE, "gradcam"), make_heatmap(SIZE, "layercam", seed=1)])
    with pytest.raises(CamError) as err:
        store.push_heatmaps(dataset, sample.id, result, heatmap_dir=full_disk)
    message = str(err.value)
    assert "\n" not in message and "heatmap" in message.lower(), message
    dataset.reload()
    assert not [f for f in dataset.get_field_schema() if f.startswith("cam_")], "a field was written"
    assert not [p for p in full_disk.rglob("*") if p.is_file()], "a partial file was left"
    # Room again: the same push works.
    (full_disk.parent / "filler").unlink()
    fields = store.push_heatmaps(dataset, sample.id, result, heatmap_dir=full_disk)
    dataset.reload()
    assert all(Path(dataset.first()[f].map_path).is_file() for f in fields)


# ---------------------------------------------------------------- GPU out of memory in Score-CAM


class OomAbove(torch.nn.Module):
    """A tiny classifier that raises CUDA's OOM error for batches larger than `limit` after its conv
    (Ablation-CAM's copies of the conv's output go on from there: its input is one image)."""

    def __init__(self, limit: int):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 24, 3, padding=1)
        self.limit, self.sizes = limit, []

    def forward(self, x):
        out = self.conv(x)
        self.sizes.append(out.shape[0])
        if out.shape[0] > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return out.mean(dim=(2, 3))


@pytest.mark.parametrize("weights_fn", [perturbation.score_cam_weights, perturbation.ablation_cam_weights],
                         ids=["scorecam", "ablationcam"])
def test_perturbation_oom_halves_the_batch_with_a_message(monkeypatch, weights_fn):
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)  # no CUDA here
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((1, 3, 16, 16), dtype=np.float32))
    channels = batch = 24  # ablation: the conv's 24
    acts = rng.random((1, channels, 4, 4), dtype=np.float32)

    def target(o):
        return o[2]

    reference = OomAbove(1000)
    plain = weights_fn(reference, reference.conv, x, acts, target, batch_size=batch)
    model, messages = OomAbove(5), []
    model.load_state_dict(reference.state_dict())
    got = weights_fn(model, model.conv, x, acts, target, batch_size=batch, progress=lambda f, m: messages.append(m))
    np.testing.assert_allclose(got, plain, rtol=1e-6, atol=1e-7)
    # the one-image forwards: Ablation-CAM's original score, and the one-channel batch that times a
    # forward; Ablation-CAM's two-copy batches first tell whether its copies can share the trunk
    sizes = [s for s in model.sizes if s not in (1, 2)]
    # after the one-channel batch, the full batch (the channels left), then half of it
    assert sizes[:2] == [batch - 1, batch // 2] and max(model.sizes[-2:]) <= model.limit
    assert any("out of GPU memory" in m and "batch size lowered to" in m for m in messages), messages

    with pytest.raises(torch.cuda.OutOfMemoryError):  # even one image does not fit: the error stays
        broken = OomAbove(0)
        weights_fn(broken, broken.conv, x, acts, target, batch_size=4)


# ---------------------------------------------------------------- MongoDB stopped mid-push

CHILD = textwrap.dedent(
    """
    import json, os, signal, sys
    sys.path[:0] = [os.environ["ROOT"], os.environ["ROOT"] + "/tests"]
    import fiftyone as fo
    from camcore import store
    from camcore.errors import StoreError
    from camcore.store import sampledocs
    from fo_helpers import make_heatmap, make_result, write_images
    from pathlib import Path

    tmp = Path(os.environ["WORK"])
    phase = sys.argv[1]
    size = (24, 32)
    result = make_result(size, [make_heatmap(size, "gradcam"), make_heatmap(size, "layercam", seed=1)])
    if phase == "push":
        files = write_images(tmp / "img", ["a.png"], size=size)
        ds = fo.Dataset("mid push", persistent=True)
        ds.add_samples([fo.Sample(filepath=p) for p in files])
        ds.compute_metadata()
        # Make the set-up durable: SIGKILL may drop writes not yet in the journal (~100 ms), and
        # this test is about the push, not about the samples added just before it.
        import fiftyone.core.odm.database as fodb
        fodb.get_db_client().admin.command("fsync")
        real = sampledocs.write
        calls = []

        def write_then_die(dataset, values):  # one write per field: {sample id: {field: label}}
            calls.append(next(iter(next(iter(values.values())))))
            if len(calls) == 2:  # the first field is written; the database dies before the second
                os.kill(int(os.environ["MONGOD_PID"]), signal.SIGKILL)
            return real(dataset, values)

        sampledocs.write = write_then_die
        try:
            store.push_heatmaps(ds, ds.first().id, result, heatmap_dir=tmp / "maps")
        except StoreError as exc:
            print(json.dumps({"error": str(exc), "fields": calls}))
        else:
            print(json.dumps({"error": None, "fields": calls}))
    else:
        import cv2
        import numpy as np

        ds = fo.load_dataset("mid push")
        maps = {h.field: h.map for h in result.heatmaps}

        def state(field):
            # absent | whole (the file of the map pushed) | dangling (no file) | partial (another)
            sample = ds.first()
            value = sample[field] if ds.get_field(field) is not None else None
            if value is None:
                return "absent"
            if not value.map_path or not Path(value.map_path).is_file():
                return "dangling"
            png = cv2.imread(value.map_path, cv2.IMREAD_UNCHANGED)
            if png is None or png.shape != size or png.dtype != np.uint16:
                return "partial"
            same = np.abs(png / 65535.0 - maps[field]).max() <= 1 / 65535 + 1e-6
            return "whole" if same else "partial"

        before = {"samples": len(ds), **{f: state(f) for f in maps}}
        fields = store.push_heatmaps(ds, ds.first().id, result, heatmap_dir=tmp / "maps")
        ds.reload()
        after = {"fields": sorted(fields), **{f: state(f) for f in maps}}
        print(json.dumps({"before": before, "after": after}))
    """
)


def _start_private_mongod(tmp: Path, port: int) -> subprocess.Popen:
    from mongod_support import start_mongod

    return start_mongod(tmp, port=port)[0]


def _child(tmp: Path, port: int, pid: int, phase: str) -> dict:
    import json

    env = {**os.environ, "FIFTYONE_DATABASE_URI": f"mongodb://127.0.0.1:{port}/?serverSelectionTimeoutMS=3000", "ROOT": str(Path(__file__).parents[1]),
           "WORK": str(tmp), "MONGOD_PID": str(pid), "FIFTYONE_DATABASE_NAME": "mid-push"}
    proc = subprocess.run([sys.executable, "-c", CHILD, phase], env=env, capture_output=True, text=True, timeout=240)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert lines, f"child failed ({proc.returncode}): {proc.stderr[-3000:]}"
    return json.loads(lines[-1])


@pytest.mark.slow
def test_mongod_killed_mid_push_then_restarted(tmp_path):
    from mongod_support import free_port, stop_mongod

    port = free_port()
    mongod = _start_private_mongod(tmp_path, port)
    try:
        out = _child(tmp_path, port, mongod.pid, "push")
        mongod.wait(timeout=30)
        error, written = out["error"], out["fields"]
        assert error and "\n" not in error and "database" in error, error
        assert len(written) == 2, written  # the labels' write was entered for both fields; mongod died in the 2nd
        mongod = _start_private_mongod(tmp_path, port)  # same dbpath, same port
        out = _child(tmp_path, port, mongod.pid, "retry")
        before, after = out["before"], out["after"]
        assert before["samples"] == 1, out  # the (fsync'd) sample survived: the states below are real
        # The field written before the kill: absent (not journalled yet) or the whole map pushed,
        # never a label without its file or with another map.
        assert before[written[0]] in ("absent", "whole"), out
        # The field whose write the kill interrupted was never sent: nothing of it exists.
        assert before[written[1]] == "absent", out
        # The retry writes both, each pointing at the whole map it was pushed with.
        assert after["fields"] == sorted(written) and after[written[0]] == after[written[1]] == "whole", out
        print(f"error: {error}; fields after restart: {out['before']}")
    finally:
        stop_mongod(mongod, disconnect_fiftyone=False)  # this process talks to the session's mongod
