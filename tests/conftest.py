"""Test session setup: a real, throw-away MongoDB and a temporary CAM Explorer home.

Done in ``pytest_configure`` so the environment is final before any test module imports
fiftyone (its config is read once, at import). Child processes inherit the environment,
so a subprocess that imports fiftyone talks to the same database.
"""
from __future__ import annotations

import gc
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "tests"):  # `import camcore` and the shared helpers, however pytest is invoked
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

_state: dict = {}


def _start_mongod(tmp: Path) -> None:
    from mongod_support import start_mongod

    try:
        proc, uri = start_mongod(tmp)
    except RuntimeError as exc:
        raise pytest.UsageError(str(exc)) from exc
    _state["mongod"] = proc
    os.environ["FIFTYONE_DATABASE_URI"] = uri


def pytest_configure(config: pytest.Config) -> None:
    os.environ["FIFTYONE_DO_NOT_TRACK"] = "true"
    os.environ["FIFTYONE_DATABASE_VALIDATION"] = "false"
    tmp = Path(tempfile.mkdtemp(prefix="cam-explorer-tests-"))
    _state["tmp"] = tmp
    home = tmp / "home"
    home.mkdir()
    os.environ["CAM_EXPLORER_HOME"] = str(home)
    # Keep zoo downloads (and "is quickstart already downloaded?") away from the user's ~/fiftyone.
    os.environ["FIFTYONE_DATASET_ZOO_DIR"] = str(tmp / "zoo")
    worker = getattr(config, "workerinput", {}).get("workerid")  # pytest-xdist: gw0, gw1, ...
    if worker is not None:
        # Several workers share the cores: one thread each for torch, OpenCV and the BLAS (set
        # before anything imports them; the servers and processes the tests start inherit it).
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ.setdefault(name, "1")
    if worker is None:
        shutil.rmtree(TIMELINE, ignore_errors=True)  # this run's timeline only
    if worker is not None or not getattr(config.option, "numprocesses", None):
        # Which process runs the tests, by the timeline's name (bench/suite_cpu.py counts CPU to them).
        TIMELINE.mkdir(parents=True, exist_ok=True)
        (TIMELINE / f"{worker or 'main'}.pid").write_text(str(os.getpid()))
    if worker is None and getattr(config.option, "numprocesses", None):
        return  # the xdist controller runs no test: each worker starts its own database below
    if os.environ.get("FIFTYONE_DATABASE_URI"):
        # The user's own MongoDB: keep tests out of their real database (one database per xdist worker).
        os.environ.setdefault("FIFTYONE_DATABASE_NAME", f"cam-explorer-tests{'-' + worker if worker else ''}")
    else:
        _start_mongod(tmp)


def _scan_streamlit_components_once() -> None:
    """Streamlit looks for its v2 components in every installed package's metadata (~190
    packages, ~0.3 CPU-s) once per AppTest; a run builds 94 AppTests, and the installed packages
    do not change during a run: one scan in each test process that collected Streamlit's tests
    serves them all."""
    import functools

    from streamlit.components.v2 import manifest_scanner

    manifest_scanner.scan_component_manifests = functools.cache(manifest_scanner.scan_component_manifests)


def pytest_unconfigure(config: pytest.Config) -> None:
    if "warm_processes" in sys.modules:  # the warm process the tests' servers and processes were forked from
        sys.modules["warm_processes"].close()
    proc = _state.pop("mongod", None)
    if proc is not None:
        from mongod_support import stop_mongod

        stop_mongod(proc)
    tmp = _state.pop("tmp", None)
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def full_disk(tmp_path):
    """A folder on a 64 KiB tmpfs filled to the last byte (root only, as in CI); `.parent / "filler"`
    is the file to delete for space again."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        (mnt / "out").mkdir()
        try:
            with open(mnt / "filler", "wb") as f:
                while True:
                    f.write(b"\0" * 4096)
                    f.flush()
        except OSError:  # ENOSPC: full
            pass
        yield mnt / "out"
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


@pytest.fixture(scope="session")
def fork_server(tmp_path_factory):
    """Another process for a test, forked from the test process's warm process, which imported
    FiftyOne, torch and camcore once (tests/warm_processes.py: each cold start costs 4-10 s of CPU)."""
    from warm_processes import ForkServer

    server = ForkServer(tmp_path_factory.mktemp("forks"))
    yield server
    server.close()


# -- the browser tests' shared parts. The browser is module-scoped, so that no Playwright event loop
# outlives its module (FiftyOne's execute_operator, in later modules, would take it for its own and
# return a Task). The streamlit server is one per test process, shared by the browser modules that
# run in it: each start imports Streamlit and the app and loads its models again (tests/server_forks.py
# forks it from the warm process, which has torch, FiftyOne, grad-cam and camcore imported: ~9 s of CPU
# more per cold start).


@pytest.fixture(scope="session")
def _servers():
    """The test process's shared `streamlit run` server, started by the first module that asks."""
    held: dict = {}
    yield held
    if held.get("server") is not None:
        held["server"].stop()


