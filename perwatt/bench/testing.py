"""A real OpenAI-compatible HTTP server on loopback that streams like the real engines.

It ships in the package (as httpx ships ``MockTransport``) so that tests, demos and the
load-generator benchmark need no GPU and no inference engine::

    from perwatt.bench.testing import FakeOpenAIServer, ServerConfig

    with FakeOpenAIServer(ServerConfig(ttft_s=0.02, itl_s=0.005)) as server:
        print(server.url)          # http://127.0.0.1:PORT/v1

or from a shell: ``python -m perwatt.bench.testing --port 8000 --precision fp8`` (a simulated
FP8 deployment: timing, power and outputs of :data:`PROFILES`), or ``--itl-ms 5`` for a fixed
inter-token latency.

It is a raw asyncio HTTP/1.1 server (keep-alive, chunked transfer encoding) running in its own
thread, so it can serve tens of thousands of SSE chunks per second on one core and never limits
the client under test. What it imitates, each switchable in :class:`ServerConfig`:

* ``GET /v1/models`` and ``/health``; ``POST /v1/completions`` and ``/v1/chat/completions``, streamed (SSE,
  ``data: {...}`` events ending with ``data: [DONE]``) or not;
* a time to first token (``ttft_s``) and inter-token latency (``itl_s``);
* ``usage`` in a final chunk (with empty ``choices``) only when the request asks for it with
  ``stream_options.include_usage`` (vLLM, SGLang, TensorRT-LLM behave so), or always, or never;
* several tokens per chunk (speculative decoding, detokenizer hold-back), empty-text chunks,
  a final chunk with ``finish_reason`` and no text, a role-only first chunk for chat;
* one chunk per token with empty text for tokens that do not complete a character
  (byte-fallback tokens: llama.cpp and others stream them so; ``empty_text_every``), their text
  arriving with the next token's chunk;
* a single-slot server that cuts the stream in flight when the next request arrives, ending it
  with ``[DONE]`` and no ``finish_reason`` (``preempt_on_arrival``);
* EOS: without ``ignore_eos`` or ``min_tokens`` a request stops after ``natural_len`` tokens;
* faults per request, chosen by arrival order: HTTP 4xx/5xx, a connection dropped mid-stream,
  malformed SSE, an error event in the stream, a stream ended early with ``[DONE]`` and no
  ``finish_reason``, a slow response;
* an API key (401 without ``Authorization: Bearer KEY``);
* optionally drives a :class:`perwatt.meter.SimulatedSource`'s load from the number of requests
  in flight, so a benchmark against it has a power curve that rises and falls with the load;
* optionally a :class:`ServingProfile` (``--precision bf16|fp8|int4`` from a shell): a simulated
  deployment whose TTFT grows with the prompt, whose decode step grows with the batch in flight,
  whose power follows its load, and whose outputs drift from BF16's at a set rate per token. Its
  power is served at ``GET /perwatt/power`` so ``perwatt bench --energy-source simulated`` meters
  *this server's* model (labelled ``simulated``; see :mod:`perwatt.meter.served`).

Token text is deterministic in the prompt (the same prompt always yields the same words), so
greedy-decoding comparisons behave as they would on a real engine. Prompt tokens are counted as
whitespace-separated words, which is what the synthetic workload's word list is built to match.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from perwatt.bench.workload import WORDS
from perwatt.errors import ConfigError
from perwatt.hardware import GPUS
from perwatt.meter.served import POWER_PATH, POWER_SCHEMA
from perwatt.meter.simulated import SimulatedSource

# The synthetic workload's frequent-word list: replies read like the prompts the client sends.
_WORDS = WORDS[:75]

UsageMode = Literal["requested", "always", "never"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Fault:
    """What goes wrong with one request.

    ``status``: answer with this HTTP status and an OpenAI-style error body instead of a stream.
    ``drop_after``: send this many content chunks, then abort the TCP connection.
    ``malformed_after``: after this many content chunks send a ``data:`` line that is not JSON.
    ``error_event_after``: after this many content chunks send ``data: {"error": ...}`` and end.
    ``done_after``: after this many content chunks send ``data: [DONE]`` with no ``finish_reason``
    (a stream stopped early that still ends cleanly).
    ``delay_s``: wait this long before answering at all (a slow or hung server).
    """

    status: int | None = None
    drop_after: int | None = None
    malformed_after: int | None = None
    error_event_after: int | None = None
    done_after: int | None = None
    delay_s: float = 0.0

    def __post_init__(self) -> None:
        if self.status is not None and not 400 <= self.status <= 599:
            raise ConfigError(f"fault status must be 4xx or 5xx, got {self.status}")
        if self.delay_s < 0:
            raise ConfigError("fault delay must be >= 0")


@dataclass(frozen=True, slots=True, kw_only=True)
class ServingProfile:
    """Timing, power and output drift of one simulated deployment (a model, not a measurement).

    * TTFT = ``ttft_base_s`` + prompt tokens x ``prefill_s_per_token`` + one decode step;
    * each later token waits one decode step, ``step_s + step_per_seq_s x (in flight - 1)``
      (decode is memory-bound: a step reads the weights once for the whole batch, plus each
      sequence's KV cache), times a deterministic jitter in ``[1 - jitter, 1 + jitter]``;
    * power = ``idle_w + (busy_w - idle_w) x load``, load 0 when idle, ``active_floor`` with one
      sequence in flight, rising linearly to 1 at ``saturation`` sequences;
    * each generated word differs from the BF16 answer with probability ``flip_rate`` (a
      deterministic draw per prompt and position), like a quantized model's greedy output.
    """

    precision: str
    ttft_base_s: float
    prefill_s_per_token: float
    step_s: float
    step_per_seq_s: float
    idle_w: float
    busy_w: float
    active_floor: float
    saturation: int
    flip_rate: float
    jitter: float = 0.1

    def __post_init__(self) -> None:
        times = (self.ttft_base_s, self.prefill_s_per_token, self.step_s, self.step_per_seq_s)
        if any(not 0 <= t < 10 for t in times):
            raise ConfigError("serving profile times must be in [0, 10) s")
        if not 0 <= self.idle_w <= self.busy_w:
            raise ConfigError("serving profile needs 0 <= idle_w <= busy_w")
        if not (0 <= self.active_floor <= 1 and 0 <= self.flip_rate <= 1 and 0 <= self.jitter < 1):
            raise ConfigError("active_floor and flip_rate must be in [0, 1], jitter in [0, 1)")
        if self.saturation < 1:
            raise ConfigError("saturation must be >= 1")

    def step_time_s(self, in_flight: int, rng: random.Random | None = None) -> float:
        base = self.step_s + self.step_per_seq_s * max(0, in_flight - 1)
        if rng is None or self.jitter == 0:
            return base
        return base * (1.0 + self.jitter * (2.0 * rng.random() - 1.0))

    def ttft_time_s(self, n_prompt: int, in_flight: int) -> float:
        return self.ttft_base_s + self.prefill_s_per_token * n_prompt + self.step_time_s(in_flight)

    def load(self, in_flight: int) -> float:
        if in_flight <= 0:
            return 0.0
        if self.saturation == 1:
            return 1.0
        rise = min(1.0, (in_flight - 1) / (self.saturation - 1))
        return self.active_floor + (1.0 - self.active_floor) * rise


# Round numbers of the order of an 8B dense model served on one H100 SXM. Not measurements: a
# demo whose ratios behave like the real ones. Decode reads every weight once per step: 16 GB of
# BF16 weights at the datasheet's 3.35 TB/s take 4.8 ms (perwatt.hardware, H100-SXM), 8 GB of
# FP8 2.4 ms, 4 GB of INT4 1.2 ms; step_s adds ~2 ms of launch and scheduling overhead (INT4
# also dequantizes). Prefill: 2 x 8e9 FLOP per token at ~50 % of the 989.5 (BF16) / 1979 (FP8)
# TFLOP/s peak; weight-only INT4 computes in BF16 and dequantizes first. Busy power at
# saturation is 90 % of the 700 W TDP (perwatt.hardware); idle ~13 % of it, and a lone decode
# stream draws about half the busy swing (memory-bound, the tensor cores mostly wait). Output
# drift: FP8 flips ~2 % of greedy tokens, INT4 ~12 % (a deliberately lossy setting, so the
# accuracy guard has something to catch). INT4's per-sequence dequantization makes it lose to
# FP8 above ~10 sequences, as weight-only formats do once decode stops being memory-bound.
_TDP_W = GPUS["H100-SXM"].tdp_w
PROFILES: dict[str, ServingProfile] = {
    p.precision: p
    for p in (
        ServingProfile(
            precision="bf16",
            ttft_base_s=0.008,
            prefill_s_per_token=32e-6,
            step_s=0.0068,
            step_per_seq_s=0.00025,
            idle_w=0.13 * _TDP_W,
            busy_w=0.9 * _TDP_W,
            active_floor=0.45,
            saturation=32,
            flip_rate=0.0,
        ),
        ServingProfile(
            precision="fp8",
            ttft_base_s=0.008,
            prefill_s_per_token=16e-6,
            step_s=0.0044,
            step_per_seq_s=0.0002,
            idle_w=0.13 * _TDP_W,
            busy_w=0.9 * _TDP_W,
            active_floor=0.45,
            saturation=32,
            flip_rate=0.02,
        ),
        ServingProfile(
            precision="int4",
            ttft_base_s=0.008,
            prefill_s_per_token=40e-6,
            step_s=0.0035,
            step_per_seq_s=0.0003,
            idle_w=0.13 * _TDP_W,
            busy_w=0.9 * _TDP_W,
            active_floor=0.45,
            saturation=32,
            flip_rate=0.12,
        ),
    )
}


FaultFn = Callable[[int], "Fault | None"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerConfig:
    """How the fake server behaves; defaults stream like vLLM with zero latency."""

    models: tuple[str, ...] = ("perwatt-test-model",)
    ttft_s: float = 0.0
    itl_s: float = 0.0
    tokens_per_chunk: int = 1
    #: insert an empty-text chunk after every k content chunks (0: never)
    empty_chunk_every: int = 0
    #: end with a chunk that carries finish_reason and empty text (vLLM, TGI do)
    final_empty_chunk: bool = True
    #: chat: first chunk is ``delta: {"role": "assistant", "content": ""}``
    chat_role_chunk: bool = True
    #: every k-th token (1-based) is a byte-fallback token: its chunk has empty text and its text
    #: comes with the next token's chunk (0: never); needs tokens_per_chunk == 1
    empty_text_every: int = 0
    #: a single-slot server: a new generation request ends the stream in flight with [DONE] and
    #: no finish_reason
    preempt_on_arrival: bool = False
    usage: UsageMode = "requested"
    #: tokens generated when the request neither sets ignore_eos nor min_tokens (None: max_tokens)
    natural_len: int | None = None
    default_max_tokens: int = 16
    api_key: str | None = None
    #: fault for the n-th request (0-based, in arrival order over both generation endpoints)
    faults: FaultFn | None = None
    #: drive this source's load with in-flight / saturation (or the profile's load curve)
    power: SimulatedSource | None = None
    saturation: int = 1
    #: a simulated deployment: timing from its model instead of ttft_s/itl_s, drifted outputs
    profile: ServingProfile | None = None

    def __post_init__(self) -> None:
        if not self.models:
            raise ConfigError("the fake server needs at least one model name")
        if self.ttft_s < 0 or self.itl_s < 0:
            raise ConfigError("latencies must be >= 0")
        if self.tokens_per_chunk < 1:
            raise ConfigError("tokens_per_chunk must be >= 1")
        if self.saturation < 1:
            raise ConfigError("saturation must be >= 1")
        if self.empty_text_every < 0:
            raise ConfigError("empty_text_every must be >= 0")
        if self.empty_text_every and self.tokens_per_chunk != 1:
            raise ConfigError("empty_text_every streams one token per chunk: tokens_per_chunk = 1")


@dataclass(slots=True)
class ServerStats:
    """Counters the tests read back (updated on the server thread)."""

    requests: int = 0
    generation_requests: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    chunks_sent: int = 0
    tokens_sent: int = 0
    #: generation requests answered in full (stream ended with [DONE], or whole JSON sent)
    completed: int = 0
    #: streams ended early with [DONE] and no finish_reason (done_after, preempt_on_arrival)
    cut: int = 0
    bodies: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    keep_bodies: bool = True


_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


def _count_words(text: str) -> int:
    return len(text.split())


class _Aborted(Exception):
    """The handler aborted the connection on purpose (a dropped-connection fault)."""


class FakeOpenAIServer:
    """The server; use as a context manager or call :meth:`start` / :meth:`stop`."""

    def __init__(
        self, config: ServerConfig | None = None, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.config = config or ServerConfig()
        self.host = host
        self._port = port
        self.stats = ServerStats()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle
    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """Base URL including ``/v1``, as users pass it to ``--url``."""
        return f"http://{self.host}:{self._port}/v1"

    def start(self) -> FakeOpenAIServer:
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._run, name="perwatt-fake-openai", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error
        if not self._ready.is_set():
            raise RuntimeError("fake server did not start within 10 s")
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._server = loop.run_until_complete(
                asyncio.start_server(self._on_client, self.host, self._port, backlog=4096)
            )
            self._port = self._server.sockets[0].getsockname()[1]
        except BaseException as e:
            self._error = e
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._shutdown())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        if self._tasks:
            # Aborted transports end most handlers; cancel the ones asleep in a delay.
            _done, pending = await asyncio.wait(list(self._tasks), timeout=0.5)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(RuntimeError):  # loop already closed
            loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._thread = None
        self._loop = None

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ HTTP
    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)  # type: ignore[arg-type]
        self._writers.add(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
                    break
                lines = head.decode("latin-1").split("\r\n")
                try:
                    method, target, _version = lines[0].split(" ", 2)
                except ValueError:
                    await self._send_json(writer, 400, {"error": {"message": "bad request line"}})
                    break
                headers: dict[str, str] = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                length = int(headers.get("content-length", "0") or 0)
                body = await reader.readexactly(length) if length else b""
                keep = await self._handle(method, target.split("?", 1)[0], headers, body, writer)
                if not keep or headers.get("connection", "").lower() == "close":
                    break
        except _Aborted:
            writer.transport.abort()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # Shutdown. Finish quietly: a handler task that ends cancelled makes asyncio's stream
            # callback log a spurious traceback (task.exception() raises on a cancelled task).
            pass
        finally:
            self._writers.discard(writer)
            if task is not None:
                self._tasks.discard(task)  # type: ignore[arg-type]
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    @staticmethod
    def _head(status: int, content_type: str, *, length: int | None) -> bytes:
        framing = (
            f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
        )
        return (
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
            f"Content-Type: {content_type}\r\n{framing}\r\n\r\n"
        ).encode()

    async def _send_json(self, writer: asyncio.StreamWriter, status: int, obj: Any) -> None:
        data = json.dumps(obj).encode()
        writer.write(self._head(status, "application/json", length=len(data)) + data)
        await writer.drain()

    async def _send_error(self, writer: asyncio.StreamWriter, status: int, message: str) -> None:
        err = {"error": {"message": message, "type": "error", "code": status}}
        await self._send_json(writer, status, err)

    async def _handle(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        body: bytes,
        writer: asyncio.StreamWriter,
    ) -> bool:
        cfg = self.config
        self.stats.requests += 1
        if self.stats.keep_bodies:
            self.stats.headers.append(headers)
        if cfg.api_key is not None and headers.get("authorization") != f"Bearer {cfg.api_key}":
            await self._send_error(writer, 401, "invalid API key")
            return True
        if path in ("/health", "/v1/health"):
            # vLLM, SGLang and TGI answer GET /health with 200; some clients probe it first.
            writer.write(self._head(200, "application/json", length=0))
            await writer.drain()
            return True
        if path == "/perwatt/stats":
            # Counters for benchmarks that measure a client by what the server saw.
            st = self.stats
            counts = {
                "requests": st.requests,
                "generation_requests": st.generation_requests,
                "in_flight": st.in_flight,
                "max_in_flight": st.max_in_flight,
                "chunks_sent": st.chunks_sent,
                "tokens_sent": st.tokens_sent,
                "completed": st.completed,
            }
            await self._send_json(writer, 200, counts)
            return True
        if path == POWER_PATH and cfg.power is not None:
            # The simulated power model, for perwatt.meter.served (labelled simulated there).
            energy = cfg.power.read_energy_j()
            power = cfg.power.read_power_w()
            body_out = {
                "schema": POWER_SCHEMA,
                "source": "simulated",
                "precision": cfg.profile.precision if cfg.profile is not None else None,
                "idle_w": cfg.power.idle_w,
                "busy_w": cfg.power.busy_w,
                "devices": {d: {"energy_j": energy[d], "power_w": power[d]} for d in energy},
            }
            await self._send_json(writer, 200, body_out)
            return True
        if path.rstrip("/") == "/v1/models":
            if method != "GET":
                await self._send_error(writer, 405, "use GET")
                return True
            data = [{"id": m, "object": "model", "owned_by": "perwatt"} for m in cfg.models]
            await self._send_json(writer, 200, {"object": "list", "data": data})
            return True
        if path not in ("/v1/completions", "/v1/chat/completions"):
            await self._send_error(writer, 404, f"no route {path}")
            return True
        if method != "POST":
            await self._send_error(writer, 405, "use POST")
            return True
        try:
            req = json.loads(body)
            if not isinstance(req, dict):
                raise ValueError("body is not an object")
        except ValueError as e:
            await self._send_error(writer, 400, f"invalid JSON body: {e}")
            return True
        chat = path.endswith("chat/completions")
        model = req.get("model")
        if model not in cfg.models:
            await self._send_error(writer, 404, f"The model `{model}` does not exist.")
            return True
        if chat:
            msgs = req.get("messages")
            if not isinstance(msgs, list) or not msgs:
                await self._send_error(writer, 400, "messages must be a non-empty list")
                return True
            prompt = " ".join(str(m.get("content", "")) for m in msgs if isinstance(m, dict))
        else:
            p = req.get("prompt")
            if not isinstance(p, str):
                await self._send_error(writer, 400, "prompt must be a string")
                return True
            prompt = p
        max_tokens = req.get("max_completion_tokens", req.get("max_tokens"))
        if max_tokens is None:
            max_tokens = cfg.default_max_tokens
        if not isinstance(max_tokens, int) or max_tokens < 1:
            await self._send_error(
                writer, 400, f"max_tokens must be a positive integer, got {max_tokens}"
            )
            return True
        n_out = max_tokens
        finish = "length"
        forced = bool(req.get("ignore_eos")) or int(req.get("min_tokens") or 0) >= max_tokens
        if cfg.natural_len is not None and not forced and cfg.natural_len < max_tokens:
            n_out = max(int(req.get("min_tokens") or 0), cfg.natural_len)
            finish = "stop"
        index = self.stats.generation_requests
        self.stats.generation_requests += 1
        if self.stats.keep_bodies:
            self.stats.bodies.append(req)
        fault = cfg.faults(index) if cfg.faults is not None else None
        self._enter()
        try:
            if fault is not None and fault.delay_s > 0:
                await asyncio.sleep(fault.delay_s)
            if fault is not None and fault.status is not None:
                await self._send_error(writer, fault.status, f"injected fault for request {index}")
                return True
            n_prompt = _count_words(prompt)
            seed = zlib.crc32(prompt.encode())
            words = [_WORDS[(seed + 7 * i) % len(_WORDS)] for i in range(n_out)]
            if cfg.profile is not None and cfg.profile.flip_rate > 0:
                words = _drift(words, seed, cfg.profile.flip_rate)
            if req.get("stream"):
                opts = req.get("stream_options") or {}
                want_usage = cfg.usage == "always" or (
                    cfg.usage == "requested" and bool(opts.get("include_usage"))
                )
                await self._stream(
                    writer, chat, str(model), index, words, n_prompt, finish, want_usage, fault
                )
            else:
                await self._whole(writer, chat, str(model), index, words, n_prompt, finish)
            return True
        finally:
            self._leave()

    def _enter(self) -> None:
        st = self.stats
        st.in_flight += 1
        st.max_in_flight = max(st.max_in_flight, st.in_flight)
        self._set_power()

    def _leave(self) -> None:
        self.stats.in_flight -= 1
        self._set_power()

    def _set_power(self) -> None:
        cfg = self.config
        if cfg.power is None:
            return
        if cfg.profile is not None:
            cfg.power.set_load(cfg.profile.load(self.stats.in_flight))
        else:
            cfg.power.set_load(min(1.0, self.stats.in_flight / cfg.saturation))

    def _ttft_s(self, n_prompt: int) -> float:
        prof = self.config.profile
        if prof is None:
            return self.config.ttft_s
        return prof.ttft_time_s(n_prompt, self.stats.in_flight)

    def _itl_s(self, rng: random.Random) -> float:
        """One decode step at the batch now in flight (the profile's), else the fixed ITL."""
        prof = self.config.profile
        if prof is None:
            return self.config.itl_s
        return prof.step_time_s(self.stats.in_flight, rng)

    async def _whole(
        self,
        writer: asyncio.StreamWriter,
        chat: bool,
        model: str,
        index: int,
        words: list[str],
        n_prompt: int,
        finish: str,
    ) -> None:
        cfg = self.config
        if cfg.profile is None:
            await asyncio.sleep(cfg.ttft_s + cfg.itl_s * max(0, len(words) - 1))
        else:
            rng = random.Random(index)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self._ttft_s(n_prompt)
            await asyncio.sleep(max(0.0, deadline - loop.time()))
            for _ in range(len(words) - 1):
                deadline += self._itl_s(rng)
                await asyncio.sleep(max(0.0, deadline - loop.time()))
        text = "".join(" " + w for w in words)
        choice: dict[str, Any]
        if chat:
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish,
            }
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        usage = {
            "prompt_tokens": n_prompt,
            "completion_tokens": len(words),
            "total_tokens": n_prompt + len(words),
        }
        obj: dict[str, Any] = {
            "id": f"cmpl-{index}",
            "object": "chat.completion" if chat else "text_completion",
            "created": 0,
            "model": model,
            "choices": [choice],
        }
        if cfg.usage != "never":
            obj["usage"] = usage
        self.stats.tokens_sent += len(words)
        await self._send_json(writer, 200, obj)
        self.stats.completed += 1

    async def _stream(
        self,
        writer: asyncio.StreamWriter,
        chat: bool,
        model: str,
        index: int,
        words: list[str],
        n_prompt: int,
        finish: str,
        want_usage: bool,
        fault: Fault | None,
    ) -> None:
        cfg = self.config
        writer.write(self._head(200, "text/event-stream", length=None))
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{index}"
        obj_name = "chat.completion.chunk" if chat else "text_completion"
        # Pre-rendered JSON around the text keeps the server far cheaper than any client.
        prefix = (
            f'{{"id":"{rid}","object":"{obj_name}","created":0,"model":{json.dumps(model)},'
            '"choices":[{"index":0,'
        )

        def choice_event(text: str, finish_reason: str | None, role: bool = False) -> bytes:
            fr = "null" if finish_reason is None else f'"{finish_reason}"'
            if chat:
                role_part = '"role":"assistant",' if role else ""
                body = f'"delta":{{{role_part}"content":{json.dumps(text)}}},"finish_reason":{fr}'
            else:
                body = f'"text":{json.dumps(text)},"logprobs":null,"finish_reason":{fr}'
            return f"data: {prefix}{body}}}]}}\n\n".encode()

        def send(event: bytes) -> None:
            writer.write(b"%x\r\n%s\r\n" % (len(event), event))
            self.stats.chunks_sent += 1

        ttft = self._ttft_s(n_prompt)
        # With a profile, tokens are due on a schedule (deadline += step) rather than after
        # sleeps: on a busy host every sleep overshoots, and relative sleeps would add it up,
        # slowing every precision alike and shrinking the difference the profile models.
        deadline = asyncio.get_running_loop().time() + ttft
        if ttft > 0:
            await asyncio.sleep(ttft)
        rng = random.Random(index)  # the step jitter: the same run gives the same timings
        if chat and cfg.chat_role_chunk:
            send(choice_event("", None, role=True))
        k = cfg.tokens_per_chunk
        chunks = [words[i : i + k] for i in range(0, len(words), k)]
        held = ""  # text of byte-fallback tokens, sent with the next token's chunk
        for n, chunk in enumerate(chunks):
            if n > 0 and cfg.profile is not None:
                deadline += sum(self._itl_s(rng) for _ in chunk)
                await asyncio.sleep(max(0.0, deadline - asyncio.get_running_loop().time()))
            elif n > 0 and cfg.itl_s > 0:
                await asyncio.sleep(cfg.itl_s * len(chunk))
            cut = cfg.preempt_on_arrival and n > 0 and self.stats.generation_requests > index + 1
            if cut or (
                fault is not None and fault.done_after is not None and n >= fault.done_after
            ):
                # Stopped early, yet ended like a normal stream: [DONE], no finish_reason.
                send(b"data: [DONE]\n\n")
                writer.write(b"0\r\n\r\n")
                await writer.drain()
                self.stats.cut += 1
                return
            if fault is not None:
                if fault.drop_after is not None and n >= fault.drop_after:
                    await writer.drain()
                    raise _Aborted
                if fault.malformed_after is not None and n == fault.malformed_after:
                    send(b'data: {"id": "broken", "choices": [{"text": \n\n')
                if fault.error_event_after is not None and n == fault.error_event_after:
                    err = {"error": {"message": "injected error event", "code": 500}}
                    send(f"data: {json.dumps(err)}\n\n".encode())
                    send(b"data: [DONE]\n\n")
                    writer.write(b"0\r\n\r\n")
                    await writer.drain()
                    return
            last = n == len(chunks) - 1
            fr = finish if last and not cfg.final_empty_chunk else None
            text = held + "".join(" " + w for w in chunk)
            held = ""
            if cfg.empty_text_every and (n + 1) % cfg.empty_text_every == 0 and not last:
                held, text = text, ""
            send(choice_event(text, fr))
            self.stats.tokens_sent += len(chunk)
            if cfg.empty_chunk_every and (n + 1) % cfg.empty_chunk_every == 0 and not last:
                send(choice_event("", None))
            await writer.drain()
        if cfg.final_empty_chunk:
            send(choice_event("", finish))
        if want_usage:
            usage = {
                "prompt_tokens": n_prompt,
                "completion_tokens": len(words),
                "total_tokens": n_prompt + len(words),
            }
            tail = {
                "id": rid,
                "object": obj_name,
                "created": 0,
                "model": model,
                "choices": [],
                "usage": usage,
            }
            send(f"data: {json.dumps(tail)}\n\n".encode())
        send(b"data: [DONE]\n\n")
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        self.stats.completed += 1


def _drift(words: list[str], seed: int, flip_rate: float) -> list[str]:
    """Replace each word with another with probability ``flip_rate``, deterministically in the
    prompt (``seed``) and the position, as a lower precision's greedy output drifts."""
    out = list(words)
    for i in range(len(out)):
        h = zlib.crc32(f"{seed}:{i}".encode())
        if (h & 0xFFFF) < flip_rate * 0x10000:
            out[i] = _WORDS[(seed + 7 * i + 1 + (h >> 16) % 17) % len(_WORDS)]
    return out


def every(n: int, fault: Fault, *, offset: int = 0) -> FaultFn:
    """A fault function: ``fault`` for requests ``offset, offset + n, offset + 2n, ...``."""
    if n < 1:
        raise ConfigError("every() needs n >= 1")
    return lambda i: fault if i >= offset and (i - offset) % n == 0 else None


def main(argv: list[str] | None = None) -> int:
    """Serve until Ctrl-C: ``python -m perwatt.bench.testing --port 8000 --precision bf16``."""
    ap = argparse.ArgumentParser(
        prog="python -m perwatt.bench.testing",
        description="A fake OpenAI-compatible server (no model: deterministic words). Without "
        "--precision it answers as fast as it can (or with --ttft-ms/--itl-ms): a load "
        "generator's test partner. With --precision it simulates a deployment: TTFT that grows "
        "with the prompt, a decode step that grows with the batch in flight, outputs that drift "
        f"from BF16's, and a power model served at {POWER_PATH} (meter it with `perwatt bench "
        "--energy-source simulated`; every figure is labelled simulated). Timings and watts are "
        "round numbers of the order of an 8B model on one H100, not measurements.",
    )
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--model", default="perwatt-test-model")
    ap.add_argument(
        "--precision",
        choices=sorted(PROFILES),
        default=None,
        help="simulate a deployment: fp8 decodes ~1.5x faster than bf16 at the same power and "
        "flips ~2%% of greedy tokens; int4 (weight-only) is faster at small batches, slower at "
        "large ones, and flips ~12%%",
    )
    ap.add_argument(
        "--ttft-ms",
        type=float,
        default=None,
        help="fixed time to first token (with --precision: instead of its model); default 0",
    )
    ap.add_argument(
        "--itl-ms",
        type=float,
        default=None,
        help="fixed inter-token latency (with --precision: instead of its model); default 0",
    )
    ap.add_argument("--tokens-per-chunk", type=int, default=1)
    ap.add_argument("--usage", choices=("requested", "always", "never"), default="requested")
    ap.add_argument(
        "--fail-every",
        type=int,
        default=0,
        metavar="N",
        help="answer every N-th generation request (the N-th, 2N-th, ...) with HTTP 500",
    )
    ap.add_argument(
        "--empty-text-every",
        type=int,
        default=0,
        metavar="K",
        help="stream every K-th token as a byte-fallback token: a chunk with empty text",
    )
    ap.add_argument(
        "--single-slot",
        action="store_true",
        help="cut the stream in flight with [DONE] and no finish_reason when a new request arrives",
    )
    args = ap.parse_args(argv)
    for flag, v in (("--ttft-ms", args.ttft_ms), ("--itl-ms", args.itl_ms)):
        if v is not None and not 0 <= v < 10_000:
            ap.error(f"{flag} must be in [0, 10000) ms, got {v:g}")
    profile: ServingProfile | None = None
    power: SimulatedSource | None = None
    if args.precision is not None:
        profile = PROFILES[args.precision]
        if args.ttft_ms is not None or args.itl_ms is not None:
            # Fixed latencies replace the timing model; outputs and power follow --precision.
            # ttft_time_s adds one step to ttft_base_s, so the base is TTFT minus that step.
            itl_s = (args.itl_ms or 0.0) / 1e3
            profile = replace(
                profile,
                ttft_base_s=max(0.0, (args.ttft_ms or 0.0) / 1e3 - itl_s),
                prefill_s_per_token=0.0,
                step_s=itl_s,
                step_per_seq_s=0.0,
                jitter=0.0,
            )
        power = SimulatedSource(idle_w=profile.idle_w, busy_w=profile.busy_w)
    try:
        cfg = ServerConfig(
            models=(args.model,),
            ttft_s=(args.ttft_ms or 0.0) / 1e3,
            itl_s=(args.itl_ms or 0.0) / 1e3,
            tokens_per_chunk=args.tokens_per_chunk,
            usage=args.usage,
            faults=(
                every(args.fail_every, Fault(status=500), offset=args.fail_every - 1)
                if args.fail_every
                else None
            ),
            empty_text_every=args.empty_text_every,
            preempt_on_arrival=args.single_slot,
            power=power,
            profile=profile,
        )
    except ConfigError as e:
        ap.error(str(e))
    server = FakeOpenAIServer(cfg, host=args.host, port=args.port)
    server.stats.keep_bodies = False
    try:
        server.start()
    except OSError as e:
        print(f"error: cannot serve on {args.host}:{args.port}: {e.strerror or e}", flush=True)
        return 2
    what = (
        f": simulated {args.precision} deployment, power model at "
        f"http://{args.host}:{server.port}{POWER_PATH}"
        if args.precision
        else ""
    )
    try:
        print(f"serving {args.model} at {server.url}{what} (Ctrl-C to stop)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
