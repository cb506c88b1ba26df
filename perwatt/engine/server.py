"""``perwatt serve``: the built-in engine behind an OpenAI-compatible HTTP API.

Endpoints (the subset benchmark clients and most SDKs use, shaped like vLLM's)::

    GET  /v1/models              the one served model
    POST /v1/completions         prompt (text or token ids) -> text, streaming or not
    POST /v1/chat/completions    messages -> assistant message, streaming or not
    GET  /health                 200 while the engine thread is up, else 503
    GET  /metrics                Prometheus text: running/waiting requests, slots, counters

Streaming is Server-Sent Events exactly as vLLM sends them: one ``data: {json}\\n\\n`` chunk per
generated token (text may be empty while a multi-byte character is incomplete), the finish reason
on the chunk of the last token, then — when ``stream_options.include_usage`` is set — one chunk
with ``"choices": []`` and ``usage``, and finally ``data: [DONE]``. Benchmark clients time
inter-token latency from these chunks, so one chunk per token is a contract, not a detail.

Threads, and why::

    event loop (uvicorn)                          engine thread (only one touching torch)
    ─ parse JSON, tokenize ── Request ──▶ Batcher queue ──▶ admit, prefill, decode, sample
    ◀── asyncio.Queue ◀── loop.call_soon_threadsafe(event) ◀── per-token callback
    ─ detokenize, write SSE

A decode step holds the GIL only between kernel launches, so HTTP keeps flowing while the GPU
works; nothing in the event loop ever waits on the device. A client that disconnects cancels its
request; the batcher frees the slot at the next step boundary.

Errors are OpenAI-style JSON ``{"error": {"message", "type", "param", "code"}}``: 400 for bad
JSON, bad parameters or a prompt that does not fit ``max_seq_len``; 404 for an unknown model.
``param`` names the offending field as vLLM does (``max_completion_tokens``,
``messages[1].content``), and every check runs before a streaming response starts, so a bad
request is one JSON error, never an SSE stream that fails midway.

The server binds 127.0.0.1 unless told otherwise: it has no authentication.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from perwatt.engine.batcher import Batcher, Event, Request, SamplingParams
from perwatt.errors import ConfigError

if TYPE_CHECKING:
    from starlette.applications import Starlette

SERVER_EXTRA_HINT = "pip install perwatt[server]"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
# OpenAI's chat API takes top_logprobs "between 0 and 20" (platform.openai.com/docs/api-reference
# /chat/create); the batcher's SamplingParams has the same bound.
MAX_TOP_LOGPROBS = 20


class Tokenizer(Protocol):
    """Text <-> token ids. The engine's tokenizer (or its byte-level fallback) implements it."""

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


def require_server_deps() -> None:
    """Raise a one-line :class:`ConfigError` naming the extra when starlette/uvicorn are absent."""
    missing = []
    for mod in ("starlette", "uvicorn"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise ConfigError(f"perwatt serve needs {' and '.join(missing)}: {SERVER_EXTRA_HINT}")


# ---------------------------------------------------------------------- errors
class APIError(Exception):
    """An error answered as OpenAI-style JSON with an HTTP status."""

    def __init__(self, status: int, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param

    @property
    def kind(self) -> str:
        return {
            400: "BadRequestError",
            404: "NotFoundError",
            413: "BadRequestError",
            500: "InternalServerError",
            503: "ServiceUnavailableError",
        }.get(self.status, "BadRequestError")

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.status,
            }
        }


def _sse(doc: Mapping[str, Any]) -> bytes:
    """One Server-Sent Event, compact JSON as vLLM (pydantic) writes it."""
    return b"data: " + json.dumps(doc, separators=(",", ":")).encode() + b"\n\n"


