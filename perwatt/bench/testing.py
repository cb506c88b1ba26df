"""A real OpenAI-compatible HTTP server on loopback that streams like the real engines.

It ships in the package (as httpx ships ``MockTransport``) so that tests, demos and the
load-generator benchmark need no GPU and no inference engine::

    from perwatt.bench.testing import FakeOpenAIServer, ServerConfig

    with FakeOpenAIServer(ServerConfig(ttft_s=0.02, itl_s=0.005)) as server:
        print(server.url)          # http://127.0.0.1:PORT/v1

or from a shell: ``python -m perwatt.bench.testing --port 8000 --itl-ms 5``.

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
  in flight, so a benchmark against it has a power curve that rises and falls with the load.

Token text is deterministic in the prompt (the same prompt always yields the same words), so
greedy-decoding comparisons behave as they would on a real engine. Prompt tokens are counted as
whitespace-separated words, which is what the synthetic workload's word list is built to match.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from perwatt.bench.workload import WORDS
from perwatt.errors import ConfigError
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
    #: drive this source's load with in-flight / saturation
    power: SimulatedSource | None = None
    saturation: int = 1

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
        if self.config.power is not None:
            self.config.power.set_load(min(1.0, self.stats.in_flight / self.config.saturation))

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
        await asyncio.sleep(cfg.ttft_s + cfg.itl_s * max(0, len(words) - 1))
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

        if cfg.ttft_s > 0:
            await asyncio.sleep(cfg.ttft_s)
        if chat and cfg.chat_role_chunk:
            send(choice_event("", None, role=True))
        k = cfg.tokens_per_chunk
        chunks = [words[i : i + k] for i in range(0, len(words), k)]
        held = ""  # text of byte-fallback tokens, sent with the next token's chunk
        for n, chunk in enumerate(chunks):
            if n > 0 and cfg.itl_s > 0:
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


def every(n: int, fault: Fault, *, offset: int = 0) -> FaultFn:
    """A fault function: ``fault`` for requests ``offset, offset + n, offset + 2n, ...``."""
    if n < 1:
        raise ConfigError("every() needs n >= 1")
    return lambda i: fault if i >= offset and (i - offset) % n == 0 else None


def main(argv: list[str] | None = None) -> int:
    """Serve until Ctrl-C: ``python -m perwatt.bench.testing --port 8000``."""
    ap = argparse.ArgumentParser(
        prog="python -m perwatt.bench.testing",
        description="A fake OpenAI-compatible server (no model: deterministic words).",
    )
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--model", default="perwatt-test-model")
    ap.add_argument("--ttft-ms", type=float, default=0.0)
    ap.add_argument("--itl-ms", type=float, default=0.0)
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
    try:
        cfg = ServerConfig(
            models=(args.model,),
            ttft_s=args.ttft_ms / 1e3,
            itl_s=args.itl_ms / 1e3,
            tokens_per_chunk=args.tokens_per_chunk,
            usage=args.usage,
            faults=(
                every(args.fail_every, Fault(status=500), offset=args.fail_every - 1)
                if args.fail_every
                else None
            ),
            empty_text_every=args.empty_text_every,
            preempt_on_arrival=args.single_slot,
        )
    except ConfigError as e:
        ap.error(str(e))
    server = FakeOpenAIServer(cfg, host=args.host, port=args.port)
    server.stats.keep_bodies = False
    with server:
        print(f"serving {args.model} at {server.url} (Ctrl-C to stop)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
