"""Helpers for the experiment tests: free ports and experiment files around the test server."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_server_command(extra: str = "") -> str:
    """perwatt's loopback test server (no model): starts in about a second."""
    return f"{sys.executable} -m perwatt.bench.testing --port {{port}} --itl-ms 2 {extra}".strip()


# Not a test, despite the name pytest would collect.
test_server_command.__test__ = False  # type: ignore[attr-defined]


def write_experiment(
    tmp_path: Path,
    servers: list[tuple[str, str]],
    *,
    extra: str = "",
    load: str = "max_concurrency = [1, 2]",
    ready_timeout_s: float = 30,
    energy_source: str = "simulated",
) -> Path:
    """An experiment file with ``servers`` as (label, command) pairs, each on a free port."""
    text = f"""
[experiment]
name = "t"
out = "{tmp_path / "out"}"
energy_source = "{energy_source}"
idle_seconds = 0.3
ready_timeout_s = {ready_timeout_s}
stop_grace_s = 3
sample_interval_s = 0.05

[workload]
num_prompts = 6
input_len = 16
output_len = 8

[load]
{load}

[slo]
tpot_p90_ms = 5000

{extra}
"""
    for label, cmd in servers:
        text += f'\n[[server]]\nlabel = "{label}"\ncommand = """{cmd}"""\nport = {free_port()}\n'
    p = tmp_path / "exp.toml"
    p.write_text(text)
    return p


@pytest.fixture
def quiet() -> list[str]:
    return []
