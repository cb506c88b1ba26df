from __future__ import annotations

import asyncio
import itertools
import statistics

import pytest

from perwatt.bench.client import OpenAIClient, RequestRecord
from perwatt.bench.loadgen import LoadLevel, LoadRun, arrival_offsets_s, run_level
from perwatt.bench.testing import FakeOpenAIServer, ServerConfig
from perwatt.bench.workload import synthetic
from perwatt.errors import ConfigError


def test_level_validation_and_tags() -> None:
    assert LoadLevel(request_rate=2.0).tag() == "r2"
    assert LoadLevel(max_concurrency=4).tag() == "c4"
    assert LoadLevel(request_rate=0.5, max_concurrency=8).tag() == "r0.5_c8"
    assert LoadLevel().tag() == "burst"
    assert LoadLevel(max_concurrency=4).saturation_target(10) == 4
    assert LoadLevel(max_concurrency=40).saturation_target(10) == 10
    assert LoadLevel().saturation_target(10) == 10
    assert LoadLevel(request_rate=3).saturation_target(10) is None
    for kw in ({"request_rate": 0.0}, {"burstiness": 0.0}, {"max_concurrency": 0}):
        with pytest.raises(ConfigError):
            LoadLevel(**kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("burstiness", [1.0, 0.5, 4.0])
def test_gamma_arrivals(burstiness: float) -> None:
    offs = arrival_offsets_s(4000, LoadLevel(request_rate=10.0, burstiness=burstiness), seed=0)
    gaps = [b - a for a, b in itertools.pairwise(offs)]
    assert offs[0] == 0.0
    assert statistics.mean(gaps) == pytest.approx(0.1, rel=0.06)
    # Gamma(shape k): coefficient of variation 1/sqrt(k).
    cv = statistics.stdev(gaps) / statistics.mean(gaps)
    assert cv == pytest.approx(burstiness**-0.5, rel=0.1)
    assert offs == arrival_offsets_s(4000, LoadLevel(request_rate=10.0, burstiness=burstiness), 0)


def test_infinite_rate_all_at_once() -> None:
    assert arrival_offsets_s(3, LoadLevel(), seed=0) == [0.0, 0.0, 0.0]


def _run(
    level: LoadLevel, cfg: ServerConfig, n: int
) -> tuple[LoadRun, FakeOpenAIServer, list[int]]:
    w = synthetic(num_prompts=n, input_len=8, output_len=4, seed=0)
    seen: list[int] = []
    with FakeOpenAIServer(cfg) as s:

        async def main() -> LoadRun:
            c = OpenAIClient(s.url)
            try:
                return await run_level(
                    c,
                    w.requests,
                    level,
                    endpoint="completions",
                    model="perwatt-test-model",
                    records=[],
                    on_inflight=seen.append,
                )
            finally:
                await c.aclose()

        run = asyncio.run(main())
    return run, s, seen


def test_max_concurrency_is_respected() -> None:
    run, s, seen = _run(LoadLevel(max_concurrency=3), ServerConfig(itl_s=0.005), 12)
    assert len(run.records) == 12 and all(r.ok for r in run.records)
    assert s.stats.max_in_flight == 3
    assert max(seen) == 3 and seen[-1] == 0
    assert run.sent == 12 and run.end_s > run.start_s


def test_burst_sends_everything() -> None:
    run, s, _ = _run(LoadLevel(), ServerConfig(ttft_s=0.05), 8)
    assert s.stats.max_in_flight == 8
    assert len(run.records) == 8


def test_rate_spreads_sends() -> None:
    run, _, _ = _run(LoadLevel(request_rate=50.0), ServerConfig(), 10)
    starts = sorted(r.start_s - run.start_s for r in run.records)
    offs = arrival_offsets_s(10, LoadLevel(request_rate=50.0), seed=0)
    for got, want in zip(starts, offs, strict=True):
        assert want - 0.005 <= got <= want + 0.1  # never early; late only by scheduling


def test_records_collected_in_callers_list() -> None:
    records: list[RequestRecord] = []
    w = synthetic(num_prompts=4, input_len=4, output_len=2)
    with FakeOpenAIServer() as s:

        async def main() -> None:
            c = OpenAIClient(s.url)
            try:
                await run_level(
                    c,
                    w.requests,
                    LoadLevel(),
                    endpoint="chat",
                    model="perwatt-test-model",
                    records=records,
                )
            finally:
                await c.aclose()

        asyncio.run(main())
    assert sorted(r.index for r in records) == [0, 1, 2, 3]
