"""A light async streaming client for OpenAI-compatible servers.

Why not httpx: the client must never be the bottleneck of a benchmark. A streamed completion is
hundreds of small SSE chunks, and per-chunk overhead decides how many requests and chunks one
core can drive. httpx's streaming path (h11 event parsing, several layers of async iterators)
costs several times more CPU per chunk than reading the socket into a buffer and splitting it
ourselves (see BENCHMARKS.md). So requests go over raw asyncio streams with a
small HTTP/1.1 implementation: keep-alive connection pool, ``Content-Length``, chunked and
read-until-close bodies, TLS via :mod:`ssl`. httpx is still used for the one-off ``/v1/models``
discovery, where convenience wins.

Timing of one streamed request (``perf_counter``, stamped once per socket read)::

    send ─────── first token chunk ─ chunk ── chunk ─ … ─ last chunk ── [DONE]
    │◄──── TTFT ────►│◄── ITL ──►│◄ ITL ►│                              │
    │◄──────────────────────────── E2EL ──────────────────────────────────►│

* A *token chunk* is a chunk with a choice that carries text (``text``, ``delta.content``,
  ``delta.reasoning_content`` or ``delta.reasoning``), or that carries no text and no
  ``finish_reason``: servers that stream one chunk per token (llama.cpp and others) send empty
  text for a byte-fallback token that does not complete a character yet, and skipping those
  under-counts tokens by about a third on random-weight models. Not tokens: a text-less chunk
  that only carries the ``finish_reason``, a chat stream's opening role-only chunk (counting it,
  as ``vllm bench serve`` does for chat, makes TTFT look better than what a user sees), and the
  usage chunk (no choice).
* TTFT is the arrival of the first token chunk; ITLs are the gaps between successive token
  chunks. A chunk with several tokens yields one ITL (what the client observes), as in vLLM's
  benchmark.
* Output tokens: ``usage.completion_tokens`` when the server sends usage (we ask with
  ``stream_options.include_usage``; it stays authoritative), else the number of token chunks;
  the record says which (``token_count_source``) and keeps both counts, since they disagree on
  servers that put several tokens in one chunk.
* An answer that ends cleanly (``[DONE]``) but without a ``finish_reason``, with fewer tokens
  than a fixed-length request asked for, was stopped by the server, not finished: it is counted
  as ``truncated`` (single-slot servers cut the stream in flight when the next request arrives).

Failures never raise: they come back as a :class:`RequestRecord` with ``error_kind`` set
(``http_<status>``, ``connect_error``, ``connection_dropped``, ``malformed_sse``,
``server_error_event``, ``timeout``, ``empty_response``, ``truncated``, ``protocol_error``), so the
run counts them by kind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from perwatt.errors import ConfigError

Endpoint = Literal["completions", "chat"]

# Per-request error kinds, in the order the report lists them.
ERROR_KINDS = (
    "connect_error",
    "connection_dropped",
    "malformed_sse",
    "server_error_event",
    "timeout",
    "empty_response",
    "truncated",
    "protocol_error",
)


@dataclass(slots=True, kw_only=True)
class RequestRecord:
    """What happened to one request. Times are seconds; ``start_s`` is on the caller's clock."""

    index: int
    start_s: float = 0.0
    ttft_s: float | None = None
    itl_s: list[float] = field(default_factory=list)
    e2el_s: float | None = None
    prompt_tokens: int = 0
    prompt_tokens_source: Literal["usage", "workload"] = "workload"
    output_tokens: int = 0
    output_tokens_chunks: int = 0
    output_tokens_usage: int | None = None
    token_count_source: Literal["usage", "chunks"] = "chunks"
    finish_reason: str | None = None
    generated_chars: int = 0
    http_status: int | None = None
    error_kind: str | None = None
    error_detail: str = ""
    #: absolute time (caller's clock) of the first token, for the steady-state window
    first_token_at_s: float | None = None
    #: absolute time (caller's clock) the request finished, successfully or not
    end_at_s: float | None = None

    @property
    def ok(self) -> bool:
        return self.error_kind is None

    @property
    def tpot_s(self) -> float | None:
        """(E2EL - TTFT) / (output_tokens - 1), vLLM's definition; None below 2 tokens."""
        if self.ttft_s is None or self.e2el_s is None or self.output_tokens < 2:
            return None
        return (self.e2el_s - self.ttft_s) / (self.output_tokens - 1)


class _ProtocolError(Exception):
    pass