# ---------------------------------------------------------------------- text
class IncrementalDetokenizer:
    """Turn a growing list of token ids into text deltas without splitting characters.

    As vLLM (and transformers' ``TextStreamer``) do: decode a short window
    (``prefix_offset``..end) and emit only what goes beyond the already-emitted part, once it no
    longer ends in U+FFFD (a byte-level or byte-fallback token that stops inside a UTF-8
    character decodes to that; its bytes are held until the character completes).

    The window starts with the last few prompt tokens (``prompt_ids``), special ones included,
    so a tokenizer that strips the leading space of a decoded text (SentencePiece ``▁`` in
    Llama-2/Mistral) strips it from prompt context, not from the first generated word. Generated
    special tokens (EOS, ...) are left out of the text, as vLLM's ``skip_special_tokens``.
    """

    #: Prompt tokens kept as context: enough for any decoder's look-behind (vLLM keeps 5).
    CONTEXT_TOKENS = 6

    def __init__(self, tokenizer: Tokenizer, prompt_ids: Sequence[int] = ()) -> None:
        self.tok = tokenizer
        self._decode: Callable[[Sequence[int]], str] = getattr(
            tokenizer, "decode_with_special", tokenizer.decode
        )
        self._special: frozenset[int] = frozenset(getattr(tokenizer, "special_ids", ()))
        self.ids: list[int] = list(prompt_ids[-self.CONTEXT_TOKENS :]) if prompt_ids else []
        self.prefix_offset = 0
        self.read_offset = len(self.ids)
        self.text = ""

    def push(self, token_id: int) -> str:
        if token_id in self._special:
            return ""
        self.ids.append(token_id)
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        full = self._decode(self.ids[self.prefix_offset :])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            delta = full[len(prefix) :]
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)
            self.text += delta
            return delta
        return ""

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character at the very end: the request
        stopped inside it, so its bytes are shown as U+FFFD, as vLLM and transformers do)."""
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        full = self._decode(self.ids[self.prefix_offset :])
        delta = full[len(prefix) :] if len(full) > len(prefix) else ""
        self.prefix_offset = self.read_offset = len(self.ids)
        self.text += delta
        return delta


class VisibleByteTokenizer:
    """A byte-level tokenizer whose ids beyond the 256 bytes decode to visible text.

    Random-weight shapes use the engine's byte tokenizer: ids 0..255 are UTF-8 bytes and every
    other id (most of a 128k vocabulary) decodes to nothing. A server whose tokens are mostly
    invisible breaks every benchmark client, which times TTFT and inter-token latency from chunks
    that carry text. So the server renders such an id as ``<t1234>`` (BOS/EOS stay invisible):
    one token, one piece of text, as with a real vocabulary.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.kind = "byte-visible"
        self.special_ids: frozenset[int] = frozenset(getattr(inner, "special_ids", ()))
        self.eos_ids: tuple[int, ...] = tuple(getattr(inner, "eos_ids", ()))

    def encode(self, text: str) -> list[int]:
        return list(self.inner.encode(text))

    def decode(self, ids: Sequence[int]) -> str:
        parts: list[str] = []
        run = bytearray()
        for i in ids:
            if 0 <= i < 256 and i not in self.special_ids:
                run.append(i)
                continue
            if run:
                parts.append(_visible_bytes(bytes(run), at_end=False))
                run.clear()
            if i not in self.special_ids:
                parts.append(f"<t{i}>")
        if run:
            parts.append(_visible_bytes(bytes(run), at_end=True))
        return "".join(parts)

    def token_bytes(self, token_id: int) -> bytes:
        if 0 <= token_id < 256 and token_id not in self.special_ids:
            return bytes([token_id])
        return self.decode([token_id]).encode("utf-8")


def _incomplete_tail(data: bytes) -> int:
    """Length of a UTF-8 sequence that ``data`` ends in the middle of (0 if none)."""
    for k in range(1, min(3, len(data)) + 1):
        lead = data[-k]
        if 0x80 <= lead < 0xC0:
            continue  # a continuation byte: look further back for the lead
        need = 0  # bytes in the character this lead byte starts (0: not a lead byte)
        if 0xC2 <= lead < 0xE0:
            need = 2
        elif 0xE0 <= lead < 0xF0:
            need = 3
        elif 0xF0 <= lead < 0xF5:
            need = 4
        return k if need > k else 0
    return 0


def _visible_bytes(data: bytes, *, at_end: bool) -> str:
    """UTF-8 text of random byte tokens, with every byte that cannot be part of a character
    written ``<0xNN>`` (SentencePiece's name for a byte piece) instead of U+FFFD, so a stream
    never carries replacement characters for bytes that are simply not text. A character still
    being built at the very end (``at_end``) stays U+FFFD: that is the mark the incremental
    detokenizer holds bytes back on until the character completes."""
    tail = _incomplete_tail(data) if at_end else 0
    body = data[: len(data) - tail]
    text = "".join(
        f"<0x{ord(c) - 0xDC00:02X}>" if 0xDC80 <= ord(c) <= 0xDCFF else c
        for c in body.decode("utf-8", errors="surrogateescape")
    )
    return text + ("\ufffd" if tail else "")


def serving_tokenizer(tokenizer: Any) -> Any:
    """The tokenizer the server uses: the engine's, with byte tokenizers made visible."""
    return (
        VisibleByteTokenizer(tokenizer) if getattr(tokenizer, "kind", "") == "byte" else tokenizer
    )


def render_chat(tokenizer: Any, messages: list[dict[str, Any]]) -> list[int]:
    """Token ids for a chat: the checkpoint's own template when it has one, else a plain one.

    The checkpoint's template (see :mod:`perwatt.engine.chat_template`) is what vLLM and
    transformers use; one that refuses the conversation (e.g. roles that do not alternate)
    raises :class:`ValueError` with its message. The plain template (``<|role|>\\ncontent\\n``
    per message, then ``<|assistant|>\\n``) is what checkpoints without one and random-weight
    shapes get; energy per token does not depend on it.
    """
    apply = getattr(tokenizer, "apply_chat_template", None)
    if callable(apply):
        out = apply(messages)
        if out is not None:
            return [int(t) for t in out]
    text = "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages) + "<|assistant|>\n"
    return list(tokenizer.encode(text))


