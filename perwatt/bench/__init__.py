"""Tokens-per-joule benchmark of OpenAI-compatible inference servers.

``run_server_bench(ServerBenchConfig(...))`` drives a server with a workload at one or more load
levels while a :class:`perwatt.meter.Meter` records energy, and writes one result document per
level (:mod:`perwatt.bench.result`). :mod:`perwatt.bench.testing` ships a real loopback server
that streams like the real engines, for tests and for benchmarking the load generator itself.

The runner is imported lazily so that readers of result files (compare, report) do not pay for
the load generator.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from perwatt.bench.result import SCHEMA_VERSION, BenchResult, load_result, write_result

if TYPE_CHECKING:
    from perwatt.bench.runner import ServerBenchConfig, run_server_bench

__all__ = [
    "SCHEMA_VERSION",
    "BenchResult",
    "ServerBenchConfig",
    "load_result",
    "run_server_bench",
    "write_result",
]


def __getattr__(name: str) -> Any:
    if name in ("ServerBenchConfig", "run_server_bench"):
        from perwatt.bench import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'perwatt.bench' has no attribute {name!r}")
