"""Tokens-per-joule benchmark of OpenAI-compatible inference servers.

``run_server_bench`` drives a server with a workload at one or more load levels while a
:class:`perwatt.meter.Meter` records energy, and writes one result document per level
(:mod:`perwatt.bench.result`). :mod:`perwatt.bench.testing` ships a real loopback server that
streams like the real engines, for tests and for benchmarking the load generator itself.
"""

from perwatt.bench.result import SCHEMA_VERSION, BenchResult, load_result, write_result

__all__ = ["SCHEMA_VERSION", "BenchResult", "load_result", "write_result"]