# ---------------------------------------------------------------------- request parsing
def _get(body: Mapping[str, Any], key: str, types: tuple[type, ...], default: Any) -> Any:
    v = body.get(key, default)
    if v is None:
        return default
    if isinstance(v, bool) and bool not in types:
        raise APIError(400, f"'{key}' must be {'/'.join(t.__name__ for t in types)}", param=key)
    if not isinstance(v, types):
        raise APIError(400, f"'{key}' must be {'/'.join(t.__name__ for t in types)}", param=key)
    return v


def parse_messages(messages: Any) -> list[dict[str, str]]:
    """Chat ``messages`` as ``[{"role", "content"}]`` with text content, or a 400 naming the field.

    Every message needs a string ``role``. ``content`` is a string, a list of text parts
    (``[{"type": "text", "text": ...}]``, joined with "\n" as vLLM joins them), or null/missing,
    read as "" for every role as vLLM reads it (an assistant turn that only made tool calls, a
    tool turn with no output). Another type, or a non-text part (an image), is refused rather
    than dropped: that would measure a different prompt than the client sent. The error names
    the field the way vLLM's validation does (``messages[1].content``).
    """
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "'messages' must be a non-empty list", param="messages")
    out: list[dict[str, str]] = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise APIError(400, f"{where} must be an object with 'role' and 'content'", param=where)
        role = m.get("role")
        if not isinstance(role, str) or not role:
            raise APIError(
                400, f"{where}.role is required: a string such as 'user'", param=f"{where}.role"
            )
        content = m.get("content")
        if content is None:
            content = ""
        if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
            texts: list[str] = []
            for j, part in enumerate(content):
                pwhere = f"{where}.content[{j}]"
                if not isinstance(part, dict):
                    raise APIError(
                        400,
                        f"{pwhere} must be an object {{'type': 'text', 'text': ...}}",
                        param=pwhere,
                    )
                kind = part.get("type", "text")
                if kind != "text":
                    raise APIError(
                        400,
                        f"{pwhere} is of type {kind!r}: only text parts are supported",
                        param=pwhere,
                    )
                if not isinstance(part.get("text"), str):
                    raise APIError(400, f"{pwhere}.text must be a string", param=f"{pwhere}.text")
                texts.append(part["text"])
            content = "\n".join(texts)
        if not isinstance(content, str):
            raise APIError(
                400,
                f"{where}.content must be a string or a list of text parts, got "
                f"{type(content).__name__}",
                param=f"{where}.content",
            )
        out.append({"role": role, "content": content})
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class ParsedRequest:
    prompt_ids: list[int]
    params: SamplingParams
    stream: bool
    include_usage: bool
    chat: bool
    logprobs_format: str | None  # "completions" | "chat" | None


