"""Batch past one process: Ray workers sharing one MongoDB and one heatmap storage.

The driver checks the options (camcore.batch.BatchOptions), declares the fields (so that no
two writers ever extend a schema at once), cuts the view into shards (ranges of sample ids, found
one boundary at a time as shards are handed out) and hands them to a pool of Ray actors with the
view's own stages and the same options. Each actor holds its model (on its own GPU when the
cluster has GPUs) and runs :func:`camcore.batch.run_batch` on one shard at a time, so resuming,
bulk writes and the file-then-field order are exactly those of one process; shards are disjoint, and orphan
clean-up only touches files of writers that are gone, that no label of any dataset references.

Ray is imported only here, and only when used. ``address=None`` starts a local Ray on this
machine; ``"auto"`` or ``"ray://head:10001"`` joins a running cluster, whose nodes need this
project at the same path and its Python environment, and must reach the MongoDB
(FIFTYONE_DATABASE_URI) and the heatmap folder (shared storage) named here.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from camcore import paths, ray_pool, store
from camcore import weights as weights_mod
from camcore.batch import BatchOptions, BatchReport, declare_fields, run_batch
from camcore.errors import CamError, first_line
from camcore.progress import BatchProgress, Meter
from camcore.store import scan
from camcore.store.scan import Collection, Shards, database_uri

ROOT = Path(__file__).resolve().parents[1]
# Environment the workers need to see what the driver sees (a remote node has its own).
FORWARDED_ENV = ("FIFTYONE_DATABASE_NAME", "FIFTYONE_DO_NOT_TRACK", "FIFTYONE_DATABASE_VALIDATION",
                 "CAM_EXPLORER_HOME", "CAM_EXPLORER_WEIGHTS_DIR", "CAM_EXPLORER_OFFLINE",
                 "CAM_EXPLORER_MODELS")  # your own models: workers resolve the same keys


class DistributedError(CamError):
    """Ray is missing, the cluster cannot be reached, or no worker could start."""


@dataclass
class DistributedReport(BatchReport):
    workers: list[dict] = field(default_factory=list)  # per worker: host, pid, device, samples done

    def to_dict(self) -> dict:
        return {**super().to_dict(), "workers": self.workers}


def _host_of(address: str) -> str:
    rest = address.split("://", 1)[-1].split("@")[-1]
    return rest.split("/", 1)[0].rsplit(":", 1)[0].strip("[]")


def _is_loopback(address: str) -> bool:
    return _host_of(address) in ("127.0.0.1", "localhost", "::1")


def _is_remote(address: str | None) -> bool:
    """A cluster address on another machine ("auto" and "local" are this machine's)."""
    if not address or address in ("auto", "local"):
        return False
    return not _is_loopback(address)


def _worker_env(uri: str) -> dict[str, str]:
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    env["FIFTYONE_DATABASE_URI"] = uri
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


class _Worker:
    """One Ray actor: a model on its device, running run_batch on the shards it is given."""

    def __init__(self, options: BatchOptions, device: str, threads: int) -> None:
        import torch

        from camcore.models import load_model

        if device == "cpu":
            torch.set_num_threads(max(1, threads))
        self.device = device
        self.model = load_model(options.model, options.weights, device)  # run_batch finds it in the cache
        self.begin()

    def begin(self) -> None:
        """A new run: no cancel asked, nothing done yet (a kept worker serves several runs)."""
        self.cancel_event = threading.Event()
        self.done = 0
        self.shards = 0

    def describe(self) -> dict:
        return {"host": socket.gethostname(), "pid": os.getpid(), "device": self.device,
                "weights": self.model.weights_label, "samples_done": self.done, "shards": self.shards}

    def run(self, dataset_name: str, stages: list[dict], bounds: tuple[str | None, str | None],
            options: BatchOptions) -> dict:
        """run_batch on one shard: the driver's view rebuilt from its stages, cut to an _id range."""
        if self.cancel_event.is_set():
            return BatchReport(cancelled=True).to_dict()
        self.shards += 1
        dataset = store.load_dataset(dataset_name)
        store.refresh_schema(dataset)  # the driver declared fields after this process may have cached the dataset
        view = scan.id_range(scan.view_from_stages(dataset, stages), *bounds)
        report = run_batch(view, dataclasses.replace(options, device=self.device), cancel=self.cancel_event)
        self.done += report.done
        return report.to_dict()

    def cancel(self) -> None:
        self.cancel_event.set()


def _ray():
    try:
        import ray
    except ImportError as exc:
        raise DistributedError("Ray is not installed: pip install 'ray==2.60.*' (see requirements.txt)") from exc
    return ray


LOOPBACK = "127.0.0.1"
DASHBOARD_ENV = "CAM_EXPLORER_RAY_DASHBOARD"  # "1": the local Ray also serves its dashboard (on loopback)


def mask_uri(uri: str) -> str:
    """A database URI fit to print: its password replaced, ``mongodb://user:***@host/...``."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return uri
    at = rest.split("?", 1)[0].rfind("@")  # the last "@" before the options ends the user info
    if at >= 0:
        user, colon, _ = rest[:at].partition(":")
        rest = f"{user}:***@{rest[at + 1:]}" if colon else rest
    where, q, options = rest.partition("?")
    # Secrets some drivers take as options (tlsCertificateKeyFilePassword, AWS_SESSION_TOKEN:...).
    options = re.sub(r"((?:password|token|secret)[^=:&]*[=:])[^&,]*", r"\1***", options, flags=re.IGNORECASE)
    return f"{scheme}://{where}{q}{options}"


def _scrub(text: str, uri: str) -> str:
    """Text (an error from Ray may quote the runtime env) without the URI's password."""
    text = text.replace(uri, mask_uri(uri)) if uri else text
    return re.sub(r"(\b[a-z][a-z0-9+.-]*://[^:/?#@\s]*):[^@\s]*@", r"\1:***@", text, flags=re.IGNORECASE)


def _init_kwargs(address: str | None, env: dict[str, str]) -> dict:
    """ray.init's arguments: a local Ray started here binds loopback only, with no dashboard
    unless CAM_EXPLORER_RAY_DASHBOARD=1 asks for one (then on loopback too)."""
    uri = env.get("FIFTYONE_DATABASE_URI", "")
    if address is None and mask_uri(uri) != uri and os.environ.get("FIFTYONE_DATABASE_URI") == uri:
        # Ray writes the runtime env in full to its logs (runtime_env_agent.log); a local Ray's
        # workers inherit this process's environment, so a URI with a password need not be in it.
        env = {k: v for k, v in env.items() if k != "FIFTYONE_DATABASE_URI"}
    kwargs = {"address": address, "runtime_env": {"env_vars": env},
              "include_dashboard": os.environ.get(DASHBOARD_ENV, "") == "1",
              "log_to_driver": False, "logging_level": "WARNING", "configure_logging": True}
    if address is None:
        kwargs.update(_node_ip_address=LOOPBACK, dashboard_host=LOOPBACK)
    return kwargs


@contextlib.contextmanager
def _loopback_node(ray, address: str | None):
    """While a local Ray starts: on Linux Ray turns 127.0.0.1 into the address of the network
    interface (found by probing a public address) and its servers bind that, unless clusters
    are off as on macOS/Windows (ray_constants.ENABLE_RAY_CLUSTER, read at call time; 2.60)."""
    constants: Any = getattr(getattr(ray, "_private", None), "ray_constants", None)
    if address is not None or not hasattr(constants, "ENABLE_RAY_CLUSTER"):
        yield
        return
    saved = constants.ENABLE_RAY_CLUSTER
    constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        constants.ENABLE_RAY_CLUSTER = saved


def _connect(ray, address: str | None, env: dict[str, str]) -> bool:
    """Start or join Ray; True when this call started it (and must shut it down)."""
    if ray.is_initialized():
        return False
    client = _is_client(address)
    try:
        with _loopback_node(ray, address):
            ray.init(**_init_kwargs(address, env))
    except Exception as exc:  # ConnectionError, RuntimeError, ValueError: all mean "no cluster"
        where = address or "a local Ray"
        hint = (" (is the head's Ray Client port open, and RAY_AUTH_TOKEN set to the head's "
                "`ray get-auth-token`?)") if client else ""
        reason = _scrub(first_line(exc), env.get("FIFTYONE_DATABASE_URI", ""))
        raise DistributedError(f"could not start or reach {where}: {reason}{hint}") from exc
    return True


def _is_client(address: str | None) -> bool:
    return (address or "").startswith("ray://")  # a cluster reached through its Ray Client port


def _have_auth_token() -> bool:
    return bool(os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
                or Path("~/.ray/auth_token").expanduser().is_file())


def run_batch_distributed(
    dataset_or_view: Collection,
    options: BatchOptions,
    workers: int = 2,
    address: str | None = None,
    shard_size: int | None = None,
    progress: BatchProgress | None = None,
    cancel: threading.Event | None = None,
) -> DistributedReport:
    """run_batch over a view with `workers` Ray actors; see the module docstring. The options'
    device is ignored: each worker gets a GPU when the cluster has GPUs, else the CPU."""
    started = time.perf_counter()
    options = options.checked()
    dataset = store.root_dataset(dataset_or_view)
    store.require_image(dataset)
    workers = max(1, int(workers))
    uri = database_uri()
    if _is_remote(address) and _is_loopback(uri):
        # A remote node would talk to its own loopback: refuse rather than write nowhere.
        raise DistributedError(f"the cluster at {address} cannot reach MongoDB at {mask_uri(uri)}: set "
                               "FIFTYONE_DATABASE_URI to an address every node can reach")
    if not _is_remote(address):  # the nodes share this machine's weights: fail here, not in each worker
        weights_mod.check_available(options.spec.weights, options.weights)
    declare_fields(dataset, options)
    # Every worker writes to the same folder, named absolutely.
    folder = Path(options.heatmap_dir).resolve() if options.heatmap_dir else paths.heatmaps_dir()
    options = dataclasses.replace(options, device=None, heatmap_dir=str(folder))
    # Workers get the view itself (its stages) and an _id range each, never lists of ids: the
    # driver reads one boundary id per shard, as shards are handed out.
    stages = scan.view_stages(dataset_or_view)
    total = scan.count(dataset_or_view)  # one server-side count, for progress and the shard size
    chunk = options.chunk
    size = shard_size or max(chunk, min(8 * chunk, math.ceil(total / (4 * workers)) or 1))
    report = DistributedReport()
    if not total:
        return report
    shards = Shards(dataset_or_view, size)

    if _is_client(address) and _have_auth_token():
        # Ray >= 2.59 clusters require their token; the Ray Client sends it only in token mode,
        # which Ray reads when it is imported.
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    ray = _ray()
    held = ray_pool.begin_run(ray, None if address in (None, "local") else address, _worker_env(uri), _connect)
    shape: tuple = ()
    actors: list = []
    alive: list | None = None
    try:
        gpus, cpus, count = _worker_shape(ray.cluster_resources(), workers)
        shape = (options.model, str(options.weights), gpus, cpus)  # what a kept worker can serve
        worker_cls = ray.remote(num_cpus=cpus, num_gpus=gpus, max_concurrency=2)(_Worker)
        actors = held.workers(shape, min(count, math.ceil(total / size)),
                              lambda: worker_cls.remote(options, "cuda" if gpus else "cpu", cpus))
        _dispatch(ray, actors, dataset.name, stages, shards, options, report, total, Meter(progress, started=started),
                  cancel)
        alive = []
        for actor in actors:
            try:
                report.workers.append(ray.get(actor.describe.remote(), timeout=60))
                alive.append(actor)
            except Exception as exc:  # a dead worker: its shards are in report.failed already
                report.workers.append({"error": first_line(exc)})
    finally:
        held.end(shape, actors, alive)
    report.seconds = time.perf_counter() - started
    return report


def shutdown() -> None:
    """End the local Ray that this process's runs started and kept for its next runs, with their
    warm workers (done at exit anyway). A joined cluster is never kept."""
    ray_pool.shutdown()


def _worker_shape(resources: dict, workers: int) -> tuple[int, int, int]:
    """(GPUs per worker, CPUs per worker, number of workers) for the cluster's resources.

    One GPU each when the cluster has GPUs, else an equal share of the CPUs. Never more workers
    than the cluster can place: an actor that cannot be scheduled would hold its shard forever."""
    total_gpus, total_cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
    if total_gpus >= 1:
        return 1, 1, min(workers, total_gpus)
    count = min(workers, total_cpus)
    return 0, max(1, total_cpus // count), count


def _dispatch(ray, actors, dataset_name: str, stages: list[dict], shards: Shards, options: BatchOptions,
              report: DistributedReport, total: int, meter: Meter, cancel: threading.Event | None) -> None:
    """Keep every actor busy with one shard until none is left; fold each shard's report in."""
    running: dict = {}  # object ref -> (actor, shard)
    alive = list(actors)

    def give(actor) -> None:
        if cancel is not None and cancel.is_set():
            return
        shard = shards.next()
        if shard is not None:
            running[actor.run.remote(dataset_name, stages, shard, options)] = (actor, shard)

    def tell(message: str) -> None:
        finished = report.done + report.skipped  # rate and ETA from the samples written
        meter.tell(finished, total, message, worked=report.done, left=total - finished - len(report.failed))

    for actor in alive:
        give(actor)
    count = math.ceil(total / shards.size)
    tell(f"{count} shards of up to {shards.size} samples on {len(actors)} workers")
    cancelled_sent = False
    while running:
        ready, _ = ray.wait(list(running), num_returns=1, timeout=0.5)
        if cancel is not None and cancel.is_set() and not cancelled_sent:
            cancelled_sent = True
            report.cancelled = True
            for actor in alive:
                actor.cancel.remote()
        if not ready:
            continue
        ref = ready[0]
        actor, shard = running.pop(ref)
        try:
            part = ray.get(ref)
        except Exception as exc:  # the actor died (killed, out of memory): its shard is not done
            reason = f"worker lost: {first_line(exc)}"
            report.failed.extend((sid, reason) for sid in shards.ids(shard))
            alive.remove(actor)
            if not alive:
                report.failed.extend((sid, "no worker left") for sid in shards.rest_ids())
            tell(reason)
            continue
        report.done += part["done"]
        report.skipped += part["skipped"]
        report.removed_orphans += part["removed_orphans"]
        report.failed.extend((f["sample_id"], f["error"]) for f in part["failed"])
        report.fields.update(part["fields"])
        report.cancelled = report.cancelled or part["cancelled"]
        tell(f"wrote {report.done}/{total}")
        give(actor)
