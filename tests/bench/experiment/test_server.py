"""ServerProcess: the whole process group is stopped, SIGKILL after the grace period."""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import pytest

from perwatt.bench.experiment.config import ServerSpec
from perwatt.bench.experiment.server import (
    ServerFailure,
    ServerProcess,
    log_tail,
    port_in_use,
)

from .conftest import free_port


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is dead for our purpose.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _spec(script: str) -> ServerSpec:
    port = free_port()
    return ServerSpec(
        label="s",
        command=(sys.executable, "-c", script),
        url=f"http://127.0.0.1:{port}/v1",
        port=port,
    )


# The launcher starts a worker child, as vLLM and TensorRT-LLM do, and both ignore SIGTERM.
STUBBORN = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"])
print("child", child.pid, flush=True)
time.sleep(120)
"""


def test_stop_kills_the_group_after_the_grace_period(tmp_path: Path) -> None:
    log = tmp_path / "s.log"
    srv = ServerProcess(_spec(STUBBORN), log_path=log, ready_timeout_s=1, stop_grace_s=0.5)
    srv.start()
    deadline = time.monotonic() + 20
    while (m := re.search(r"child (\d+)\n", log.read_text())) is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    child = int(m.group(1))
    assert srv.proc is not None
    t0 = time.monotonic()
    srv.stop()
    assert time.monotonic() - t0 < 10
    assert not srv.alive() and srv.exit_text() == "was killed by SIGKILL"
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)


def test_never_ready_and_early_exit(tmp_path: Path) -> None:
    hang = ServerProcess(
        _spec("import time; print('warming up', flush=True); time.sleep(60)"),
        log_path=tmp_path / "h.log",
        ready_timeout_s=1.0,
        stop_grace_s=1,
    )
    hang.start()
    with pytest.raises(ServerFailure, match="not ready after 1 s") as e:
        hang.wait_ready()
    assert "warming up" in e.value.tail
    hang.stop()
    dead = ServerProcess(
        _spec("import sys; print('bad flag --tp_size', flush=True); sys.exit(2)"),
        log_path=tmp_path / "d.log",
        ready_timeout_s=30,
        stop_grace_s=1,
    )
    dead.start()
    with pytest.raises(ServerFailure, match="exited with code 2 before it was ready") as e2:
        dead.wait_ready()
    assert e2.value.tail == "bad flag --tp_size"
    dead.stop()


def test_helpers(tmp_path: Path) -> None:
    p = tmp_path / "log"
    p.write_text("".join(f"line {i}\n" for i in range(40)))
    assert log_tail(p, 3) == "line 37\nline 38\nline 39"
    assert log_tail(tmp_path / "none") == ""
    assert not port_in_use(free_port())
