"""The load generator: when to send each request, and how many may be in flight.

Arrivals follow ``vllm bench serve``: with a finite ``request_rate`` the gaps between sends are
drawn from a gamma distribution with shape ``burstiness`` and mean ``1 / request_rate``
(``burstiness = 1`` is a Poisson process; below 1 burstier, above 1 more regular); with an
infinite rate every request is due at once. ``max_concurrency`` caps requests in flight; an
infinite rate with a concurrency cap is a closed loop (a new request as soon as one finishes).

One load level runs in one asyncio event loop. The dispatcher holds a semaphore slot before it
creates a request's task, so a closed loop of N requests costs N tasks in total, never N waiting.
Completed records are handed to ``on_record`` at once (the runner appends them to the CSV) and
collected in the caller's list, so an interrupted run keeps everything that finished.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from perwatt.bench.client import Endpoint, OpenAIClient, RequestRecord
from perwatt.bench.workload import RequestSpec
from perwatt.errors import ConfigError


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadLevel:
    """One load level: ``request_rate`` in requests/s (None = infinite) and a concurrency cap."""

    request_rate: float | None = None
    burstiness: float = 1.0
    max_concurrency: int | None = None

    def __post_init__(self) -> None:
        if self.request_rate is not None and not (
            self.request_rate > 0 and math.isfinite(self.request_rate)
        ):
            raise ConfigError(f"--request-rate must be positive or inf, got {self.request_rate}")
        if not (self.burstiness > 0 and math.isfinite(self.burstiness)):
            raise ConfigError(f"--burstiness must be positive, got {self.burstiness}")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ConfigError(f"--max-concurrency must be >= 1, got {self.max_concurrency}")

    def tag(self) -> str:
        """File-name tag: ``r2``, ``r2_c8``, ``c4`` or ``burst`` (everything at once)."""
        parts = []
        if self.request_rate is not None:
            parts.append(f"r{self.request_rate:g}")
        if self.max_concurrency is not None:
            parts.append(f"c{self.max_concurrency}")
        return "_".join(parts) or "burst"

    def saturation_target(self, num_requests: int) -> int | None:
        """In-flight count that means 'saturated', or None when only the rate is set."""
        if self.request_rate is not None:
            return None if self.max_concurrency is None else self.max_concurrency
        return min(self.max_concurrency or num_requests, num_requests)


def arrival_offsets_s(n: int, level: LoadLevel, seed: int) -> list[float]:
    """Send time of each request relative to the start; all zero for an infinite rate."""
    if level.request_rate is None:
        return [0.0] * n
    rng = random.Random(seed)
    shape = level.burstiness
    scale = 1.0 / (level.request_rate * shape)  # mean gap = shape * scale = 1 / rate
    out = []
    t = 0.0
    for i in range(n):
        if i > 0:
            t += rng.gammavariate(shape, scale)
        out.append(t)
    return out


@dataclass(slots=True)
class LoadRun:
    """What one level produced; ``records`` is the caller's list, filled as requests finish."""

    records: list[RequestRecord]
    start_s: float = 0.0
    end_s: float = 0.0
    sent: int = 0


async def run_level(
    client: OpenAIClient,
    requests: Sequence[RequestSpec],
    level: LoadLevel,
    *,
    endpoint: Endpoint,
    model: str,
    records: list[RequestRecord],
    stream: bool = True,
    ignore_eos: bool = True,
    seed: int = 0,
    extra_body: dict[str, object] | None = None,
    on_record: Callable[[RequestRecord], None] | None = None,
    on_inflight: Callable[[int], None] | None = None,
    on_tick: Callable[[], None] | None = None,
    tick_s: float = 2.0,
    run: LoadRun | None = None,
) -> LoadRun:
    """Send every request at ``level``; return when all have finished."""
    clock = client.clock
    run = run or LoadRun(records=records)
    offsets = arrival_offsets_s(len(requests), level, seed)
    # Encode payloads up front: JSON encoding is not part of what the server is timed on.
    payloads = [
        client.build_payload(
            endpoint,
            model,
            spec.prompt,
            spec.output_len,
            stream=stream,
            ignore_eos=ignore_eos and spec.output_len is not None,
            extra=extra_body,
        )
        for spec in requests
    ]
    sem = asyncio.Semaphore(level.max_concurrency) if level.max_concurrency else None
    in_flight = 0
    tasks: set[asyncio.Task[None]] = set()

    async def one(spec: RequestSpec, payload: bytes) -> None:
        nonlocal in_flight
        try:
            rec = await client.request(
                endpoint,
                payload,
                index=spec.index,
                prompt_tokens=spec.input_tokens,
                stream=stream,
                # A fixed-length request's answer must reach its length or say why it stopped.
                expected_output_tokens=spec.output_len if ignore_eos else None,
            )
            records.append(rec)
            if on_record is not None:
                on_record(rec)
        finally:
            in_flight -= 1
            if on_inflight is not None:
                on_inflight(in_flight)
            if sem is not None:
                sem.release()

    async def ticker() -> None:
        while True:
            await asyncio.sleep(tick_s)
            if on_tick is not None:
                on_tick()

    tick_task = asyncio.create_task(ticker()) if on_tick is not None else None
    run.start_s = clock()
    try:
        for spec, payload, off in zip(requests, payloads, offsets, strict=True):
            delay = run.start_s + off - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            if sem is not None:
                await sem.acquire()
            in_flight += 1
            if on_inflight is not None:
                on_inflight(in_flight)
            t = asyncio.create_task(one(spec, payload))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
            run.sent += 1
            if sem is None:
                await asyncio.sleep(0)  # let the request go out before scheduling the next
        if tasks:
            await asyncio.gather(*tasks)
    finally:
        run.end_s = clock()
        if tick_task is not None:
            tick_task.cancel()
            await asyncio.gather(tick_task, return_exceptions=True)
        for t in list(tasks):
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
    return run


def process_cpu_s() -> float:
    """CPU time of this process (all threads), for the client's own load figure."""
    return time.process_time()
