"""The bridge between the event loop and the engine thread: submit a parsed request to the
:class:`~perwatt.engine.batcher.Batcher`, turn its per-token events back into OpenAI response
bodies and Server-Sent Events, and report the scheduler's state (``/metrics``, ``/v1/models``).

See :mod:`perwatt.engine.server` for the threads and the SSE framing.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

from perwatt.engine.batcher import Batcher, Event, Request
from perwatt.engine.detokenize import IncrementalDetokenizer, Tokenizer
from perwatt.engine.openai_request import APIError, ParsedRequest
from perwatt.errors import ConfigError


def _sse(doc: Mapping[str, Any]) -> bytes:
    """One Server-Sent Event, compact JSON as vLLM (pydantic) writes it."""
    return b"data: " + json.dumps(doc, separators=(",", ":")).encode() + b"\n\n"


class BatcherBridge:
    """Runs parsed requests through a running :class:`Batcher` and builds their responses."""

    def __init__(
        self, batcher: Batcher, tokenizer: Tokenizer, *, model_name: str, max_seq_len: int
    ) -> None:
        self.batcher = batcher
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.max_seq_len = max_seq_len
        self.created = int(time.time())

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