class _Dropped(Exception):
    pass


@dataclass(slots=True, eq=False)
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    reused: bool = False


class OpenAIClient:
    """Streams requests to one server. Create and use it inside one event loop; ``aclose()``."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 600.0,
        clock: Any = time.perf_counter,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                f"--url {base_url!r} is not an http(s) URL; e.g. http://127.0.0.1:8000/v1"
            )
        self.base_url = base_url.rstrip("/")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl: ssl.SSLContext | None = (
            ssl.create_default_context() if parts.scheme == "https" else None
        )
        self.base_path = parts.path.rstrip("/")
        self.timeout_s = timeout_s
        self.clock = clock
        host_header = self.host if parts.port is None else f"{self.host}:{parts.port}"
        auth = f"Authorization: Bearer {api_key}\r\n" if api_key else ""
        self._header_tail = (
            f"Host: {host_header}\r\nUser-Agent: perwatt-bench\r\n"
            f"Content-Type: application/json\r\nAccept: text/event-stream\r\n{auth}"
        )
        self._idle: list[_Conn] = []
        self._all: set[_Conn] = set()
        self._closed = False

    # ------------------------------------------------------------------ connections
    async def _connect(self) -> _Conn:
        reader, writer = await asyncio.open_connection(
            self.host, self.port, ssl=self.ssl, limit=1 << 20
        )
        conn = _Conn(reader, writer)
        self._all.add(conn)
        return conn

    def _release(self, conn: _Conn, reusable: bool) -> None:
        if reusable and not self._closed:
            conn.reused = True
            self._idle.append(conn)
        else:
            self._discard(conn)

    def _discard(self, conn: _Conn) -> None:
        self._all.discard(conn)
        conn.writer.close()

    async def aclose(self) -> None:
        self._closed = True
        conns = list(self._all)
        self._idle.clear()
        self._all.clear()
        for c in conns:
            c.writer.close()
        for c in conns:
            with contextlib.suppress(Exception):
                await c.writer.wait_closed()

    # ------------------------------------------------------------------ requests
    def build_payload(
        self,
        endpoint: Endpoint,
        model: str,
        prompt: str,
        max_tokens: int | None,
        *,
        stream: bool = True,
        ignore_eos: bool = False,
        extra: Mapping[str, Any] | None = None,
    ) -> bytes:
        body: dict[str, Any] = {"model": model, "stream": stream}
        if endpoint == "chat":
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        if max_tokens is not None:
            # Fixed output length: max_tokens caps it, ignore_eos (vLLM, SGLang, TRT-LLM) and
            # min_tokens (vLLM, TGI) stop an early EOS; servers ignore what they do not know.
            body["max_tokens"] = max_tokens
            if ignore_eos:
                body["ignore_eos"] = True
                body["min_tokens"] = max_tokens
        if stream:
            body["stream_options"] = {"include_usage": True}
        body["temperature"] = 0.0
        if extra:
            body.update(extra)
        return json.dumps(body).encode()

    async def request(
        self,
        endpoint: Endpoint,
        payload: bytes,
        *,
        index: int = 0,
        prompt_tokens: int = 0,
        stream: bool = True,
        expected_output_tokens: int | None = None,
    ) -> RequestRecord:
        """Send one request; never raises for server or network failures (see module doc).

        ``expected_output_tokens``: the fixed length the request asked for (ignore_eos /
        min_tokens); an answer that ends without a ``finish_reason`` before it is ``truncated``.
        """
        rec = RequestRecord(index=index, prompt_tokens=prompt_tokens)
        path = f"{self.base_path}/{'chat/completions' if endpoint == 'chat' else 'completions'}"
        head = (
            f"POST {path} HTTP/1.1\r\n{self._header_tail}Content-Length: {len(payload)}\r\n\r\n"
        ).encode()
        rec.start_s = self.clock()
        try:
            await asyncio.wait_for(
                self._exchange(head + payload, rec, stream, endpoint == "chat"), self.timeout_s
            )
        except asyncio.TimeoutError:
            rec.error_kind = "timeout"
            rec.error_detail = f"no complete response within {self.timeout_s:g} s"
        rec.end_at_s = self.clock()
        if rec.error_kind is None and rec.e2el_s is None:
            rec.e2el_s = rec.end_at_s - rec.start_s
        if (
            rec.error_kind is None
            and rec.finish_reason is None
            and expected_output_tokens is not None
            and rec.output_tokens < expected_output_tokens
        ):
            # Every OpenAI-compatible server ends a finished answer with a finish_reason
            # ("length" at max_tokens); a short answer without one was stopped, not finished.
            rec.error_kind = "truncated"
            rec.error_detail = (
                f"the answer ended without a finish_reason after {rec.output_tokens} of "
                f"{expected_output_tokens} tokens asked for"
            )
        return rec

    async def _exchange(self, data: bytes, rec: RequestRecord, stream: bool, chat: bool) -> None:
        for attempt in (0, 1):
            conn: _Conn | None = None
            if self._idle:
                conn = self._idle.pop()
            else:
                try:
                    conn = await self._connect()
                except OSError as e:
                    rec.error_kind = "connect_error"
                    rec.error_detail = f"{type(e).__name__}: {e}"
                    return
            reusable = False
            try:
                conn.writer.write(data)
                try:
                    head = await conn.reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError) as e:
                    # A keep-alive connection the server closed while idle: retry once, fresh.
                    if conn.reused and attempt == 0:
                        self._discard(conn)
                        conn = None
                        continue
                    raise _Dropped("connection closed before the response headers") from e
                reusable = await self._response(conn, head, rec, stream, chat)
                return
            except asyncio.CancelledError:
                reusable = False
                raise
            except _Dropped as e:
                rec.error_kind = "connection_dropped"
                rec.error_detail = str(e)
                return
            except (ConnectionError, asyncio.IncompleteReadError, OSError) as e:
                rec.error_kind = "connection_dropped"
                rec.error_detail = f"{type(e).__name__}: {e}"
                return
            except (_ProtocolError, asyncio.LimitOverrunError, ValueError) as e:
                rec.error_kind = "protocol_error"
                rec.error_detail = str(e)[:300]
                return
            finally:
                if conn is not None:
                    self._release(conn, reusable)

    async def _response(
        self, conn: _Conn, head: bytes, rec: RequestRecord, stream: bool, chat: bool
    ) -> bool:
        """Read one response; return whether the connection can be reused."""
        lines = head.decode("latin-1").split("\r\n")
        status_line = lines[0].split(" ", 2)
        if len(status_line) < 2 or not status_line[0].startswith("HTTP/"):
            raise _ProtocolError(f"not an HTTP response: {lines[0][:80]!r}")
        status = int(status_line[1])
        rec.http_status = status
        chunked = False
        length: int | None = None
        close = status_line[0] == "HTTP/1.0"
        json_body = False
        for line in lines[1:]:
            k, _, v = line.partition(":")
            k = k.strip().lower()
            if k == "content-type":
                json_body = "json" in v.lower()
            elif k == "transfer-encoding":
                chunked = "chunked" in v.lower()
            elif k == "content-length":
                length = int(v.strip())
            elif k == "connection":
                close = v.strip().lower() == "close"
        body = _Body(conn.reader, chunked, length)
        if status != 200:
            text = await body.read_all()
            rec.error_kind = f"http_{status}"
            rec.error_detail = error_message(text)
            return not close and body.done
        if stream and not json_body:
            await self._read_sse(body, rec, chat)
        else:
            self._read_whole(await body.read_all(), rec, chat)
        # A body read to its framed end leaves the connection clean for the next request; one that
        # stopped early (error event, malformed SSE) or ends at close cannot be reused.
        return body.done and not close and (chunked or length is not None)

    async def _read_sse(self, body: _Body, rec: RequestRecord, chat: bool) -> None:
        clock = self.clock
        start = rec.start_s
        last_token_t: float | None = None
        chunks = 0
        chars = 0
        data_lines: list[bytes] = []
        pending = b""
        saw_done = False
        while True:
            piece = await body.read_some()
            if piece is None:
                break
            now = clock()
            pending += piece
            *complete, pending = pending.split(b"\n")
            for raw in complete:
                line = raw.rstrip(b"\r")
                if line:
                    if line.startswith(b"data:"):
                        data_lines.append(line[5:].lstrip(b" "))
                    continue  # comments (":ping"), event:, id:, retry: carry no tokens
                if not data_lines:
                    continue
                data = data_lines[0] if len(data_lines) == 1 else b"\n".join(data_lines)
                data_lines = []
                if data == b"[DONE]":
                    saw_done = True
                    continue
                try:
                    obj = json.loads(data)
                except ValueError:
                    rec.error_kind = "malformed_sse"
                    rec.error_detail = f"not JSON: {data[:120]!r}"
                    return
                if not isinstance(obj, dict):
                    rec.error_kind = "malformed_sse"
                    rec.error_detail = f"SSE data is not an object: {data[:120]!r}"
                    return
                if "error" in obj and not obj.get("choices"):
                    rec.error_kind = "server_error_event"
                    rec.error_detail = error_message(data)
                    return
                choices = obj.get("choices")
                if choices and isinstance(choices[0], dict):
                    c0 = choices[0]
                    finish = c0.get("finish_reason")
                    role_only = False
                    if chat:
                        delta = c0.get("delta") or {}
                        text = (
                            delta.get("content")
                            or delta.get("reasoning_content")
                            or delta.get("reasoning")
                            or ""
                        )
                        # The opening {"role": "assistant", "content": ""} announces the
                        # answer; it is no token.
                        role_only = chunks == 0 and "role" in delta
                    else:
                        text = c0.get("text") or ""
                    if finish:
                        rec.finish_reason = finish
                    # One chunk per generated token: a chunk whose text is empty is still a
                    # token (a byte-fallback token that completes no character yet) unless it
                    # only carries the finish_reason or the chat role.
                    if text or not (finish or role_only):
                        chunks += 1
                        chars += len(text)
                        if last_token_t is None:
                            rec.ttft_s = now - start
                            rec.first_token_at_s = now
                        else:
                            rec.itl_s.append(now - last_token_t)
                        last_token_t = now
                usage = obj.get("usage")
                if isinstance(usage, dict):
                    ct = usage.get("completion_tokens")
                    if isinstance(ct, int):
                        rec.output_tokens_usage = ct
                    pt = usage.get("prompt_tokens")
                    if isinstance(pt, int) and pt > 0:
                        rec.prompt_tokens = pt
                        rec.prompt_tokens_source = "usage"
            if saw_done:
                break
        end = clock()
        rec.output_tokens_chunks = chunks
        rec.generated_chars = chars
        if not saw_done and not body.done:
            rec.error_kind = "connection_dropped"
            rec.error_detail = f"stream ended after {chunks} token chunks without [DONE]"
            return
        if not saw_done and rec.finish_reason is None:
            # A close-delimited body (HTTP/1.0, Connection: close) that a crashing server or proxy
            # ends looks complete at the transport level; with neither [DONE] nor a finish_reason
            # the answer is cut off, and counting it would understate J per token.
            rec.error_kind = "connection_dropped"
            rec.error_detail = (
                f"stream ended after {chunks} token chunks without [DONE] or a finish_reason"
            )
            return
        rec.e2el_s = end - start
        if rec.output_tokens_usage is not None:
            rec.output_tokens = rec.output_tokens_usage
            rec.token_count_source = "usage"
        else:
            rec.output_tokens = chunks
            rec.token_count_source = "chunks"
        if rec.output_tokens == 0 and chunks == 0:
            rec.error_kind = "empty_response"
            rec.error_detail = "the stream carried no text"

    def _read_whole(self, text: bytes, rec: RequestRecord, chat: bool) -> None:
        rec.e2el_s = self.clock() - rec.start_s
        try:
            obj = json.loads(text)
            c0 = obj["choices"][0]
            out = (c0.get("message") or {}).get("content") if chat else c0.get("text")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            rec.error_kind = "protocol_error"
            rec.error_detail = f"unexpected response body: {text[:120]!r}"
            return
        out = out or ""
        rec.generated_chars = len(out)
        rec.finish_reason = c0.get("finish_reason")
        rec.output_tokens_chunks = 1 if out else 0
        usage = obj.get("usage")
        if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
            rec.output_tokens_usage = usage["completion_tokens"]
            rec.output_tokens = usage["completion_tokens"]
            rec.token_count_source = "usage"
            if isinstance(usage.get("prompt_tokens"), int) and usage["prompt_tokens"] > 0:
                rec.prompt_tokens = usage["prompt_tokens"]
                rec.prompt_tokens_source = "usage"
        else:
            # No usage and no stream: the only count is whitespace words, an approximation.
            rec.output_tokens = len(out.split())
            rec.token_count_source = "chunks"
        if not out:
            rec.error_kind = "empty_response"
            rec.error_detail = "the response carried no text"


class _Body:
    """Incremental reader of one HTTP/1.1 response body (chunked, sized or until close)."""

    __slots__ = ("_buf", "_eof", "_remaining", "chunked", "done", "reader")

    def __init__(self, reader: asyncio.StreamReader, chunked: bool, length: int | None) -> None:
        self.reader = reader
        self.chunked = chunked
        self._remaining = length  # sized bodies: bytes left; None: until close (or chunked)
        self._buf = b""
        self.done = length == 0 and not chunked
        self._eof = False

    async def _fill(self) -> bool:
        data = await self.reader.read(1 << 16)
        if not data:
            self._eof = True
            return False
        self._buf += data
        return True

    async def read_some(self) -> bytes | None:
        """The next piece of body bytes, or None at the end of the body (or EOF)."""
        if self.done:
            return None
        if not self.chunked:
            if self._remaining is None:
                data = await self.reader.read(1 << 16)
                if not data:
                    self.done = True  # read-until-close bodies end at EOF
                    return None
                return data
            if self._remaining == 0:
                self.done = True
                return None
            data = await self.reader.read(min(self._remaining, 1 << 16))
            if not data:
                return None  # EOF before Content-Length: a dropped connection (done stays False)
            self._remaining -= len(data)
            if self._remaining == 0:
                self.done = True
            return data
        # Chunked: decode every complete chunk already buffered in one go.
        out: list[bytes] = []
        while True:
            buf = self._buf
            pos = 0
            while True:
                nl = buf.find(b"\r\n", pos)
                if nl < 0:
                    break
                size_field = buf[pos:nl].split(b";", 1)[0]
                try:
                    size = int(size_field, 16)
                except ValueError:
                    raise _ProtocolError(f"bad chunk size {size_field[:20]!r}") from None
                if size == 0:
                    if buf.find(b"\r\n\r\n", nl) < 0:
                        break  # last-chunk trailer not complete yet
                    self._buf = b""
                    self.done = True
                    return b"".join(out) if out else None
                if len(buf) < nl + 2 + size + 2:
                    break
                out.append(buf[nl + 2 : nl + 2 + size])
                pos = nl + 2 + size + 2
            self._buf = buf[pos:]
            if out:
                return b"".join(out)
            if self._eof or not await self._fill():
                return None

    async def read_all(self) -> bytes:
        parts: list[bytes] = []
        while True:
            p = await self.read_some()
            if p is None:
                return b"".join(parts)
            parts.append(p)


def error_message(body: bytes | str, *, limit: int = 300) -> str:
    """A server's own error text on one line: an OpenAI ``error.message`` (or ``message``),
    else the body; at most ``limit`` characters."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        obj = json.loads(text)
    except ValueError:
        obj = text
    err = obj.get("error", obj) if isinstance(obj, dict) else obj
    msg = err.get("message", err) if isinstance(err, dict) else err
    if isinstance(msg, dict) or msg is None:  # JSON, but no message in it: show the body
        msg = text
    return " ".join(str(msg).split())[:limit]


