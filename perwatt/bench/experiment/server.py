"""Launch an inference server, wait until it answers, keep its log, stop it and its children.

::

    start()        Popen(command, own process group, stdout+stderr → LOG); on Linux the server
                   gets SIGTERM if perwatt dies (prctl PR_SET_PDEATHSIG, set by a tiny exec shim)
    wait_ready()   GET URL/models (or ready_path) every 0.5 s until HTTP 200; the process exiting
                   first, or the timeout, is a ServerFailure carrying the log's last lines
    stop()         SIGTERM to the whole process group, SIGKILL after the grace period

vLLM, SGLang and TensorRT-LLM start worker processes of their own; signalling the group (not just
the launcher's pid) is what stops them too. The death signal covers the launcher only: a server
whose workers ignore their parent's death can outlive a SIGKILLed perwatt; the next run then finds
the port in use and says so before launching anything.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO

import httpx

from perwatt.bench.experiment.config import ServerSpec
from perwatt.errors import ConfigError, PerwattError

#: Lines of the server log quoted when a server fails.
TAIL_LINES = 15

# Sets PR_SET_PDEATHSIG (1) to SIGTERM, then becomes the server (the setting survives exec).
_SHIM = (
    "import ctypes,os,signal,sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)\n"
    "if os.getppid() != int(sys.argv[1]): sys.exit(1)\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


class ServerFailure(PerwattError):
    """A launched server failed to start, never became ready or died; ``tail`` is its log's end."""

    def __init__(self, message: str, tail: str = "") -> None:
        super().__init__(message)
        self.tail = tail


def log_tail(path: Path, n: int = TAIL_LINES) -> str:
    """The last ``n`` lines of a log file ('' when there is none)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-n:])


def find_command(argv0: str, env: Mapping[str, str]) -> str | None:
    """Where ``argv0`` resolves (PATH from ``env`` when it sets one), or None."""
    return shutil.which(argv0, path=env.get("PATH", os.environ.get("PATH")))


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True when something already listens on ``host:port`` (or the port cannot be bound)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def check_launchable(spec: ServerSpec) -> None:
    """The command exists and the port is free; ConfigError naming the field otherwise."""
    if spec.command is None:
        return
    env = {**os.environ, **spec.env}
    if find_command(spec.command[0], env) is None:
        raise ConfigError(
            f"{spec.where}.command: {spec.command[0]!r} not found (is the engine installed and "
            "on PATH?)"
        )
    if spec.port is not None and port_in_use(spec.port):
        raise ConfigError(
            f"{spec.where}.port: {spec.port} is already in use (another server still running? "
            "stop it or choose another port)"
        )


class ServerProcess:
    """One launched server; see the module docstring."""

    def __init__(
        self,
        spec: ServerSpec,
        *,
        log_path: Path,
        ready_timeout_s: float,
        stop_grace_s: float,
        poll_s: float = 0.5,
    ) -> None:
        if spec.command is None:
            raise ConfigError(f"{spec.where}: no command to launch")
        self.spec = spec
        self.log_path = log_path
        self.ready_timeout_s = ready_timeout_s
        self.stop_grace_s = stop_grace_s
        self.poll_s = poll_s
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.ready_after_s: float | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        assert self.spec.command is not None
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        argv = list(self.spec.command)
        if sys.platform.startswith("linux"):
            argv = [sys.executable, "-c", _SHIM, str(os.getpid()), *argv]
        env = {**os.environ, **self.spec.env}
        try:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its own process group: stop() signals the whole tree
            )
        except OSError as e:
            self._close_log()
            raise ServerFailure(f"cannot start {self.spec.command[0]}: {e}") from None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def exit_text(self) -> str:
        rc = self.proc.poll() if self.proc is not None else None
        if rc is None:
            return "is running"
        if rc < 0:
            try:
                return f"was killed by {signal.Signals(-rc).name}"
            except ValueError:
                return f"was killed by signal {-rc}"
        return f"exited with code {rc}"

    def tail(self) -> str:
        if self._log is not None:
            with contextlib.suppress(OSError, ValueError):
                self._log.flush()
        return log_tail(self.log_path)

    def wait_ready(self) -> float:
        """Seconds until the server answered; ServerFailure when it exits or times out."""
        t0 = time.monotonic()
        url = self.spec.url + self.spec.ready_path
        with httpx.Client(timeout=2.0) as client:
            while True:
                if not self.alive():
                    raise ServerFailure(
                        f"the server {self.exit_text()} before it was ready", self.tail()
                    )
                try:
                    r = client.get(url)
                    if r.status_code == 200:
                        self.ready_after_s = time.monotonic() - t0
                        return self.ready_after_s
                except httpx.HTTPError:
                    pass
                if time.monotonic() - t0 > self.ready_timeout_s:
                    raise ServerFailure(
                        f"the server was not ready after {self.ready_timeout_s:g} s "
                        f"(GET {url} never answered 200)",
                        self.tail(),
                    )
                time.sleep(self.poll_s)

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL what is left after the grace period."""
        proc = self.proc
        if proc is None:
            return
        pgid = proc.pid  # start_new_session: the group id is the launcher's pid
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=self.stop_grace_s)
        # Workers of the group may outlive the launcher: the group gets SIGKILL either way.
        deadline = time.monotonic() + self.stop_grace_s
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10.0)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            with contextlib.suppress(OSError):
                self._log.close()
            self._log = None


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
