"""The Ray scenario (tests/ray_scenario.py) started as soon as the suite knows it will need it, and
run beside the tests instead of in a test worker's slot (issue 26 item 7).

Why: the scenario is one long subprocess (a local Ray, three worker starts, a mongod) that spends
most of its wall time waiting for the CPU: ~50 s alone, 200-250 s under the whole suite's load,
during which the xdist worker that ran its fixture did nothing else. Now the first worker (gw0, or
the only process without xdist) starts it right after collection, when test_distributed's tests are
collected; it runs in its own process group, writing its stdout, stderr and exit status under
test-artifacts/ray-scenario/<test run>/; test_distributed runs last (conftest.py's LAST) and its
fixture only reads them, waiting if it is still going. The worker that started it waits for it
before it exits, and kills it if it outlives the suite. Where no private network namespace can be
made, nothing is started and the fixture skips, as before."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import ray_scenario

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "test-artifacts" / "ray-scenario"
TIMEOUT = 900  # seconds for the whole scenario: ~1 min on an idle machine, ~4 under the suite's load
_started: dict[str, subprocess.Popen] = {}


def namespace_setup() -> tuple[str | None, str]:
    """(why no private network namespace can be made here or None, the commands that make its
    interfaces: loopback and a veth pair where possible, loopback only otherwise)."""
    if not all(shutil.which(tool) for tool in ("unshare", "ip", "ss")):
        return "unshare/ip/ss (util-linux, iproute2) are not installed", ""
    for setup in (ray_scenario.NETNS, ray_scenario.LOOPBACK_ONLY):
        probe = subprocess.run(["unshare", "-n", "sh", "-c", setup + "true"], capture_output=True, text=True)
        if probe.returncode == 0:
            return None, setup
    return f"cannot create a network namespace: {probe.stderr.strip()}", ""


def run_id(config) -> str:
    """One id per test run, the same in every xdist worker (xdist's own), else this process's."""
    worker_input = getattr(config, "workerinput", None)
    if worker_input and worker_input.get("testrunuid"):
        return str(worker_input["testrunuid"])
    if not hasattr(config, "_cam_ray_run"):
        config._cam_ray_run = f"{os.getpid()}-{int(time.time())}"
    return config._cam_ray_run


def run_dir(run_id: str) -> Path:
    return RUNS / run_id


def start(run_id: str) -> None:
    """Start the scenario for this test run (once), unless no namespace can be made here."""
    folder = run_dir(run_id)
    if run_id in _started or folder.exists():
        return
    for old in RUNS.glob("*/setup.json"):  # earlier runs' ended (or never started) scenarios
        if (old.parent / "rc").exists() or json.loads(old.read_text()).get("skip"):
            shutil.rmtree(old.parent, ignore_errors=True)
    RUNS.mkdir(parents=True, exist_ok=True)
    try:
        folder.mkdir()  # one process starts it: the one that made its folder
    except FileExistsError:
        return
    why, setup = namespace_setup()
    said = {"skip": why, "with_an_interface": setup == ray_scenario.NETNS}
    (folder / "setup.tmp").write_text(json.dumps(said))
    (folder / "setup.tmp").rename(folder / "setup.json")
    if why:
        return
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FIFTYONE_DATABASE", "CAM_EXPLORER"))}
    # the exit status is written last, under its final name only once complete (a reader never sees half)
    inner = shlex.quote(f"{setup}exec {shlex.quote(sys.executable)} tests/ray_scenario.py")
    at = shlex.quote(str(folder))
    script = f"unshare -n sh -c {inner} > {at}/stdout 2> {at}/stderr; echo $? > {at}/rc.tmp; mv {at}/rc.tmp {at}/rc"
    _started[run_id] = subprocess.Popen(["timeout", str(TIMEOUT), "sh", "-c", script], cwd=ROOT, env=env,
                                        start_new_session=True)


def result(run_id: str) -> dict:
    """The scenario's JSON result for this test run, waiting for it to end (started after collection,
    else here)."""
    folder = run_dir(run_id)
    start(run_id)
    deadline = time.time() + 60
    while not (folder / "setup.json").exists():  # another process is starting it
        if time.time() > deadline:
            raise TimeoutError(f"the Ray scenario's start said nothing within 60 s ({folder})")
        time.sleep(0.2)
    setup = json.loads((folder / "setup.json").read_text())
    if setup["skip"]:
        return {"skip": setup["skip"]}
    deadline = time.time() + TIMEOUT + 60
    while not (folder / "rc").exists():
        if time.time() > deadline:
            raise TimeoutError(f"the Ray scenario did not end within {TIMEOUT + 60} s ({folder})")
        time.sleep(1)
    code = (folder / "rc").read_text().strip()
    stderr = (folder / "stderr").read_text(errors="replace")
    assert code == "0", f"the Ray scenario exited {code}: {stderr[-4000:]}"
    out = json.loads((folder / "stdout").read_text().strip().splitlines()[-1])
    out["with_an_interface"] = setup["with_an_interface"]
    return out


def finish(wait: bool = True) -> None:
    """Wait for the scenarios this process started (the fixture may be in another worker still),
    and stop one that outlives its timeout, or at once when not `wait`ing (an interrupted run),
    with its whole process group."""
    for proc in _started.values():
        try:
            proc.wait(timeout=TIMEOUT + 60 if wait else 0)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    _started.clear()