class OpenAIServer:
    """The HTTP layer over a running :class:`Batcher`. Build the app with :meth:`app`."""

    def __init__(
        self,
        batcher: Batcher,
        tokenizer: Tokenizer,
        *,
        model_name: str,
        max_seq_len: int,
        vocab_size: int | None = None,
        aliases: Sequence[str] = (),
    ) -> None:
        self.batcher = batcher
        self.vocab_size = vocab_size
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.names = {model_name, *aliases}
        self.max_seq_len = max_seq_len
        self.created = int(time.time())

    # ------------------------------------------------------------------ parsing
    def _check_model(self, body: Mapping[str, Any]) -> None:
        model = body.get("model")
        if model is not None and not isinstance(model, str):
            raise APIError(400, "'model' must be a string", param="model")
        if model is not None and model not in self.names:
            raise APIError(
                404,
                f"The model `{model}` does not exist. This server serves `{self.model_name}`.",
                param="model",
            )

    def parse(self, body: Any, *, chat: bool) -> ParsedRequest:
        if not isinstance(body, dict):
            raise APIError(400, "the request body must be a JSON object")
        self._check_model(body)
        n = _get(body, "n", (int,), 1)
        if n < 1:
            raise APIError(400, f"'n' must be at least 1, got {n}", param="n")
        if n > 1:
            raise APIError(400, "n > 1 is not supported; send one request per sample", param="n")
        if body.get("stop"):
            raise APIError(
                400, "'stop' strings are not supported; use 'stop_token_ids'", param="stop"
            )
        if body.get("echo"):
            raise APIError(400, "'echo' is not supported", param="echo")
        for key in ("presence_penalty", "frequency_penalty", "repetition_penalty"):
            v = body.get(key)
            neutral = 1.0 if key == "repetition_penalty" else 0.0
            if v is not None and v != neutral:
                # Refused rather than ignored: silently dropping it would change the answers.
                raise APIError(400, f"'{key}' is not supported (only {neutral:g})", param=key)
        max_key: str | None = "max_tokens"
        if chat:
            prompt_key = "messages"
            try:
                prompt_ids = render_chat(self.tokenizer, parse_messages(body.get("messages")))
            except ValueError as e:
                raise APIError(400, str(e), param="messages") from None
            max_tokens = _get(body, "max_completion_tokens", (int,), None)
            if max_tokens is None:
                max_tokens = _get(body, "max_tokens", (int,), None)
            elif body.get("max_completion_tokens") is not None:
                max_key = "max_completion_tokens"
        else:
            prompt_key = "prompt"
            prompt_ids = self._prompt_ids(body.get("prompt"))
            max_tokens = _get(body, "max_tokens", (int,), 16)  # OpenAI/vLLM default
        if not prompt_ids:
            raise APIError(400, "the prompt is empty: send at least one token", param=prompt_key)
        if max_tokens is None:
            # Not sent: the rest of the context, so a prompt that leaves no room is the
            # prompt's fault, not a max_tokens the client never gave.
            max_key = None
            max_tokens = max(1, self.max_seq_len - len(prompt_ids))
        if max_tokens < 1:
            raise APIError(400, f"'{max_key}' must be at least 1, got {max_tokens}", param=max_key)
        try:
            self.batcher.check(len(prompt_ids), max_tokens)
        except ConfigError as e:
            if max_key is None:
                raise APIError(
                    400,
                    f"the prompt is {len(prompt_ids)} tokens: it leaves no room to generate "
                    f"within the {self.max_seq_len}-token context ({e})",
                    param=prompt_key,
                ) from None
            raise APIError(400, str(e), param=max_key) from None
        if chat:
            lp = bool(_get(body, "logprobs", (bool,), False))
            top = _get(body, "top_logprobs", (int,), None)
            if top is not None and not 0 <= top <= MAX_TOP_LOGPROBS:
                raise APIError(
                    400,
                    f"'top_logprobs' must be in [0, {MAX_TOP_LOGPROBS}], got {top}",
                    param="top_logprobs",
                )
            if top and not lp:
                # vLLM refuses this too: top_logprobs alone would silently return none.
                raise APIError(400, "'top_logprobs' needs 'logprobs': true", param="top_logprobs")
            logprobs: int | None = (top or 0) if lp else None
        else:
            logprobs = _get(body, "logprobs", (int,), None)
        stop_ids = _get(body, "stop_token_ids", (list,), [])
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in stop_ids):
            raise APIError(
                400, "'stop_token_ids' must be a list of integers", param="stop_token_ids"
            )
        stream = bool(_get(body, "stream", (bool,), False))
        stream_options = _get(body, "stream_options", (dict,), {})
        if stream_options and not stream:
            raise APIError(400, "'stream_options' needs 'stream': true", param="stream_options")
        include_usage = stream_options.get("include_usage")
        if include_usage is None:  # null is the default, as in vLLM's and OpenAI's schema
            include_usage = False
        if not isinstance(include_usage, bool):
            raise APIError(
                400,
                "'stream_options.include_usage' must be true or false",
                param="stream_options.include_usage",
            )
        try:
            params = SamplingParams(
                max_tokens=max_tokens,
                temperature=float(_get(body, "temperature", (int, float), 1.0)),
                top_p=float(_get(body, "top_p", (int, float), 1.0)),
                seed=_get(body, "seed", (int,), None),
                ignore_eos=bool(_get(body, "ignore_eos", (bool,), False)),
                min_tokens=_get(body, "min_tokens", (int,), 0),
                stop_token_ids=frozenset(stop_ids),
                logprobs=logprobs,
            )
        except ConfigError as e:
            # SamplingParams names the field first ("top_p must be ..."): say it in `param`.
            key = str(e).split(" ", 1)[0]
            if key == "logprobs" and chat:
                key = "top_logprobs"
            raise APIError(400, str(e), param=key if key in body else None) from None
        return ParsedRequest(
            prompt_ids=prompt_ids,
            params=params,
            stream=stream,
            include_usage=include_usage,
            chat=chat,
            logprobs_format=None if logprobs is None else ("chat" if chat else "completions"),
        )

    def _prompt_ids(self, prompt: Any) -> list[int]:
        # One prompt: a string, a list of token ids, or a one-element list of either.
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
            prompt = prompt[0]
        if isinstance(prompt, str):
            return list(self.tokenizer.encode(prompt))
        if (
            isinstance(prompt, list)
            and prompt
            and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
        ):
            v = self.vocab_size
            if v is not None and not all(0 <= t < v for t in prompt):
                raise APIError(
                    400, f"prompt token ids must be in 0..{v - 1} (the vocabulary)", param="prompt"
                )
            return list(prompt)
        if isinstance(prompt, list) and len(prompt) > 1 and all(isinstance(p, str) for p in prompt):
            raise APIError(
                400,
                "batched prompts are not supported; send one request per prompt",
                param="prompt",
            )
        raise APIError(400, "'prompt' must be a string or a list of token ids", param="prompt")

    # ------------------------------------------------------------------ generation
    def submit(self, parsed: ParsedRequest) -> tuple[Request, asyncio.Queue[Event]]:
        """Hand the request to the engine thread; events come back on the returned queue."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Event] = asyncio.Queue()

        def on_event(ev: Event) -> None:  # runs on the engine thread
            loop.call_soon_threadsafe(queue.put_nowait, ev)

        req = Request(prompt_ids=tuple(parsed.prompt_ids), params=parsed.params, on_event=on_event)
        try:
            self.batcher.submit(req)
        except ConfigError as e:
            raise APIError(400, str(e)) from None
        except RuntimeError as e:
            raise APIError(503, f"the engine is shutting down: {e}") from None
        return req, queue

    async def _events(self, req: Request, queue: asyncio.Queue[Event]) -> AsyncIterator[Event]:
        """Yield a submitted request's events; cancel it if the consumer goes away early."""
        finished = False
        try:
            while True:
                ev = await queue.get()
                finished = ev.finish_reason is not None
                yield ev
                if finished:
                    return
        finally:
            if not finished:
                self.batcher.cancel(req)

    def _token_bytes(self, token_id: int) -> bytes:
        fn = getattr(self.tokenizer, "token_bytes", None)
        if callable(fn):
            return bytes(fn(token_id))
        return self.tokenizer.decode([token_id]).encode("utf-8")

    def _token_text(self, token_id: int) -> tuple[str, bytes]:
        """A token as logprobs show it, and its bytes. A token that is only part of a UTF-8
        character is written ``bytes:\\xe2\\x82`` as OpenAI writes it, not as U+FFFD, so
        different byte tokens stay different."""
        data = self._token_bytes(token_id)
        try:
            return data.decode("utf-8"), data
        except UnicodeDecodeError:
            return "bytes:" + "".join(f"\\x{b:02x}" for b in data), data

    def _logprobs_entry(self, ev: Event, fmt: str, offset: int) -> dict[str, Any] | None:
        if ev.token_id is None or ev.logprob is None:
            return None
        tok, data = self._token_text(ev.token_id)
        if fmt == "chat":
            top_list = []
            for i, lp in ev.top_logprobs or ():
                t, b = self._token_text(i)
                top_list.append({"token": t, "logprob": lp, "bytes": list(b)})
            return {
                "token": tok,
                "logprob": ev.logprob,
                "bytes": list(data),
                "top_logprobs": top_list,
            }
        top: dict[str, float] | None = None
        if ev.top_logprobs:
            top = {}
            for i, lp in ev.top_logprobs:
                key = self._token_text(i)[0]
                if key in top:  # two tokens with the same text: keep both, as vLLM names ids
                    key = f"token_id:{i}"
                top[key] = lp
        return {"token": tok, "logprob": ev.logprob, "offset": offset, "top": top}

    @staticmethod
    def _completion_logprobs(entries: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "tokens": [e["token"] for e in entries],
            "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": [e["top"] for e in entries]
            if any(e["top"] is not None for e in entries)
            else None,
            "text_offset": [e["offset"] for e in entries],
        }

    @staticmethod
    def _usage(prompt: int, completion: int) -> dict[str, int]:
        return {
            "prompt_tokens": prompt,
            "total_tokens": prompt + completion,
            "completion_tokens": completion,
        }

    async def complete(
        self, parsed: ParsedRequest, req: Request, queue: asyncio.Queue[Event]
    ) -> dict[str, Any]:
        """Run a submitted non-streaming request to the end; return the response body."""
        detok = IncrementalDetokenizer(self.tokenizer, parsed.prompt_ids)
        entries: list[dict[str, Any]] = []
        finish: str | None = None
        n_out = 0
        async for ev in self._events(req, queue):
            if ev.token_id is not None:
                offset = len(detok.text)
                detok.push(ev.token_id)
                n_out += 1
                if parsed.logprobs_format:
                    e = self._logprobs_entry(ev, parsed.logprobs_format, offset)
                    if e is not None:
                        entries.append(e)
            finish = ev.finish_reason
            if ev.finish_reason == "error":
                raise APIError(500, ev.error or "the engine failed")
            if ev.finish_reason == "abort":
                raise APIError(503, "the request was aborted (server shutting down)")
        detok.flush()
        rid = uuid.uuid4().hex
        usage = self._usage(len(parsed.prompt_ids), n_out)
        if parsed.chat:
            lp_chat = {"content": entries} if parsed.logprobs_format else None
            return {
                "id": f"chatcmpl-{rid}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": self.model_name,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": detok.text},
                        "logprobs": lp_chat,
                        "finish_reason": finish,
                        "stop_reason": None,
                    }
                ],
                "usage": usage,
            }
        return {
            "id": f"cmpl-{rid}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": self.model_name,
            "choices": [
                {
                    "index": 0,
                    "text": detok.text,
                    "logprobs": self._completion_logprobs(entries)
                    if parsed.logprobs_format
                    else None,
                    "finish_reason": finish,
                    "stop_reason": None,
                }
            ],
            "usage": usage,
        }

    async def stream(
        self, parsed: ParsedRequest, req: Request, queue: asyncio.Queue[Event]
    ) -> AsyncIterator[bytes]:
        """SSE chunks for a streaming request (see the module docstring for the framing)."""
        rid = f"{'chatcmpl' if parsed.chat else 'cmpl'}-{uuid.uuid4().hex}"
        created = int(time.time())
        obj = "chat.completion.chunk" if parsed.chat else "text_completion"
        detok = IncrementalDetokenizer(self.tokenizer, parsed.prompt_ids)
        n_out = 0

        def chunk(choice: dict[str, Any]) -> bytes:
            doc = {
                "id": rid,
                "object": obj,
                "created": created,
                "model": self.model_name,
                "choices": [choice],
            }
            return _sse(doc)

        if parsed.chat:
            yield chunk(
                {
                    "index": 0,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                }
            )
        async for ev in self._events(req, queue):
            if ev.finish_reason in ("error", "abort"):
                err = APIError(500 if ev.finish_reason == "error" else 503, ev.error or "aborted")
                yield _sse(err.body())
                break
            assert ev.token_id is not None
            n_out += 1
            offset = len(detok.text)
            text = detok.push(ev.token_id)
            if ev.finish_reason is not None:
                text += detok.flush()
            lp: dict[str, Any] | None = None
            if parsed.logprobs_format:
                e = self._logprobs_entry(ev, parsed.logprobs_format, offset)
                if e is not None:
                    lp = {"content": [e]} if parsed.chat else self._completion_logprobs([e])
            if parsed.chat:
                choice: dict[str, Any] = {
                    "index": 0,
                    "delta": {"content": text},
                    "logprobs": lp,
                    "finish_reason": ev.finish_reason,
                }
            else:
                choice = {
                    "index": 0,
                    "text": text,
                    "logprobs": lp,
                    "finish_reason": ev.finish_reason,
                    "stop_reason": None,
                }
            yield chunk(choice)
        else:
            if parsed.include_usage:
                doc = {
                    "id": rid,
                    "object": obj,
                    "created": created,
                    "model": self.model_name,
                    "choices": [],
                    "usage": self._usage(len(parsed.prompt_ids), n_out),
                }
                yield _sse(doc)
        yield b"data: [DONE]\n\n"

    def metrics_text(self) -> str:
        """Prometheus text exposition of the scheduler's state (names follow vLLM's gauges)."""
        st = self.batcher.stats
        lines = [
            "# HELP perwatt_num_requests_running Requests holding a KV-cache slot.",
            "# TYPE perwatt_num_requests_running gauge",
            f"perwatt_num_requests_running {self.batcher.num_active}",
            "# HELP perwatt_num_requests_waiting Requests queued for a free slot.",
            "# TYPE perwatt_num_requests_waiting gauge",
            f"perwatt_num_requests_waiting {self.batcher.num_pending}",
            "# HELP perwatt_num_slots KV-cache slots (max batch size).",
            "# TYPE perwatt_num_slots gauge",
            f"perwatt_num_slots {self.batcher.num_slots}",
        ]
        counters = {
            "requests_completed": (st.completed, "Requests finished by length or stop."),
            "requests_aborted": (st.aborted, "Requests cancelled (client gone, shutdown)."),
            "requests_failed": (st.failed, "Requests failed by an engine error."),
            "decode_steps": (st.decode_calls, "Decode steps run."),
            "decode_tokens": (st.decode_tokens, "Tokens produced by decode steps."),
            "prefill_calls": (st.prefill_calls, "Batched prefill calls."),
        }
        for name, (value, help_text) in counters.items():
            lines += [
                f"# HELP perwatt_{name}_total {help_text}",
                f"# TYPE perwatt_{name}_total counter",
                f"perwatt_{name}_total {value}",
            ]
        return "\n".join(lines) + "\n"

    def models(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {
                    "id": self.model_name,
                    "object": "model",
                    "created": self.created,
                    "owned_by": "perwatt",
                    "root": self.model_name,
                    "parent": None,
                    "max_model_len": self.max_seq_len,
                }
            ],
        }

    # ------------------------------------------------------------------ ASGI app
    def app(self) -> Starlette:
        require_server_deps()
        from starlette.applications import Starlette
        from starlette.requests import Request as HTTPRequest
        from starlette.responses import JSONResponse, Response, StreamingResponse
        from starlette.routing import Route
        from starlette.types import Receive, Scope, Send

        def error_response(e: APIError) -> Response:
            return JSONResponse(e.body(), status_code=e.status)

        async def wait_disconnect(receive: Receive) -> None:
            while True:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    return

        class EventStream(StreamingResponse):
            """SSE body that also watches for the client going away and cancels its request.

            Starlette's own StreamingResponse notices a disconnect only when a write fails
            (ASGI spec >= 2.4) or not at all for a request whose body is still buffered; a
            decode can run for minutes, so this one listens for ``http.disconnect`` itself.
            """

            def __init__(self, body: AsyncIterator[bytes], on_close: Callable[[], None]) -> None:
                super().__init__(
                    body,
                    media_type="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                )
                self.body_iter = body
                self.on_close = on_close

            async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
                async def pump() -> None:
                    await send(
                        {
                            "type": "http.response.start",
                            "status": self.status_code,
                            "headers": self.raw_headers,
                        }
                    )
                    async for data in self.body_iter:
                        await send({"type": "http.response.body", "body": data, "more_body": True})
                    await send({"type": "http.response.body", "body": b"", "more_body": False})

                pump_task = asyncio.ensure_future(pump())
                watch_task = asyncio.ensure_future(wait_disconnect(receive))
                try:
                    await asyncio.wait({pump_task, watch_task}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for t in (pump_task, watch_task):
                        t.cancel()
                    for t in (pump_task, watch_task):
                        # The client going away surfaces here as OSError/ClientDisconnect.
                        with contextlib.suppress(asyncio.CancelledError, Exception):
                            await t
                    aclose = getattr(self.body_iter, "aclose", None)
                    if aclose is not None:
                        with contextlib.suppress(Exception):
                            await aclose()
                    # Client gone or stream done: the slot is freed at the next step boundary
                    # (a no-op for a request that already finished).
                    self.on_close()

        async def read_json(request: HTTPRequest) -> Any:
            raw = await request.body()
            try:
                return json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise APIError(400, f"the request body is not valid JSON: {e}") from None

        async def generate(request: HTTPRequest, *, chat: bool) -> Response:
            try:
                parsed = self.parse(await read_json(request), chat=chat)
                req, queue = self.submit(parsed)  # errors here are still a proper 4xx
                if parsed.stream:
                    return EventStream(
                        self.stream(parsed, req, queue), lambda: self.batcher.cancel(req)
                    )
                result_task = asyncio.ensure_future(self.complete(parsed, req, queue))
                watch_task = asyncio.ensure_future(wait_disconnect(request.receive))
                try:
                    await asyncio.wait(
                        {result_task, watch_task}, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    watch_task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await watch_task
                if not result_task.done():  # client gone: drop the request, free its slot
                    self.batcher.cancel(req)
                    result_task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, APIError):
                        await result_task
                    return Response(status_code=499)
                return JSONResponse(result_task.result())
            except APIError as e:
                return error_response(e)

        async def completions(request: HTTPRequest) -> Response:
            return await generate(request, chat=False)

        async def chat_completions(request: HTTPRequest) -> Response:
            return await generate(request, chat=True)

        async def models(request: HTTPRequest) -> Response:
            return JSONResponse(self.models())

        async def health(request: HTTPRequest) -> Response:
            if not self.batcher.running:
                return error_response(APIError(503, "the engine thread is not running"))
            return Response(status_code=200)

        async def metrics(request: HTTPRequest) -> Response:
            return Response(
                self.metrics_text(), media_type="text/plain; version=0.0.4; charset=utf-8"
            )

        async def not_found(request: HTTPRequest, exc: Exception) -> Response:
            return error_response(APIError(404, f"no route {request.method} {request.url.path}"))

        async def bad_method(request: HTTPRequest, exc: Exception) -> Response:
            return error_response(
                APIError(405, f"method {request.method} not allowed on {request.url.path}")
            )

        return Starlette(
            routes=[
                Route("/v1/models", models, methods=["GET"]),
                Route("/v1/completions", completions, methods=["POST"]),
                Route("/v1/chat/completions", chat_completions, methods=["POST"]),
                Route("/health", health, methods=["GET"]),
                Route("/metrics", metrics, methods=["GET"]),
            ],
            exception_handlers={404: not_found, 405: bad_method},
        )


# ---------------------------------------------------------------------- serve
def bind(host: str, port: int) -> socket.socket:
    """Bind a listening TCP socket; a busy port is a one-line error naming the fix."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except socket.gaierror as e:
        # A name that does not resolve is not a busy port: the fix is the host, not the port.
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port}: the host does not resolve ({e.strerror or e}); "
            "use --host 127.0.0.1 (this machine) or 0.0.0.0 (every interface)"
        ) from None
    except OSError as e:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port} ({e.strerror or e}); pick another --port "
            "(0 = any free port) or stop the process using it"
        ) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(
    *,
    model: str,
    precision: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_batch_size: int = 8,
    max_seq_len: int = 2048,
    device: str = "auto",
    seed: int = 0,
    quantized_path: str | None = None,
    served_model_name: str | None = None,
    log_level: str = "warning",
    out: Callable[[str], None] = print,
) -> int:
    """Load the engine, start the engine thread, and serve the API until Ctrl-C.

    ``model`` may be a directory written by ``perwatt quantize``; ``precision`` None is that
    directory's precision, else bf16."""
    require_server_deps()
    import uvicorn

    from perwatt.engine.quantized_dir import resolve_quantized

    served = model
    model, precision, quantized_path, _ = resolve_quantized(model, precision, quantized_path)
    quantized = quantized_path is not None
    if max_batch_size < 1:
        raise ConfigError(f"--max-batch-size must be at least 1, got {max_batch_size}")
    if max_seq_len < 2:
        raise ConfigError(f"--max-seq-len must be at least 2, got {max_seq_len}")
    sock = bind(host, port)  # before loading: a busy port should fail in a second, not a minute
    try:
        from perwatt.engine.generate import load_engine

        try:
            engine = load_engine(
                model,
                precision=precision,
                device=device,
                max_batch_size=max_batch_size,
                max_seq_len=max_seq_len,
                seed=seed,
                quantized_path=quantized_path,
            )
        except Exception as e:
            from perwatt.engine.bench import _is_oom

            if not _is_oom(e):
                raise
            # The KV cache is max_batch_size x max_seq_len: those are the knobs that fit it.
            # Saved quantized weights are loaded at the precision they hold, so another
            # --precision is no way out for them (it is an error); re-quantizing lower is.
            if not quantized:
                lower = ", or a lower-memory --precision (int8, int4)"
            elif precision in ("int4", "nvfp4"):
                lower = ""  # already the smallest weights there are
            else:
                lower = ", or quantize to int4 (perwatt quantize --precision int4)"
            raise ConfigError(
                f"out of memory loading {served} at {precision} with {max_batch_size} slots x "
                f"{max_seq_len} tokens: use a smaller --max-batch-size or --max-seq-len{lower}"
            ) from e
        tokenizer = serving_tokenizer(engine.tokenizer)
        batcher = Batcher(
            engine,
            num_slots=max_batch_size,
            max_seq_len=max_seq_len,
            eos_token_ids=_eos_ids(engine, tokenizer),
        )
        name = served_model_name or served
        server = OpenAIServer(
            batcher,
            tokenizer,
            model_name=name,
            max_seq_len=max_seq_len,
            vocab_size=int(engine.cfg.vocab_size),
        )
        app = server.app()
        batcher.start()
        try:
            warm_s = warm_up(batcher)
            bound_host, bound_port = sock.getsockname()[:2]
            shown = f"[{bound_host}]" if ":" in str(bound_host) else bound_host
            scope = (
                "localhost only; pass --host 0.0.0.0 to accept other machines"
                if host in LOOPBACK_HOSTS
                else "reachable from other machines: the API has no authentication"
            )
            out(
                f"perwatt serve: {name} ({precision}, {max_batch_size} slots x {max_seq_len} "
                f"tokens) on http://{shown}:{bound_port}/v1 ({scope}); warm-up {warm_s:.1f} s"
            )
            if getattr(engine, "emulated", False):
                out(f"perwatt serve: {precision} is emulated on this device: {engine.note}")
            sys.stdout.flush()
            config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="off")
            uvicorn.Server(config).run(sockets=[sock])
        finally:
            batcher.stop()
    finally:
        sock.close()
    return 0


def warm_up(batcher: Batcher, steps: int = 4, timeout_s: float = 900.0) -> float:
    """Run short requests through the batcher before accepting traffic, so compilation and
    CUDA-graph capture (tens of seconds on a GPU) do not land on the first clients' TTFT.

    They go through the engine thread on purpose: torch.compile's CUDA-graph trees are kept per
    thread, so a warm-up on any other thread would be recorded again on the first request. A
    compiled engine decodes in a few batch sizes (``Engine.decode_sizes``: one graph each), so
    each size gets a wave of that many concurrent requests. Returns the seconds it took.
    """
    engine = batcher.engine
    sizes: tuple[int, ...] = (1,)
    if getattr(engine, "compiled", False):
        sizes = tuple(getattr(engine, "decode_sizes", (1,)))
    done = threading.Semaphore(0)  # one release per finished request
    failure: list[str] = []

    def on_event(ev: Event) -> None:
        if ev.finish_reason is not None:
            if ev.finish_reason in ("error", "abort"):
                failure.append(ev.error or ev.finish_reason)
            done.release()

    t0 = time.perf_counter()
    for n in sizes:
        n = min(n, batcher.num_slots)
        # Requests admitted a step apart still overlap for `steps` steps at full occupancy.
        max_tokens = max(1, min(steps + n - 1, batcher.max_seq_len - 4))
        params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
        for _ in range(n):
            batcher.submit(Request(prompt_ids=(1, 2, 3, 4), params=params, on_event=on_event))
        deadline = time.monotonic() + timeout_s
        for _ in range(n):
            if not done.acquire(timeout=max(0.0, deadline - time.monotonic())):
                raise ConfigError(
                    f"the engine did not finish a {max_tokens}-token warm-up in {timeout_s:g} s"
                )
        if failure:
            raise ConfigError(f"the engine failed its warm-up request: {failure[0]}")
    return time.perf_counter() - t0


def _eos_ids(engine: Any, tokenizer: Any) -> list[int]:
    """The ids that end a request: every EOS of the checkpoint (config.json and
    generation_config.json, see :func:`perwatt.engine.config.config_from_hf`) and the
    tokenizer's own EOS, as vLLM stops on both."""
    ids: list[int] = []
    cfg = getattr(engine, "cfg", None)
    ids.extend(getattr(cfg, "eos_token_ids", ()) or ())
    ids.extend(getattr(tokenizer, "eos_ids", ()) or ())
    return sorted({int(i) for i in ids})
