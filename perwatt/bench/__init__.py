"""Tokens-per-joule benchmark of OpenAI-compatible inference servers.

``run_server_bench(ServerBenchConfig(...))`` drives a server with a workload at one or more load
levels while a :class:`perwatt.meter.Meter` records energy, and writes one result document per
level (:mod:`perwatt.bench.result`). :mod:`perwatt.bench.testing` ships a real loopback server
that streams like the real engines, for tests and for benchmarking the load generator itself.

Its names are imported on first use, so that readers of result files (compare, report) do not
pay for the load generator, nor the CLI's start-up for either.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from perwatt.bench.result import SCHEMA_VERSION, BenchResult, load_result, write_result
    from perwatt.bench.runner import ServerBenchConfig, run_server_bench

__all__ = [
    "SCHEMA_VERSION",
    "BenchResult",
    "ServerBenchConfig",
    "load_result",
    "run_server_bench",
    "write_result",
]


# Loaded on first use: every command imports perwatt.bench (the guard's flags), few need more.
_WHERE = {
    "SCHEMA_VERSION": "perwatt.bench.result",
    "BenchResult": "perwatt.bench.result",
    "ServerBenchConfig": "perwatt.bench.runner",
    "load_result": "perwatt.bench.result",
    "run_server_bench": "perwatt.bench.runner",
    "write_result": "perwatt.bench.result",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'perwatt.bench' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
