"""The FiftyOne App's server process, started as FiftyOne starts it, with a longer wait and a
lighter supervisor."""
from __future__ import annotations

import os
import subprocess
import sys

import fiftyone as fo
import fiftyone.core.service as fo_service
import fiftyone.core.session.session as fo_session
import psutil

from camcore.errors import StoreError

START_SECONDS = 180.0  # how long a start waits for the App's server to listen (FiftyOne's own: 60 s)

# FiftyOne runs each service under its supervisor script (fiftyone/service/main.py), which ends the
# server when the process that started it goes. The script needs only fiftyone.service.ipc (stdlib
# only), but importing that runs fiftyone/__init__.py, the whole library: 2-4 s of CPU per App
# start before the server itself starts (bench/app_start.py). Here the same script runs with bare
# entries for the packages `fiftyone` and `fiftyone.service`, so that it loads ipc.py alone.
_SUPERVISOR_BOOT = """\
import os, runpy, sys, types
script = sys.argv[1]
service = os.path.dirname(script)
for name, path in (("fiftyone", os.path.dirname(service)), ("fiftyone.service", service)):
    package = types.ModuleType(name)
    package.__path__ = [path]
    sys.modules[name] = package
sys.argv = sys.argv[1:]
runpy.run_path(script, run_name="__main__")
"""
SUPERVISOR_SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(fo_service.__file__))),
                                 "service", "main.py")


class _LightSupervisor(fo_service.Service):
    """FiftyOne's Service.start (1.22), its supervisor script run through _SUPERVISOR_BOOT."""

    def start(self) -> None:
        self.child = psutil.Popen(
            [sys.executable, "-c", _SUPERVISOR_BOOT, SUPERVISOR_SCRIPT] + self._service_args + self.command,
            cwd=self.working_dir,
            stdin=subprocess.PIPE,
            env={**os.environ, "FIFTYONE_DISABLE_SERVICES": "1", **self.env},
        )


class _PatientServerService(fo_service.ServerService, _LightSupervisor):
    """FiftyOne's App server service, waiting START_SECONDS for the server to listen; its
    ServerService.start (is a server there already?) calls _LightSupervisor.start (the MRO).

    Why: fo.launch_app waits a fixed 60 s and then fails with "ServerService failed to bind to
    port"; on a loaded machine (load 17-20 on 2 cores) the server's start took longer."""

    def _wait_for_child_port(self, port: int | None = None, timeout: float | None = None) -> int:
        return super()._wait_for_child_port(port=port, timeout=START_SECONDS)

    def start(self) -> None:
        try:
            super().start()
        except fo_service.ServiceListenTimeout:
            self.stop()  # no half-started server left behind (the service ends its child)
            raise


def start_server(port: int) -> None:
    """Start the App's server on `port` unless this process has one there; fo.launch_app then
    finds it in FiftyOne's table of servers (as its own start would have left it) and uses it,
    and closing the session stops it, as FiftyOne's own."""
    services = fo_session._server_services
    if port in services:
        return
    try:
        services[port] = _PatientServerService(port, address="localhost", do_not_track=fo.config.do_not_track)
    except fo_service.ServiceListenTimeout as exc:
        raise StoreError(f"the FiftyOne App's server did not start listening on port {port} "
                         f"in {START_SECONDS:.0f} s") from exc