@pytest.fixture(scope="module")
def server(request, _servers):
    """`streamlit run app.py` on a free port (log in test-artifacts/), shared with the other browser
    modules of this test process. A module gets it as a fresh one would be: idle, nothing started
    from it (else it is replaced). What a page holds is per browser session; the tests that need a
    server that has served nothing yet (deep links, a killed server) start their own."""
    from test_browser import ARTIFACTS, Server

    srv = _servers.get("server")
    if srv is not None and not srv.reusable():
        srv.stop()
        srv = None
    if srv is None:
        ARTIFACTS.mkdir(exist_ok=True)
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        srv = _servers["server"] = Server(ARTIFACTS / f"streamlit-{worker}-{request.module.__name__}.log")
    srv.serve(request.module.__name__)
    yield srv


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium through Playwright (no browser download), for one test module; its pages
    hold still (browser_support.STILL_CSS)."""
    from browser_support import CHROMIUM, CHROMIUM_ARGS, hold_still
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield hold_still(b)
        b.close()


# The files that take longest, started first (longest first, by their wall time in a full run: the
# browser journeys and real FiftyOne Apps, the reference's perturbation methods, the CLI in
# subprocesses). With `-n N --dist loadfile` a long file handed out last runs alone at the end
# while the other workers idle. make test passes --no-loadscope-reorder: without it xdist hands the
# files out by their number of tests, most first, so one-test browser files would start last.
# The ONE_AT_A_TIME group below is one unit, first: xdist gives a worker a second unit at once when
# its first holds at most 2 tests, so a long unit after a one-test file would wait for it.
LONG_FIRST = ("test_app21_own_app", "test_browser_compare", "test_app21_modal_names",
              "test_app21_app", "test_browser", "test_reference", "test_cli", "test_browser_links",
              "test_browser_explore", "test_detection", "test_apptest_compare", "test_browser_daily",
              "test_engine", "test_concurrent_fields", "test_browser_security", "test_plugin",
              "test_browser_audit", "test_apptest_views", "test_fiftyone_app", "test_browser_detection",
              "test_session_memory", "test_measures")


# Every test's start and end (wall clock), outcome and CPU seconds (this worker's own; the processes it
# started and waited for), one file per xdist worker in test-artifacts/timeline/: which tests ran beside
# a browser wait that ran out under load, and where the CPU goes (tests/timeline.py reads them).
TIMELINE = ROOT / "test-artifacts" / "timeline"


def _cpu() -> tuple[float, float]:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    start, (own, kids) = time.time(), _cpu()
    _state.setdefault("reports", {})[item.nodeid] = []
    yield
    failed = any(r.failed for r in _state["reports"].pop(item.nodeid, []))
    end, (own_end, kids_end) = time.time(), _cpu()
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    TIMELINE.mkdir(parents=True, exist_ok=True)
    with open(TIMELINE / f"{worker}.tsv", "a") as f:
        f.write(f"{worker}\t{start:.2f}\t{end:.2f}\t{'failed' if failed else 'ok'}\t{own_end - own:.2f}\t"
                f"{kids_end - kids:.2f}\t{item.nodeid}\n")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _state.get("reports", {}).get(report.nodeid, []).append(report)


# Files that must not run beside one another (issue 26 item 7): the real FiftyOne App's journeys and
# Compare's eight-methods journey. When they met under the suite's load (3 workers on 2 cores) their
# browser waits ran out: the App's modal canvas not loaded in 90 s (test_app21_app and
# test_app21_modal_names), Compare's ROAD curve not done in 180 s. A group is one xdist work unit: one
# worker runs its files one after another, in LONG_FIRST's order (tests/timeline.py shows who met whom).
ONE_AT_A_TIME: tuple[tuple[str, ...], ...] = (
    ("test_app21_own_app", "test_browser_compare", "test_app21_modal_names", "test_app21_app"),
)
_GROUP_OF = {name: "+".join(group) for group in ONE_AT_A_TIME for name in group}


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """--dist loadfile, with each ONE_AT_A_TIME group one unit (one worker, one file at a time)."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class Apart(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            file = nodeid.split("::", 1)[0]
            return _GROUP_OF.get(Path(file).stem, file)

    return Apart(config, log)


# Last: test_distributed, whose Ray scenario (tests/ray_background.py) the first worker starts right
# after collection and runs beside the tests; by the time its tests come, they only read its result.
LAST = ("test_distributed",)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONG_FIRST)}
    rank.update({name: len(LONG_FIRST) + 1 + i for i, name in enumerate(LAST)})
    items.sort(key=lambda item: rank.get(item.module.__name__ if item.module else "", len(LONG_FIRST)))


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the Ray scenario now, beside the tests, when its tests are collected (one worker);
    cache Streamlit's component scan when AppTest files were collected. And set what collection
    imported (torch, FiftyOne, Streamlit, Playwright, every test module) aside from the cyclic
    collector: it lives as long as the test process, and each full collection would walk it all
    again (as the app does after its imports: ui/session_memory.freeze_startup_heap)."""
    import ray_background

    if "streamlit" in sys.modules:  # collection imported it: AppTest files (or the ui they test) are here
        _scan_streamlit_components_once()
    gc.collect()
    gc.freeze()

    worker = getattr(session.config, "workerinput", {}).get("workerid")
    wanted = any("scenario" in getattr(item, "fixturenames", ()) for item in session.items)
    if wanted and worker in (None, "gw0"):
        ray_background.start(ray_background.run_id(session.config))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if "ray_background" in sys.modules:  # a scenario this process started: wait for it, or stop it
        sys.modules["ray_background"].finish(wait=exitstatus != pytest.ExitCode.INTERRUPTED)