def fetch_models(
    base_url: str, *, api_key: str | None = None, timeout_s: float = 10.0
) -> list[str]:
    """Model ids served at ``base_url`` (``GET /models``). Raises :class:`ConfigError` when the
    server cannot be reached or does not answer like an OpenAI-compatible server.
    """
    # lazy: httpx costs ~0.1 s of start-up; only talking to a server needs it
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    url = base_url.rstrip("/") + "/models"
    try:
        r = httpx.get(url, headers=headers, timeout=timeout_s)
    except httpx.HTTPError as e:
        raise ConfigError(
            f"cannot reach the server at {base_url} ({type(e).__name__}: {e}); "
            "is it running, and does --url include /v1?"
        ) from None
    if r.status_code in (401, 403):
        raise ConfigError(f"{url} answered {r.status_code}: pass a valid --api-key")
    if r.status_code != 200:
        raise ConfigError(
            f"{url} answered HTTP {r.status_code}; is this an OpenAI-compatible server "
            "and does --url end with /v1?"
        )
    try:
        data = r.json()["data"]
        return [str(m["id"]) for m in data]
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"{url} did not return an OpenAI model list") from None


def resolve_model(base_url: str, model: str | None, *, api_key: str | None = None) -> str:
    """The model to benchmark: ``model`` if the server serves it, or the only/first served one."""
    models = fetch_models(base_url, api_key=api_key)
    if not models:
        raise ConfigError(f"{base_url}/models lists no model; pass --model")
    if model is None:
        return models[0]
    if model not in models:
        raise ConfigError(
            f"model {model!r} is not served at {base_url}; available: {', '.join(models)}"
        )
    return model
