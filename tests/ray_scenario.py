"""A real local Ray cluster with two workers and a real mongod, all on loopback.

Run by tests/test_distributed.py inside a private network namespace (`unshare -n`) that holds
loopback and, where it can be made, one veth pair whose peer stays inside plus a default route
(NETNS): Ray finds an "interface address" it could bind, but no packet can leave. Its database
URI carries a password (a user made on the throw-away mongod), so the scenario also shows that the
local Ray listens on loopback only and that its logs never hold the password. Prints one JSON object
with what happened; the test asserts on it.

    unshare -n sh -c '<NETNS> exec .venv/bin/python tests/ray_scenario.py'   (as test_distributed.py does)
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

MODEL = "efficientnet_lite0"
METHODS = ["gradcam", "eigencam"]
SECRET = "hunter2-s3cret"  # the database password that no Ray log may hold

# Shell commands making the namespace's interfaces (loopback, and a veth pair with a default route);
# LOOPBACK_ONLY where veth pairs cannot be made.
LOOPBACK_ONLY = "ip link set lo up && "
NETNS = (LOOPBACK_ONLY + "ip link add cam0 type veth peer name cam1 && "
         "ip addr add 10.213.0.2/24 dev cam0 && ip link set cam0 up && ip link set cam1 up && "
         "ip route add default via 10.213.0.1 && ")


def _photos(folder: Path, n: int) -> list[str]:
    """n different photos (skimage's, cropped and flipped) as JPEG files."""
    import cv2
    import numpy as np
    from cam_support import skimage_data
    from PIL import Image

    folder.mkdir(parents=True)
    sources = []
    for name in ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg"):
        with Image.open(skimage_data(name)) as im:
            sources.append(np.asarray(im.convert("RGB")))
    out = []
    for i in range(n):
        img = sources[i % len(sources)][(i // 4) * 11:, :: -1 if (i // 4) % 2 else 1]
        path = folder / f"photo{i:02d}.jpg"
        assert cv2.imwrite(str(path), np.ascontiguousarray(img[..., ::-1]))
        out.append(str(path))
    return out


def _worker_pids() -> list[int]:
    import psutil

    return [p.pid for p in psutil.process_iter(["cmdline"])
            if any("ray::_Worker" in part for part in (p.info["cmdline"] or []))]


def _gone(pids, seconds: float = 30) -> list[int]:
    """pids() once it is empty, or what is left after `seconds` (ended processes take a moment)."""
    deadline = time.monotonic() + seconds
    while (left := pids()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def _ray_initialized() -> bool:
    import ray

    return ray.is_initialized()


def _with_a_password(uri: str) -> str:
    """The URI of a user with a password, made on the fresh mongod (it runs without --auth, yet a
    client that gives a user and password is authenticated)."""
    from pymongo import MongoClient

    with MongoClient(uri) as client:
        client.admin.command("createUser", "alice", pwd=SECRET, roles=["root"])
    return uri.replace("mongodb://", f"mongodb://alice:{SECRET}@", 1) + "/?authSource=admin"


def _network(ray) -> dict:
    """What a worker of the local Ray takes for its node's address and database URI, and every
    address the namespace listens on while it is up (mongod's included)."""

    @ray.remote(num_cpus=0)
    class Probe:
        def node(self):
            return ray.util.get_node_ip_address(), os.environ.get("FIFTYONE_DATABASE_URI")

    probe = Probe.remote()
    node, uri = ray.get(probe.node.remote(), timeout=120)
    ray.kill(probe)
    listening = subprocess.run(["ss", "-ltnuH"], capture_output=True, text=True).stdout.splitlines()
    return {"node": node, "worker_uri": uri, "uri": os.environ["FIFTYONE_DATABASE_URI"],
            "listening": [ln.split()[4] for ln in listening if ln.strip()]}


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="cam-ray-"))
    os.environ.update(FIFTYONE_DO_NOT_TRACK="true", FIFTYONE_DATABASE_VALIDATION="false",
                      CAM_EXPLORER_HOME=str(tmp / "home"), RAY_USAGE_STATS_ENABLED="0")
    from mongod_support import start_mongod, stop_mongod

    mongod, plain = start_mongod(tmp / "mongo")
    session = ""
    out: dict = {}
    clock = [time.perf_counter()]

    def lap(step: str) -> None:  # each step's seconds, printed with the result: where the time goes
        now = time.perf_counter()
        out.setdefault("seconds", {})[step] = round(now - clock[0], 1)
        clock[0] = now

    try:
        os.environ["FIFTYONE_DATABASE_URI"] = _with_a_password(plain)
        import fiftyone as fo
        import numpy as np

        from camcore import batch, distributed, store
        from camcore.batch import BatchOptions
        from camcore.engine import Explainer
        from camcore.images import load_image
        from camcore.models import load_model

        ds = fo.Dataset("ray-scenario")
        ds.add_samples([fo.Sample(filepath=p) for p in _photos(tmp / "media", 12)])
        ids = ds.values("id")
        lap("setup")

        # 1. One process does 3 samples first: the workers must skip them.
        batch.run_batch(ds.select(ids[:3]), BatchOptions(MODEL, methods=METHODS, chunk=2))

        # 2. Two Ray workers do the rest, in shards of 2.
        lap("1 one process")
        ticks = []
        first = distributed.run_batch_distributed(
            ds, BatchOptions(MODEL, methods=METHODS, chunk=2), workers=2, shard_size=2,
            progress=lambda *a: ticks.append(a[:2]))
        out["first"] = first.to_dict()
        out["ticks"] = ticks
        lap("2 own ray")
        ds.reload()
        fields = sorted(first.fields)
        out["labels_with_files"] = {
            f: sum(1 for label in ds.values(f) if label is not None and os.path.isfile(label.map_path))
            for f in fields}
        folder = store.heatmap_path(ds.name, fields[0], "x").parent
        out["files"] = len(list(folder.glob("*.png")))

        # The workers' maps equal this process's, sample by sample (16-bit PNG precision).
        model = load_model(MODEL, "auto")
        field = BatchOptions(MODEL).checked().identity("gradcam", model.spec.default_layer).field_name
        diffs = []
        # A third of the samples, from every part of the view (a map takes a second on two busy cores).
        for sid, path, label in list(zip(*ds.values(["id", "filepath", field])))[::3]:
            mine = Explainer(model, load_image(path), None, (model.spec.default_layer,))
            h = mine.heatmap("gradcam", model.spec.default_layer)
            stored = store.read_heatmap(ds, sid, field)
            diffs.append(float(np.abs(stored - h.map).max()))
            assert label.target == mine.target.name, (label.target, mine.target.name)
        out["max_diff"] = max(diffs)
        out["targets"] = sorted(set(ds.values(f"{field}.target")))

        lap("2 checks")
        # The run's local Ray is kept for this process's next runs, with both workers warm: runs
        # 3-5 start on them (one start-up per run would cost minutes on 2 cores).
        out["kept_after_first"] = {"ray": _ray_initialized(), "workers": sorted(_worker_pids())}
        import ray

        session = ray._private.worker.global_worker.node.get_session_dir_path()
        out["network"] = _network(ray)

        lap("network")
        # 4. A worker killed mid-run (SIGKILL): the other finishes, the lost shard is reported,
        #    and a rerun completes it. Nothing reported done is lost; no label without its file.
        redo = ds.clone("ray-scenario-redo")
        killed = threading.Event()

        def kill_one(done, total, *_):
            if done >= 2 and not killed.is_set():
                pids = _worker_pids()
                if pids:
                    os.kill(pids[0], signal.SIGKILL)
                    killed.set()

        third = distributed.run_batch_distributed(
            redo, BatchOptions(MODEL, methods=["gradcam++"], chunk=2), workers=2, shard_size=2, progress=kill_one)
        out["killed"] = killed.is_set()
        out["third"] = third.to_dict()
        pp_field = BatchOptions(MODEL).checked().identity("gradcam++", model.spec.default_layer).field_name
        redo.reload()
        labels = redo.values(pp_field)
        out["after_kill_with_label"] = sum(label is not None for label in labels)
        out["after_kill_label_without_file"] = sum(
            1 for label in labels if label is not None and not os.path.isfile(label.map_path))
        # The rerun: the surviving warm worker and one new one finish what the dead one left.
        fourth = distributed.run_batch_distributed(
            redo, BatchOptions(MODEL, methods=["gradcam++"], chunk=2), workers=2, shard_size=2)
        out["fourth"] = fourth.to_dict()
        redo.reload()
        out["after_rerun_with_label"] = sum(
            1 for label in redo.values(pp_field) if label is not None and os.path.isfile(label.map_path))

        lap("4 kill + rerun")
        # 5. Re-batch (labels no longer match, so every map is replaced) with a worker killed
        #    mid-run: each label keeps the file it was written with (old or new), never another's;
        #    a rerun finishes and leaves only files that labels reference.
        import re

        before = dict(zip(*redo.values(["id", f"{pp_field}.map_path"])))
        out["worker_names_ok"] = all(re.fullmatch(rf"{sid}-[0-9a-f]+\.png", os.path.basename(p))
                                     for sid, p in before.items())
        redo.set_values(f"{pp_field}.eigen_smooth", [True] * len(redo))
        killed.clear()
        fifth = distributed.run_batch_distributed(
            redo, BatchOptions(MODEL, methods=["gradcam++"], chunk=2), workers=2, shard_size=2, progress=kill_one)
        out["rekilled"] = killed.is_set()
        out["fifth"] = fifth.to_dict()
        redo.reload()
        mixed = []
        for sid, label in zip(*redo.values(["id", pp_field])):
            same = label.map_path == before[sid]
            mixed.append({"file": os.path.isfile(label.map_path), "old": same,
                          "consistent": label.eigen_smooth if same else not label.eigen_smooth})
        out["after_rekill"] = mixed
        # One process finishes (no second Ray start): it settles the dead worker's journal first.
        sixth = batch.run_batch(redo, BatchOptions(MODEL, methods=["gradcam++"], chunk=2))
        out["sixth"] = sixth.to_dict()
        redo.reload()
        referenced = set(redo.values(f"{pp_field}.map_path"))
        pp_folder = store.heatmap_path(redo.name, pp_field, "x").parent
        out["after_rebatch_files_match"] = {str(p) for p in pp_folder.glob("*.png")} == referenced and all(
            os.path.isfile(p) for p in referenced)
        lap("5 rekill + finish")
    finally:
        from camcore import distributed

        distributed.shutdown()  # the kept local Ray and its workers
        out["after_shutdown"] = {"ray": _ray_initialized(), "workers": _gone(_worker_pids)}
        if session:  # what Ray wrote (logs, the runtime env) over runs 2-5
            logged = subprocess.run(["grep", "-rl", SECRET, session], capture_output=True, text=True)
            out["files_with_the_password"] = logged.stdout.split()
        stop_mongod(mongod)
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
